"""The seam between the agent and a machine's service manager.

The real implementation drives systemd over D-Bus (``fleetd.systemd``); the simulated one
(``fleetlab.simulated``) keeps units in memory for tests of scale. Both speak this
protocol, so the agent cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from fleetd.model.state import LocalUnit, StateCallback, SystemdState
from fleetd.model.unitfile import UnitFile

__all__ = ["LocalUnit", "StateCallback", "SystemdState", "UnitManager"]


class UnitManager(Protocol):
    async def load(self, units: Mapping[str, UnitFile]) -> None:
        """Write the unit files and make systemd see them (one reload for the batch)."""

    async def unload(self, names: Sequence[str]) -> None:
        """Stop, disable and remove the units; forget them."""

    async def start(self, names: Sequence[str]) -> None: ...

    async def stop(self, names: Sequence[str]) -> None: ...

    async def units(self) -> dict[str, LocalUnit]:
        """Every unit fleet manages on this machine, with its current state."""

    def failures(self) -> Mapping[str, str]:
        """Units whose last action was refused (by name: the error), until one succeeds.

        A refusal of one unit never fails a batch: the batch methods raise only when the
        service manager itself is unreachable."""

    def subscribe(self, callback: StateCallback) -> None:
        """Call ``callback(name, state)`` whenever a managed unit's state changes."""
