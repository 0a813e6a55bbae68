"""Benchmark: how long after a machine dies do its units run elsewhere?

A real etcd, a real engine and M SIMULATED agents (in-memory service managers) in this
process; N units spread over them. One machine is killed without leaving (its keepalives
stop, as when a host loses power); the clock runs from the kill until every unit it held
runs on another machine. Ends with ``failover_s=<float>``; the target is ttl + 1 s.

    python bench/failover_sim.py --machines 10 --units 1000 --ttl 10
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fleetd.settings import Settings
from fleetlab.etcd import EtcdCluster
from fleetlab.simcluster import SimCluster
from fleetlab.wait import wait_until_async

BODY = "[Service]\nExecStart=/bin/sleep infinity\n"


async def run(machines: int, units: int, ttl: float) -> float:
    settings = Settings(agent_ttl=ttl, engine_ttl=ttl, engine_reconcile_interval=2.0)
    with EtcdCluster() as cluster:
        sim = SimCluster(tuple(cluster.endpoints), "/failover/", settings)
        try:
            for _ in range(machines):
                await sim.add_machine()
            await sim.add_engine()
            for i in range(units):
                await sim.submit(f"svc-{i:05}.service", BODY)
            await wait_until_async(lambda: len(sim.placement()) == units, 300, f"{units} units running")
            # kill the machine holding the most units
            victim = max(sim.machines.values(), key=lambda m: len(m.running()))
            held = victim.running()
            before = {name: ids for name, ids in sim.placement().items() if name not in held}
            killed_at = time.monotonic()
            await sim.crash_machine(victim.id)

            def moved() -> bool:
                placement = sim.placement()
                return all(name in placement and victim.id not in placement[name] for name in held)

            await wait_until_async(moved, ttl * 3 + 30, "the dead machine's units to run elsewhere", 0.01)
            elapsed = time.monotonic() - killed_at
            after = sim.placement()
            untouched = sum(1 for name, ids in before.items() if after.get(name) == ids)
        finally:
            await sim.close()
    print(f"machines={machines} units={units} ttl_s={ttl}")
    print(f"units_on_killed_machine={len(held)}")
    print(f"other_units_unmoved={untouched}/{len(before)}")
    print(f"failover_s={elapsed:.3f}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--ttl", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.machines, args.units, args.ttl))


if __name__ == "__main__":
    main()
