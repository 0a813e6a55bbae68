"""The engine's decision: from a snapshot of the cluster to a plan of placements.

``plan(snapshot)`` runs in three steps, all deterministic (same snapshot, same plan):

1. **Keep what is still valid.** Existing placements are re-admitted one by one, in
   placement order (MachineOf targets first, then by name). A placement whose machine
   left, whose unit is gone, inactive or global, or which now breaks a rule on its
   machine is taken off with a reason. Admission in order means that of two units that
   conflict on one machine the one earlier in that order stays. A valid placement is
   never moved: no rebalancing, no needless churn.
2. **Global units** are given their machines (see global_units.py), so units placed next
   are never put beside a global unit they conflict with.
3. **Place everything else**, in placement order, through the pipeline: candidate
   machines (narrowed by MachineID, MachineOf, metadata), feasibility filters
   (conflicts, replaces), then scorers: a machine running a unit this one replaces first,
   then the least loaded, then the smallest id. A unit with no machine gets a reason
   summarising every machine's rejection.

Replaces moves a unit that is already placed: the replaced unit (and its MachineOf
followers) go back in the queue, units that found no machine get one more try, and global
units are decided again against the final schedule. A unit is moved by Replaces at most
once per plan, so a ring of units replacing each other cannot loop; such a chain settles
over the next plan or two instead. Of two units that replace each other only one is ever
scheduled: the one already placed, else the first by name (replace_cycles.py); the other is
unplaceable with the cycle as its reason.

"Placed first" cannot be known from a snapshot, so between two conflicting placed units
the one earlier in placement order (a MachineOf target, else the smaller name) stays.

Cost: building the indexes is linear in the snapshot; each placement is a heap pop plus
a few dictionary lookups, so thousands of units on hundreds of machines take well under a
second (bench/scheduler_plan.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

from fleetd.model.requirements import Metadata, Requirements
from fleetd.model.state import short_id
from fleetd.scheduler.filters import (
    DYNAMIC_FILTERS,
    FILTERS,
    Context,
    FilterKind,
    FilterStep,
    conflicts_filter,
    first_rejection,
    metadata_filter,
    replaces_filter,
    required_target,
)
from fleetd.scheduler.global_units import decide_globals, scheduled_context
from fleetd.scheduler.occupancy import Occupancy
from fleetd.scheduler.ordering import machine_of_order
from fleetd.scheduler.ranking import Ranking
from fleetd.scheduler.reasons import plural, summarise
from fleetd.scheduler.replace_cycles import replace_cycles
from fleetd.scheduler.snapshot import Snapshot
from fleetd.scheduler.tasks import Place, Plan, Task, Unplace

# Checked on a machine that MachineID or MachineOf already singled out.
PINNED_FILTERS: tuple[FilterStep, ...] = (
    (FilterKind.METADATA, metadata_filter),
    (FilterKind.CONFLICTS, conflicts_filter),
    (FilterKind.REPLACES, replaces_filter),
)


@dataclass(frozen=True)
class _Deferred:
    """An Unplace reason that depends on where the MachineOf target ends up."""

    target: str


class _Planner:
    """One plan's working state; see the module docstring for the steps."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        active = {name: job for name, job in snapshot.jobs.items() if job.active}
        self.engine_reqs: dict[str, Requirements] = {
            name: job.requirements for name, job in active.items() if not job.requirements.global_
        }
        self.global_names = sorted(name for name, job in active.items() if job.requirements.global_)
        self.occupancy = Occupancy(sorted(snapshot.machines), {n: j.requirements for n, j in active.items()})
        self.ctx = Context(snapshot.machines, snapshot.jobs, self.occupancy)
        order = machine_of_order(self.engine_reqs)
        self.cycles = order.cycles
        # Of two units that replace each other only one is scheduled (replace_cycles.py);
        # the other is kept out like a unit on a MachineOf cycle.
        live = {u for u, m in snapshot.placements.items() if m in snapshot.machines and u in self.engine_reqs}
        for unit, reason in replace_cycles(self.engine_reqs, live).items():
            self.cycles.setdefault(unit, reason)
        self.order = [unit for unit in order.units if unit not in self.cycles]
        self.rank = {name: index for index, name in enumerate(self.order)}
        self.followers: dict[str, list[str]] = {}
        for name, req in self.engine_reqs.items():
            for target in req.machine_of:
                self.followers.setdefault(target, []).append(name)
        # Results.
        self.original: dict[str, str] = {}  # unit -> machine, as scheduled in the snapshot
        self.unplace_reason: dict[str, str | _Deferred] = {}
        self.unplace_order: list[str] = []
        self.place_reason: dict[str, str] = {}
        self.unplaceable: dict[str, str] = {}
        self.pending: list[tuple[int, str]] = []
        self._rankings: dict[Metadata, Ranking] = {}
        self._metadata_index: dict[tuple[str, str], set[str]] | None = None

    # -- bookkeeping ---------------------------------------------------------------------

    def _taken_off(self, unit: str, machine: str, reason: str | _Deferred) -> None:
        """Record why ``unit`` left the machine the snapshot had it on (first reason wins)."""
        if self.original.get(unit) == machine and unit not in self.unplace_reason:
            self.unplace_reason[unit] = reason
            self.unplace_order.append(unit)

    def _admit(self, unit: str, machine: str) -> None:
        """Schedule ``unit`` and move away whatever it replaces on that machine."""
        self.occupancy.add(unit, machine)
        for victim in self.occupancy.replaced_by(unit, machine):
            self._displace(victim, f"replaced by {unit}")

    def _displace(self, unit: str, reason: str | _Deferred) -> None:
        """Take an admitted unit off its machine (and its MachineOf followers with it) and
        queue them to be placed again."""
        stack: list[tuple[str, str | _Deferred]] = [(unit, reason)]
        while stack:
            name, why = stack.pop()
            if name not in self.occupancy.placed:
                continue  # already moved along with its MachineOf target
            machine = self.occupancy.remove(name)
            self.ctx.moved.add(name)
            self.place_reason.pop(name, None)
            self._taken_off(name, machine, why)
            heapq.heappush(self.pending, (self.rank[name], name))
            for follower in self.followers.get(name, ()):
                if self.occupancy.placed.get(follower) == machine:
                    stack.append((follower, _Deferred(name)))

    # -- step 1 --------------------------------------------------------------------------

    def keep_valid(self) -> None:
        machines = self.snapshot.machines
        jobs = self.snapshot.jobs
        existing: dict[str, str] = {}
        for unit, machine in sorted(self.snapshot.placements.items()):
            self.original[unit] = machine
            job = jobs.get(unit)
            if job is None:
                self._taken_off(unit, machine, "unit no longer exists")
            elif not job.active:
                self._taken_off(unit, machine, "desired state is inactive")
            elif job.requirements.global_:
                self._taken_off(unit, machine, "unit is global: every matching machine runs it")
            elif machine not in machines:
                self._taken_off(unit, machine, f"machine {short_id(machine)} left the cluster")
            elif unit in self.cycles:
                self._taken_off(unit, machine, self.cycles[unit])
            else:
                existing[unit] = machine
        for unit in self.order:
            where = existing.get(unit)
            if where is None:
                continue
            rejection = first_rejection(self.ctx, unit, where)
            if rejection is None:
                self._admit(unit, where)
                continue
            reason: str | _Deferred = rejection.reason
            if rejection.kind is FilterKind.MACHINE_OF:
                missing = self._unplaced_target(unit)
                if missing is not None:
                    reason = _Deferred(missing)
            self._taken_off(unit, where, reason)

    def _unplaced_target(self, unit: str) -> str | None:
        """A MachineOf target of ``unit`` that may still be placed later in this plan."""
        for target in self.engine_reqs[unit].machine_of:
            if target not in self.occupancy.placed and target in self.rank:
                return target
        return None

    # -- step 3 --------------------------------------------------------------------------

    def place_all(self) -> None:
        placed = self.occupancy.placed
        self.pending = [(self.rank[n], n) for n in self.order if n not in placed]
        heapq.heapify(self.pending)
        while self.pending:
            moved_before = len(self.ctx.moved)
            self._drain()
            if len(self.ctx.moved) == moved_before:
                break
            # A unit moved away by Replaces may have freed a machine that a unit found no
            # room on: give those one more try. Bounded: a unit moves at most once a plan.
            for unit in self.unplaceable:
                heapq.heappush(self.pending, (self.rank[unit], unit))
        for unit, reason in self.cycles.items():
            self.unplaceable[unit] = reason

    def _drain(self) -> None:
        placed = self.occupancy.placed
        while self.pending:
            _, unit = heapq.heappop(self.pending)
            if unit in placed:
                continue
            machine, reason = self.choose(unit)
            if machine is None:
                self.unplaceable[unit] = reason
                continue
            self.unplaceable.pop(unit, None)
            self.place_reason[unit] = reason
            self._admit(unit, machine)

    def choose(self, unit: str) -> tuple[str | None, str]:
        """The machine for ``unit`` and why; or ``None`` and why no machine will do."""
        req = self.engine_reqs[unit]
        ctx = self.ctx
        if not ctx.machines:
            return None, "no machines in the cluster"
        target = required_target(req)
        if target is not None:
            value, option = target
            resolved = ctx.resolve(value)
            if resolved.machine is None:
                return None, resolved.reason if option == "MachineID" else f"{option}={value}: {resolved.reason}"
            context = f"{option}={value} selects machine {short_id(resolved.machine)}"
            # MachineID excludes MachineOf when parsed; the deprecated boot id does not.
            checks = PINNED_FILTERS if option == "MachineID" else FILTERS
            return self._pinned(unit, resolved.machine, context, f"{option}={value}", checks)
        if req.machine_of:
            return self._follow(unit, req)
        preferred = self._replacing(unit)
        if preferred is not None:
            return preferred
        occupancy = self.occupancy
        simple = not (
            occupancy.conflicts.involves(unit, req.conflicts) or occupancy.replaces.involves(unit, req.replaces)
        )
        ranking = self._ranking(req.metadata)
        if simple:
            machine = ranking.best()
        else:
            machine = ranking.best(lambda m: first_rejection(ctx, unit, m, DYNAMIC_FILTERS) is None)
        if machine is not None:
            return machine, f"least loaded eligible machine ({plural(occupancy.load[machine], 'unit')})"
        rejections = []
        for candidate in sorted(ctx.machines):
            rejection = first_rejection(ctx, unit, candidate)
            if rejection is not None:
                rejections.append(rejection)
        return None, summarise(ctx, unit, rejections)

    def _pinned(
        self, unit: str, machine: str, context: str, why: str, checks: tuple[FilterStep, ...] = PINNED_FILTERS
    ) -> tuple[str | None, str]:
        rejection = first_rejection(self.ctx, unit, machine, checks)
        if rejection is not None:
            return None, f"{context}: {rejection.reason}"
        return machine, why

    def _follow(self, unit: str, req: Requirements) -> tuple[str | None, str]:
        """MachineOf: the one machine all targets are on, if there is one."""
        machines: dict[str, str] = {}
        for target in req.machine_of:
            if target in self.cycles:
                return None, f"MachineOf target {target} is on a {self.cycles[target]}"
            problem = self.ctx.target_problem(target)
            if problem is not None:
                return None, problem
            machines.setdefault(self.occupancy.placed[target], target)
        if len(machines) > 1:
            where = ", ".join(f"{t} on {short_id(m)}" for m, t in sorted(machines.items()))
            return None, f"MachineOf targets are on different machines ({where})"
        machine, target = next(iter(machines.items()))
        context = f"MachineOf target {target} is on {short_id(machine)}"
        return self._pinned(unit, machine, context, f"MachineOf target {target} is there")

    def _replacing(self, unit: str) -> tuple[str, str] | None:
        """Replaces scorer: the least-loaded acceptable machine running a unit this one
        replaces, if any."""
        candidates = self.occupancy.machines_with_replaced(unit)
        if not candidates:
            return None
        load = self.occupancy.load
        for machine in sorted(candidates, key=lambda m: (load[m], m)):
            if first_rejection(self.ctx, unit, machine, PINNED_FILTERS) is None:
                victims = ", ".join(self.occupancy.replaced_by(unit, machine))
                return machine, f"replaces {victims} there"
        return None

    def _ranking(self, metadata: Metadata) -> Ranking:
        """The least-loaded ranking of the machines matching ``metadata`` (one per value)."""
        ranking = self._rankings.get(metadata)
        if ranking is None:
            ranking = Ranking(self._matching_machines(metadata), self.occupancy.load)
            self.occupancy.listen(ranking)
            self._rankings[metadata] = ranking
        return ranking

    def _matching_machines(self, metadata: Metadata) -> set[str]:
        """Machines passing the metadata filter, via a (key, value) index: set operations
        instead of a scan per unit (units of a template often differ only by ``%i``)."""
        machines = self.snapshot.machines
        if not metadata:
            return set(machines)
        if self._metadata_index is None:
            self._metadata_index = {}
            for machine_id, info in machines.items():
                for key, value in info.metadata.items():
                    self._metadata_index.setdefault((key, value), set()).add(machine_id)
        index = self._metadata_index
        result: set[str] | None = None
        for key, allowed in metadata:
            having: set[str] = set()
            for value in allowed:
                having |= index.get((key, value), set())
            result = having if result is None else result & having
        return result or set()

    # -- result --------------------------------------------------------------------------

    def result(self, global_machines: dict[str, tuple[str, ...]]) -> Plan:
        final = dict(self.occupancy.placed)
        tasks: list[Task] = []
        for unit in self.unplace_order:
            machine = self.original[unit]
            if final.get(unit) == machine:
                continue  # taken off and put back: no change at all
            tasks.append(Unplace(unit, machine, self._explain(self.unplace_reason[unit], final)))
        for unit, reason in self.place_reason.items():
            machine = final[unit]
            if self.original.get(unit) != machine:
                tasks.append(Place(unit, machine, reason))
        return Plan(tasks, self.unplaceable, final, global_machines)

    def _explain(self, reason: str | _Deferred, final: Mapping[str, str]) -> str:
        if isinstance(reason, str):
            return reason
        target = reason.target
        now = final.get(target)
        if now is None:
            return f"MachineOf target {target} is not scheduled"
        before = self.original.get(target)
        if before is None:
            return f"MachineOf target {target} was placed on {short_id(now)}"
        if before == now:
            return f"MachineOf target {target} is on {short_id(now)}"
        return f"MachineOf target {target} moved to {short_id(now)}"


def plan(snapshot: Snapshot) -> Plan:
    """Everything the engine should change for ``snapshot``; see the module docstring."""
    planner = _Planner(snapshot)
    planner.keep_valid()
    moved_before = len(planner.ctx.moved)
    global_machines, global_reasons = decide_globals(planner.ctx, planner.global_names)
    planner.place_all()
    if len(planner.ctx.moved) > moved_before:
        # Units moved away by Replaces may have freed machines for global units; decide
        # them again against the final schedule, exactly as agents will.
        final = Snapshot(snapshot.machines, snapshot.jobs, planner.occupancy.placed)
        global_machines, global_reasons = decide_globals(scheduled_context(final, snapshot.jobs), planner.global_names)
    planner.unplaceable.update(global_reasons)
    return planner.result(global_machines)
