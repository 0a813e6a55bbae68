"""Where global units run: every machine whose metadata matches and where nothing conflicts.

The engine does not place global units; each agent decides for itself whether to run one.
Both the engine (to avoid placing a conflicting unit next to a global one, and to tell
users why a global unit runs nowhere) and every agent call the same functions, so they
agree. The rules, applied to global units in name order:

- the machine's metadata must match (and its ID the deprecated X-ConditionMachineBootID,
  read as a machine ID as fleet did, when a global unit has one);
- a unit the engine scheduled there wins over a global unit that conflicts with it (the
  scheduled unit was there first; globals are then simply not run on that machine);
- of two global units that conflict, the one with the smaller name runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleetd.scheduler.filters import (
    Context,
    FilterKind,
    FilterStep,
    Rejection,
    conflicts_filter,
    first_rejection,
    machine_id_filter,
    metadata_filter,
)
from fleetd.scheduler.occupancy import Occupancy
from fleetd.scheduler.reasons import summarise
from fleetd.scheduler.snapshot import JobInfo, Snapshot

GLOBAL_FILTERS: tuple[FilterStep, ...] = (
    (FilterKind.MACHINE_ID, machine_id_filter),  # only the deprecated X-ConditionMachineBootID
    (FilterKind.METADATA, metadata_filter),
    (FilterKind.CONFLICTS, conflicts_filter),
)


def run_globals(ctx: Context, names: Iterable[str]) -> tuple[dict[str, tuple[str, ...]], dict[str, list[Rejection]]]:
    """Decide, in name order, where each global unit runs, recording it in the occupancy.

    Returns the machines of each unit and, for those that run nowhere, every machine's
    rejection (so a caller can explain).
    """
    placed: dict[str, tuple[str, ...]] = {}
    refused: dict[str, list[Rejection]] = {}
    machine_ids = sorted(ctx.machines)
    occupancy = ctx.occupancy
    for name in sorted(names):
        req = ctx.requirements(name)
        simple = (
            not req.metadata and req.machine_boot_id is None and not occupancy.conflicts.involves(name, req.conflicts)
        )
        runs: list[str] = []
        rejections: list[Rejection] = []
        for machine in machine_ids:
            rejection = None if simple else first_rejection(ctx, name, machine, GLOBAL_FILTERS)
            if rejection is None:
                runs.append(machine)
            else:
                rejections.append(rejection)
        for machine in runs:
            occupancy.add_global(name, machine)
        placed[name] = tuple(runs)
        if not runs:
            refused[name] = rejections
    return placed, refused


def decide_globals(ctx: Context, names: Iterable[str]) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """:func:`run_globals`, with the reason for each global unit that runs nowhere."""
    placed, refused = run_globals(ctx, names)
    return placed, {name: summarise(ctx, name, rejections) for name, rejections in refused.items()}


def scheduled_context(snapshot: Snapshot, jobs: Mapping[str, JobInfo]) -> Context:
    """A context whose occupancy holds the snapshot's engine schedule, as agents see it.

    Placements of units that are gone, inactive or global, or on machines that left, are
    ignored: the engine is about to remove them anyway.
    """
    active = {name: j for name, j in jobs.items() if j.active}
    occupancy = Occupancy(sorted(snapshot.machines), {n: j.requirements for n, j in active.items()})
    for unit, machine in sorted(snapshot.placements.items()):
        scheduled = active.get(unit)
        if scheduled and not scheduled.requirements.global_ and machine in occupancy.units:
            occupancy.add(unit, machine)
    return Context(snapshot.machines, jobs, occupancy)


def _active_globals(jobs: Mapping[str, JobInfo]) -> list[str]:
    return [name for name, j in jobs.items() if j.active and j.requirements.global_]


def _decide(job: JobInfo, snapshot: Snapshot) -> tuple[Context, dict[str, tuple[str, ...]], dict[str, list[Rejection]]]:
    """Run the global units up to ``job`` (only those sorting before it can take a machine
    from it) against the snapshot's schedule."""
    jobs = {**snapshot.jobs, job.name: job}
    ctx = scheduled_context(snapshot, jobs)
    placed, refused = run_globals(ctx, [n for n in _active_globals(jobs) if n <= job.name])
    return ctx, placed, refused


def global_placements(snapshot: Snapshot) -> dict[str, tuple[str, ...]]:
    """Every active global unit of ``snapshot`` and the machines it runs on."""
    ctx = scheduled_context(snapshot, snapshot.jobs)
    placed, _ = run_globals(ctx, _active_globals(snapshot.jobs))
    return placed


def global_machines(job: JobInfo, snapshot: Snapshot) -> list[str]:
    """The machines (sorted ids) where the global unit ``job`` should run.

    Empty for an inactive unit, and for a unit that is not global (the engine places those).
    Whether it runs on a machine depends only on that machine (its metadata, the units
    scheduled there, the global units), so an agent that knows just its own schedule can
    pass a snapshot holding only its own machine and get the same answer as the engine.
    """
    if not job.active or not job.requirements.global_:
        return []
    _, placed, _ = _decide(job, snapshot)
    return list(placed[job.name])


def global_unplaceable_reason(job: JobInfo, snapshot: Snapshot) -> str | None:
    """Why the active global unit ``job`` runs on no machine; ``None`` when it runs somewhere
    (or is inactive, or not global: nothing to explain then)."""
    if not job.active or not job.requirements.global_:
        return None
    ctx, _, refused = _decide(job, snapshot)
    if job.name not in refused:
        return None
    return summarise(ctx, job.name, refused[job.name])
