"""The engine's in-memory view of the cluster and the pure step from view to etcd writes.

``ClusterView`` is fed one record at a time (from the initial read and from watch events)
and keeps what the scheduler needs: parsed units, live machines and current placements.
``schedule_changes`` runs the pure scheduler over it and turns the plan into the minimal
set of writes: placements to put or delete and unplaceable reasons to set or clear.
Comparing the stored placement with the unit keeps a steady state free of writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.state import MachineState, StoredUnit, short_id
from fleetd.model.unit import DesiredState, build_unit
from fleetd.registry.registry import MachineEvent, PlacementEvent, UnitEvent
from fleetd.scheduler import JobInfo, MachineInfo, Place, Snapshot, Task, Unplace, plan

log = logging.getLogger(__name__)


@dataclass
class ClusterView:
    units: dict[str, StoredUnit] = field(default_factory=dict)
    jobs: dict[str, JobInfo] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    machines: dict[str, MachineState] = field(default_factory=dict)
    # (machine, unit) -> the unit stored as that placement; None when it cannot be read
    # (then it never matches, so the engine rewrites or removes it)
    stored: dict[tuple[str, str], StoredUnit | None] = field(default_factory=dict)
    force_resync: bool = False

    # -- feeding ---------------------------------------------------------------------------

    def apply_unit(self, event: UnitEvent) -> None:
        name = event.name
        if event.deleted:
            for table in (self.units, self.jobs, self.invalid):
                table.pop(name, None)  # type: ignore[attr-defined]
            return
        if event.unit is None:
            self._invalid(name, event.error or "unreadable record")
            return
        if self.units.get(name) == event.unit:
            return
        try:
            unit, _ = build_unit(name, event.unit.file)
        except (UnitFileError, UnitNameError, ValueError, KeyError) as exc:
            self._invalid(name, str(exc))
            return
        self.invalid.pop(name, None)
        self.units[name] = event.unit
        if unit.is_template:
            self.jobs.pop(name, None)
        else:
            self.jobs[name] = JobInfo(name, unit.requirements, event.unit.desired)

    def _invalid(self, name: str, why: str) -> None:
        self.invalid[name] = f"invalid unit: {why}"
        self.jobs.pop(name, None)
        self.units.pop(name, None)

    def apply_machine(self, event: MachineEvent) -> None:
        if event.machine is None:  # gone, or unreadable (the registry logged it): not usable
            self.machines.pop(event.machine_id, None)
        else:
            self.machines[event.machine_id] = event.machine

    def apply_placement(self, event: PlacementEvent) -> None:
        if event.deleted:
            self.stored.pop((event.machine_id, event.name), None)
        else:
            self.stored[(event.machine_id, event.name)] = event.unit

    def record_own_writes(self, changes: ScheduleChanges) -> None:
        for machine_id, name in changes.deletes:
            self.stored.pop((machine_id, name), None)
        for machine_id, unit in changes.puts:
            self.stored[(machine_id, unit.name)] = unit

    # -- reading ---------------------------------------------------------------------------

    def placements(self) -> dict[str, str]:
        """unit -> machine, one machine per unit (the lexically first if etcd has several)."""
        result: dict[str, str] = {}
        for machine_id, name in sorted(self.stored):
            result.setdefault(name, machine_id)
        return result

    def snapshot(self, placements: dict[str, str]) -> Snapshot:
        machines = {m.id: MachineInfo(m.id, dict(m.metadata), m.public_ip) for m in self.machines.values()}
        return Snapshot(machines=machines, jobs=dict(self.jobs), placements=placements)


@dataclass
class ScheduleChanges:
    puts: list[tuple[str, StoredUnit]] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)
    reasons: dict[str, str | None] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.puts or self.deletes or self.reasons)

    def log_lines(self, limit: int = 50) -> list[str]:
        lines = [_describe(task) for task in self.tasks[:limit]]
        if len(self.tasks) > limit:
            lines.append(f"... and {len(self.tasks) - limit} more scheduling decisions")
        for name, reason in list(self.reasons.items())[:limit]:
            lines.append(f"{name}: cannot be placed: {reason}" if reason else f"{name}: placeable again")
        return lines


def _describe(task: Task) -> str:
    if isinstance(task, Place):
        return f"place {task.unit} on {short_id(task.machine)}: {task.reason}"
    if isinstance(task, Unplace):
        return f"unplace {task.unit} from {short_id(task.machine)}: {task.reason}"
    return repr(task)


def schedule_changes(view: ClusterView, current_reasons: dict[str, str]) -> ScheduleChanges:
    """Plan over the view and return only the writes that change something."""
    placements = {
        name: machine
        for name, machine in view.placements().items()
        if name in view.jobs and not view.jobs[name].requirements.global_
    }
    result = plan(view.snapshot(placements))
    final = result.placements
    changes = ScheduleChanges(tasks=list(result.tasks))
    for machine_id, name in view.stored:
        if final.get(name) != machine_id:
            changes.deletes.append((machine_id, name))
    for name, machine_id in final.items():
        job = view.jobs.get(name)
        if job is None or job.desired is DesiredState.INACTIVE:
            continue
        if view.stored.get((machine_id, name)) != view.units[name]:
            changes.puts.append((machine_id, view.units[name]))
    # grouped by machine: each agent's share lands in as few transactions as possible,
    # so it sees its burst at once (one pass, one daemon-reload) rather than in slices
    changes.puts.sort(key=lambda put: put[0])
    wanted = dict(result.unplaceable)
    wanted.update(view.invalid)
    for name, reason in wanted.items():
        if current_reasons.get(name) != reason:
            changes.reasons[name] = reason
    for name in current_reasons:
        if name not in wanted:
            changes.reasons[name] = None
    return changes
