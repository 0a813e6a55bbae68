"""The scheduler's output: what the engine should change, each change with its reason.

Decisions are data so the engine can log them, commit them in one transaction, and so
tests can compare a plan with an expected table. Reasons are written for users: they end
up in logs and in ``fleetctl`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Place:
    """Schedule ``unit`` on ``machine``."""

    unit: str
    machine: str
    reason: str


@dataclass(frozen=True)
class Unplace:
    """Take ``unit`` off ``machine`` (where it is scheduled now)."""

    unit: str
    machine: str
    reason: str


Task = Place | Unplace


@dataclass
class Plan:
    """The engine's whole decision for one snapshot.

    ``tasks`` lists every :class:`Unplace` before every :class:`Place`, so applying them
    in order never has two units that must not share a machine on it at once.
    ``unplaceable`` explains every unit that should run but has no machine (global units
    that run nowhere included). ``placements`` is the schedule once the tasks are applied
    and ``global_machines`` where each active global unit runs: both are what the plan
    was computed against, handy for checking and for showing users.
    """

    tasks: list[Task] = field(default_factory=list)
    unplaceable: dict[str, str] = field(default_factory=dict)
    placements: dict[str, str] = field(default_factory=dict)
    global_machines: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def places(self) -> list[Place]:
        return [task for task in self.tasks if isinstance(task, Place)]

    @property
    def unplaces(self) -> list[Unplace]:
        return [task for task in self.tasks if isinstance(task, Unplace)]
