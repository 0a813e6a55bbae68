"""What should run on this machine: its schedule plus the global units meant for it.

The agent's view of the cluster, kept current by its watches; :meth:`Wanted.desired`
turns it into the desired state the pure plan (:mod:`fleetd.agent.plan`) works from.
Whether a global unit runs here is decided by the same pure rule the engine uses.
"""

from __future__ import annotations

from dataclasses import replace

from fleetd.agent.plan import Desired
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit
from fleetd.model.unit import DesiredState, build_unit
from fleetd.registry.registry import PlacementEvent, UnitEvent
from fleetd.scheduler import JobInfo, MachineInfo, Snapshot, global_placements


class Wanted:
    def __init__(self) -> None:
        self.schedule: dict[str, ScheduledUnit] = {}
        self.globals: dict[str, StoredUnit] = {}
        self._jobs: dict[tuple[str, str], JobInfo | None] = {}

    def desired(self, machine: MachineState, names: set[str] | None = None) -> dict[str, Desired]:
        """What should be on ``machine`` (all of it, or just ``names``): its schedule plus
        the global units meant for it."""
        candidates = set(self.schedule) | set(self.globals) if names is None else names
        result: dict[str, Desired] = {}
        globals_here: set[str] | None = None
        for name in candidates:
            scheduled = self.schedule.get(name)
            if scheduled is not None:
                if scheduled.desired is not DesiredState.INACTIVE:
                    result[name] = Desired(scheduled.desired, scheduled.hash)
                continue
            unit = self.globals.get(name)
            if unit is None or unit.desired is DesiredState.INACTIVE:
                continue
            if globals_here is None:
                globals_here = self._globals_here(machine)
            if name in globals_here:
                result[name] = Desired(unit.desired, unit.hash)
        return result

    def _job(self, name: str, unit: ScheduledUnit | StoredUnit) -> JobInfo | None:
        """The unit's scheduling view, parsed once per (name, body)."""
        key = (name, unit.hash)
        if len(self._jobs) > 4 * (len(self.schedule) + len(self.globals)) + 64:
            self._jobs.clear()  # forget bodies that were replaced or removed
        if key not in self._jobs:
            try:
                parsed, _ = build_unit(name, unit.file)
            except ValueError:
                self._jobs[key] = None
            else:
                self._jobs[key] = JobInfo(name, parsed.requirements, unit.desired)
        job = self._jobs[key]
        return None if job is None else replace(job, desired=unit.desired)

    def _globals_here(self, machine: MachineState) -> set[str]:
        """Global units that run on this machine, decided by the same pure rule the engine
        uses, over a snapshot of just this machine (the answer depends on nothing else)."""
        jobs: dict[str, JobInfo] = {}
        for table in (self.globals, self.schedule):
            for name, unit in table.items():
                job = self._job(name, unit)
                if job is not None:
                    jobs[name] = job
        me = MachineInfo(machine.id, dict(machine.metadata), machine.public_ip)
        snapshot = Snapshot({machine.id: me}, jobs, dict.fromkeys(self.schedule, machine.id))
        return {name for name, machines in global_placements(snapshot).items() if machine.id in machines}

    def file_of(self, name: str) -> ScheduledUnit | StoredUnit:
        return self.schedule.get(name) or self.globals[name]


def apply_event(table: dict[str, StoredUnit], event: PlacementEvent | UnitEvent) -> None:
    """A record that cannot be read counts as absent (the registry has logged it): this
    machine cannot run what it cannot read, and the rest of its schedule goes on."""
    if event.unit is None:
        table.pop(event.name, None)
    else:
        table[event.name] = event.unit
