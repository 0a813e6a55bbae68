"""Micro-benchmark of the pure scheduler: one ``plan()`` from an empty schedule.

Prints ``plan_s=<seconds>`` (best of ``--repeat`` runs) for the given cluster size, plus
how many units were placed. ``--steady`` times the replan the engine does every
reconcile interval once everything is placed (it must find nothing to do). ``--mix`` adds
realistic [X-Fleet] rules (metadata, a conflicting template, MachineOf followers) to a
share of the units; the default is the plain case the engine meets most.

    python bench/scheduler_plan.py --machines 100 --units 10000
    python bench/scheduler_plan.py --machines 1000 --units 20000 --mix
"""

from __future__ import annotations

import argparse
import time

from fleetd.model.requirements import Requirements
from fleetd.model.unit import DesiredState
from fleetd.scheduler import JobInfo, MachineInfo, Snapshot, plan


def build(machines: int, units: int, mix: bool) -> Snapshot:
    regions = ("us", "eu", "ap")
    cluster = {
        f"{i:032x}": MachineInfo(f"{i:032x}", {"region": regions[i % 3], "disk": "ssd" if i % 2 else "hdd"})
        for i in range(machines)
    }
    jobs: dict[str, JobInfo] = {}
    for i in range(units):
        name = f"app-{i}.service"
        req = Requirements()
        if mix:
            kind = i % 20
            if kind == 0:  # 5 %: a template whose instances avoid each other
                name = f"web@{i}.service"
                req = Requirements(conflicts=("web@*.service",))
            elif kind in (1, 2):  # 10 %: metadata
                req = Requirements(metadata=(("region", (regions[i % 3],)), ("disk", ("ssd",))))
            elif kind == 3:  # 5 %: follows the previous unit
                req = Requirements(machine_of=(f"app-{i - 1}.service",))
        jobs[name] = JobInfo(name, req, DesiredState.LAUNCHED)
    return Snapshot(cluster, jobs, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--mix", action="store_true", help="give some units [X-Fleet] rules")
    parser.add_argument("--steady", action="store_true", help="replan a fully placed cluster")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    snapshot = build(args.machines, args.units, args.mix)
    if args.steady:
        snapshot = Snapshot(snapshot.machines, snapshot.jobs, plan(snapshot).placements)
    best = float("inf")
    result = None
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = plan(snapshot)
        best = min(best, time.perf_counter() - started)
    assert result is not None
    print(
        f"machines={args.machines} units={args.units} mix={args.mix} steady={args.steady} "
        f"tasks={len(result.tasks)} placed={len(result.placements)} "
        f"unplaceable={len(result.unplaceable)} plan_s={best:.3f}"
    )


if __name__ == "__main__":
    main()
