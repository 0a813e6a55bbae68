"""The scheduler's input: an immutable picture of the cluster at one moment.

The engine (and an agent, for global units) builds a :class:`Snapshot` from what it
watches in etcd and hands it to pure functions; nothing here knows where the data came
from, so every decision can be tested with literal tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetd.model.requirements import Requirements
from fleetd.model.unit import DesiredState


@dataclass(frozen=True)
class MachineInfo:
    """A live machine: its id, the metadata units can ask for, and its IP (for display)."""

    id: str
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    ip: str = ""


@dataclass(frozen=True)
class JobInfo:
    """A unit known to the cluster, reduced to what placement needs.

    ``desired`` is kept (rather than filtering inactive units out beforehand) so the
    scheduler itself can say "desired state is inactive" when it takes a unit off a machine.
    """

    name: str
    requirements: Requirements = field(default_factory=Requirements)
    desired: DesiredState = DesiredState.LAUNCHED

    @property
    def active(self) -> bool:
        """Whether the unit should run somewhere (loaded or launched)."""
        return self.desired is not DesiredState.INACTIVE


@dataclass(frozen=True)
class Snapshot:
    """Machines, units and the current schedule (unit name -> machine id).

    ``placements`` holds only engine placements; global units are never in it (every
    matching agent runs them, see :mod:`fleetd.scheduler.global_units`).
    """

    machines: Mapping[str, MachineInfo] = field(default_factory=dict)
    jobs: Mapping[str, JobInfo] = field(default_factory=dict)
    placements: Mapping[str, str] = field(default_factory=dict)
