"""The seam between the agent and a machine's service manager.

The real implementation drives systemd over D-Bus (``fleetd.systemd``); the simulated one
(``fleetd.agent.simulated``) keeps units in memory for tests of scale. Both speak this
protocol, so the agent cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetd.model.unitfile import UnitFile


@dataclass(frozen=True)
class SystemdState:
    """systemd's LoadState / ActiveState / SubState of one unit, verbatim."""

    load: str
    active: str
    sub: str

    @property
    def is_active(self) -> bool:
        return self.active in ("active", "activating", "reloading")


@dataclass(frozen=True)
class LocalUnit:
    """A unit that fleet put on this machine: the hash of its file and its current state."""

    name: str
    hash: str
    state: SystemdState


StateCallback = Callable[[str, SystemdState], None]


class UnitManager(Protocol):
    async def load(self, units: Mapping[str, UnitFile]) -> None:
        """Write the unit files and make systemd see them (one reload for the batch)."""

    async def unload(self, names: Sequence[str]) -> None:
        """Stop, disable and remove the units; forget them."""

    async def start(self, names: Sequence[str]) -> None: ...

    async def stop(self, names: Sequence[str]) -> None: ...

    async def units(self) -> dict[str, LocalUnit]:
        """Every unit fleet manages on this machine, with its current state."""

    def subscribe(self, callback: StateCallback) -> None:
        """Call ``callback(name, state)`` whenever a managed unit's state changes."""
