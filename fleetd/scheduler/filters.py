"""Feasibility filters: one [X-Fleet] rule each, judging one unit on one machine.

Each filter returns ``None`` when the machine is acceptable, else the reason it is not,
phrased for a user ("conflicts with web@1.service"). The planner also narrows candidates
with set operations for speed (see placement.py), but whenever it needs to explain a
decision it runs these functions, and tests check the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from fleetd.model.requirements import Requirements
from fleetd.model.state import short_id
from fleetd.scheduler.occupancy import Occupancy
from fleetd.scheduler.snapshot import JobInfo, MachineInfo


@dataclass(frozen=True)
class IdResolution:
    """What a ``MachineID=`` value designates: one machine, or why none."""

    machine: str | None
    reason: str = ""


def resolve_machine_id(value: str, machine_ids: Iterable[str]) -> IdResolution:
    """A full machine id, or a prefix of exactly one (fleet accepted 8-character prefixes).

    An ambiguous prefix is refused rather than guessed: running on the wrong one of two
    machines is worse than not running and saying why.
    """
    ids = list(machine_ids)
    wanted = value.lower()
    for machine in ids:
        if machine.lower() == wanted:
            return IdResolution(machine)
    matches = sorted(m for m in ids if m.lower().startswith(wanted))
    if len(matches) == 1:
        return IdResolution(matches[0])
    if not matches:
        return IdResolution(None, f"no machine with ID {value}")
    shown = ", ".join(matches[:3]) + (f" and {len(matches) - 3} more" if len(matches) > 3 else "")
    return IdResolution(None, f"MachineID={value} is ambiguous: it matches {len(matches)} machines ({shown})")


def format_metadata(items: Iterable[tuple[str, tuple[str, ...]]]) -> str:
    """``region=eu|us, disk=ssd``: alternatives of one key joined by ``|``, keys by commas."""
    return ", ".join(f"{key}={'|'.join(values)}" for key, values in items)


def missing_metadata(req: Requirements, metadata: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """The required keys a machine fails (same rule as ``Requirements.metadata_matches``)."""
    return [(key, allowed) for key, allowed in req.metadata if metadata.get(key) not in allowed]


@dataclass
class Context:
    """What the filters look at: the machines, the units, and the schedule being built.

    ``moved`` holds units already taken off a machine by Replaces in this plan; they are
    not displaced twice, so a ring of units replacing each other cannot loop forever.
    """

    machines: Mapping[str, MachineInfo]
    jobs: Mapping[str, JobInfo]
    occupancy: Occupancy
    moved: set[str] = field(default_factory=set)
    _ids: dict[str, IdResolution] = field(default_factory=dict)

    def requirements(self, unit: str) -> Requirements:
        return self.occupancy.requirements[unit]

    def resolve(self, value: str) -> IdResolution:
        found = self._ids.get(value)
        if found is None:
            found = self._ids[value] = resolve_machine_id(value, self.machines)
        return found

    def target_problem(self, target: str) -> str | None:
        """Why a MachineOf target has no machine to follow, or ``None`` if it is placed."""
        if target in self.occupancy.placed:
            return None
        job = self.jobs.get(target)
        if job is None:
            return f"MachineOf target {target} does not exist"
        if job.requirements.global_:
            return f"MachineOf target {target} is a global unit"
        return f"MachineOf target {target} is not scheduled"


Filter = Callable[[Context, str, str], "str | None"]


class FilterKind(StrEnum):
    """Which [X-Fleet] rule refused a machine.

    Summaries group rejections by kind (every machine refused for metadata reads
    differently from a mix of reasons), so the kinds are a closed set rather than free
    text; the values are the names the filters always had, for logs and reprs.
    """

    MACHINE_ID = "machine-id"
    MACHINE_OF = "machine-of"
    METADATA = "metadata"
    CONFLICTS = "conflicts"
    REPLACES = "replaces"


FilterStep = tuple[FilterKind, Filter]


def required_target(req: Requirements) -> tuple[str, str] | None:
    """The machine a unit must run on, as ``(value, option)``; ``None`` if any will do.

    ``MachineID=`` (or ``X-ConditionMachineID=``) first; else the deprecated
    ``X-ConditionMachineBootID=``, which fleet's ``RequiredTarget`` also compared with the
    machine's *ID* (no machine record carries a boot id): "unlikely to actually work as
    the user intends, but better to prevent a job from starting than to ignore it".
    """
    if req.machine_id is not None:
        return req.machine_id, "MachineID"
    if req.machine_boot_id is not None:
        return req.machine_boot_id, "X-ConditionMachineBootID"
    return None


def machine_id_filter(ctx: Context, unit: str, machine: str) -> str | None:
    """``MachineID=``: only the machine it names (full id or unique prefix); the deprecated
    ``X-ConditionMachineBootID=`` is read as a machine ID, as fleet did."""
    target = required_target(ctx.requirements(unit))
    if target is None:
        return None
    value, option = target
    resolved = ctx.resolve(value)
    if resolved.machine is None:
        return resolved.reason if option == "MachineID" else f"{option}={value}: {resolved.reason}"
    if resolved.machine != machine:
        return f"{option}={value} selects machine {short_id(resolved.machine)}"
    return None


def machine_of_filter(ctx: Context, unit: str, machine: str) -> str | None:
    """``MachineOf=``: only the machine every target is scheduled on (this plan included)."""
    for target in ctx.requirements(unit).machine_of:
        problem = ctx.target_problem(target)
        if problem is not None:
            return problem
        where = ctx.occupancy.placed[target]
        if where != machine:
            return f"MachineOf target {target} is on {short_id(where)}"
    return None


def metadata_filter(ctx: Context, unit: str, machine: str) -> str | None:
    """``MachineMetadata=``: every key present with an allowed value."""
    req = ctx.requirements(unit)
    if not req.metadata:
        return None
    metadata = ctx.machines[machine].metadata
    if req.metadata_matches(metadata):
        return None
    return f"metadata {format_metadata(missing_metadata(req, metadata))} not present"


def conflicts_filter(ctx: Context, unit: str, machine: str) -> str | None:
    """``Conflicts=``, both ways, against engine and global units on the machine."""
    clash = ctx.occupancy.conflicting(unit, machine)
    if clash:
        return f"conflicts with {clash[0]}"
    return None


def replaces_filter(ctx: Context, unit: str, machine: str) -> str | None:
    """``Replaces=``: never where a unit replacing this one runs; and a machine is only
    worth taking over if the units this one replaces there can still be moved away."""
    occupancy = ctx.occupancy
    replacers = occupancy.replacers(unit, machine)
    if replacers:
        return f"replaced by {replacers[0]}"
    for victim in occupancy.replaced_by(unit, machine):
        if victim in ctx.moved:
            return f"would replace {victim}, which already moved in this plan"
    return None


# The pipeline, in the order reasons are reported. The first three only depend on the
# unit and the machine (the planner narrows with them up front); the last two depend on
# what else is scheduled there and are checked per candidate.
STATIC_FILTERS: tuple[FilterStep, ...] = (
    (FilterKind.MACHINE_ID, machine_id_filter),
    (FilterKind.MACHINE_OF, machine_of_filter),
    (FilterKind.METADATA, metadata_filter),
)
DYNAMIC_FILTERS: tuple[FilterStep, ...] = (
    (FilterKind.CONFLICTS, conflicts_filter),
    (FilterKind.REPLACES, replaces_filter),
)
FILTERS = STATIC_FILTERS + DYNAMIC_FILTERS


@dataclass(frozen=True)
class Rejection:
    """Why one machine was refused: the filter's name and its reason."""

    machine: str
    kind: FilterKind
    reason: str


def first_rejection(
    ctx: Context, unit: str, machine: str, filters: tuple[FilterStep, ...] = FILTERS
) -> Rejection | None:
    """Run ``filters`` in order; the first that refuses ``machine`` gives the reason."""
    for kind, check in filters:
        reason = check(ctx, unit, machine)
        if reason is not None:
            return Rejection(machine, kind, reason)
    return None
