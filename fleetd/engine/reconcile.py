"""The engine's in-memory view of the cluster and the pure step from view to etcd writes.

``ClusterView`` is fed one record at a time (from the initial read and from watch events)
and keeps what the scheduler needs: parsed units, live machines and current placements.
``schedule_changes`` runs the pure scheduler over it and turns the plan into the minimal
set of writes: placements to put or delete and unplaceable reasons to set or clear.
Comparing raw stored values keeps a steady state free of writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.state import MachineState, StoredUnit
from fleetd.model.unit import DesiredState, build_unit
from fleetd.registry.keys import Keys
from fleetd.registry.registry import decode_machine, decode_stored_unit, encode_unit
from fleetd.scheduler import JobInfo, MachineInfo, Place, Snapshot, Task, Unplace, plan

log = logging.getLogger(__name__)


@dataclass
class ClusterView:
    units: dict[str, StoredUnit] = field(default_factory=dict)
    unit_raw: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, JobInfo] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    machines: dict[str, MachineState] = field(default_factory=dict)
    # (machine, unit) -> the raw placement value stored in etcd
    stored: dict[tuple[str, str], bytes] = field(default_factory=dict)
    force_resync: bool = False

    # -- feeding ---------------------------------------------------------------------------

    def apply_unit(self, keys: Keys, key: str, value: bytes | None) -> None:
        name = keys.tail(key, keys.units)
        if value is None:
            for table in (self.units, self.unit_raw, self.jobs, self.invalid):
                table.pop(name, None)  # type: ignore[attr-defined]
            return
        if self.unit_raw.get(name) == value:
            return
        try:
            stored = decode_stored_unit(value)
            unit, _ = build_unit(name, stored.file)
        except (UnitFileError, UnitNameError, ValueError, KeyError) as exc:
            self.invalid[name] = f"invalid unit: {exc}"
            self.jobs.pop(name, None)
            self.units.pop(name, None)
            self.unit_raw[name] = value
            return
        self.invalid.pop(name, None)
        self.units[name] = stored
        self.unit_raw[name] = value
        if unit.is_template:
            self.jobs.pop(name, None)
        else:
            self.jobs[name] = JobInfo(name, unit.requirements, stored.desired)

    def apply_machine(self, keys: Keys, key: str, value: bytes | None) -> None:
        machine_id = keys.tail(key, keys.machines)
        if value is None:
            self.machines.pop(machine_id, None)
        else:
            self.machines[machine_id] = decode_machine(value)

    def apply_placement(self, keys: Keys, key: str, value: bytes | None) -> None:
        machine_id, name = keys.split_placement(key)
        if value is None:
            self.stored.pop((machine_id, name), None)
        else:
            self.stored[(machine_id, name)] = value

    def record_own_writes(self, changes: "ScheduleChanges") -> None:
        for machine_id, name in changes.deletes:
            self.stored.pop((machine_id, name), None)
        for machine_id, unit in changes.puts:
            self.stored[(machine_id, unit.name)] = self.unit_raw.get(unit.name) or encode_unit(unit)

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
        return f"place {task.unit} on {task.machine[:8]}: {task.reason}"
    if isinstance(task, Unplace):
        return f"unplace {task.unit} from {task.machine[:8]}: {task.reason}"
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
    for (machine_id, name) in view.stored:
        if final.get(name) != machine_id:
            changes.deletes.append((machine_id, name))
    for name, machine_id in final.items():
        job = view.jobs.get(name)
        if job is None or job.desired is DesiredState.INACTIVE:
            continue
        if view.stored.get((machine_id, name)) != view.unit_raw[name]:
            changes.puts.append((machine_id, view.units[name]))
    wanted = dict(result.unplaceable)
    wanted.update(view.invalid)
    for name, reason in wanted.items():
        if current_reasons.get(name) != reason:
            changes.reasons[name] = reason
    for name in current_reasons:
        if name not in wanted:
            changes.reasons[name] = None
    return changes
