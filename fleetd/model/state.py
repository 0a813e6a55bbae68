"""What the cluster reports about itself: machines and the systemd state of units.

Plain records shared by the registry (which stores them), the engine and the API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile

#: How many leading characters of a machine id fleet shows where the full id is too long
#: (fleetctl's MACHINE column, reasons, log lines); 8 hex digits are unique in practice.
SHORT_ID_LENGTH = 8


def short_id(machine_id: str) -> str:
    """The short form of a machine id that fleet shows to people (its first 8 characters).

    One definition so every place that shows a machine abbreviates it the same way, and a
    user can paste what one message shows into another command (MachineID= accepts a
    unique prefix).
    """
    return machine_id[:SHORT_ID_LENGTH]


@dataclass(frozen=True)
class MachineState:
    """A live machine as its agent registered it."""

    id: str
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    version: str = ""
    # the PEM certificate its peer listener serves (relays trust exactly this one); empty
    # for a fleetd without one (peer_port=0, or an older version)
    peer_cert: str = field(default="", hash=False, repr=False)

    @property
    def short_id(self) -> str:
        return short_id(self.id)


@dataclass(frozen=True)
class UnitState:
    """systemd's view of one unit on one machine, as the owning agent last published it."""

    name: str
    machine_id: str
    hash: str
    load_state: str
    active_state: str
    sub_state: str
    # Why fleet could not act on the unit here (its file could not be written, systemd
    # refused a job): shown beside the state by the API and fleetctl; empty when fine.
    error: str = ""


@dataclass(frozen=True)
class StoredUnit:
    """A unit as the cluster stores it: its body and what the user wants of it.

    ``revision`` counts the bodies the unit has had: 1 when created, one more with each
    replace (a change of desired state keeps it); 0 for a record written before revisions
    were counted. The engine copies it into placements, so an agent knows it too."""

    name: str
    file: UnitFile
    desired: DesiredState
    revision: int = 0

    @property
    def hash(self) -> str:
        return self.file.hash()


# What an agent is told to run: the same record as a stored unit (its body and the desired
# state), copied by the engine under the machine's schedule prefix.
ScheduledUnit = StoredUnit


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
