"""Benchmark: how fast does the cluster place and start a flood of units?

A real etcd, one real engine in its own process (as on a real cluster, where the engine
runs on one of the machines), and M SIMULATED agents (in-memory service managers, see
fleetlab.simulated) in this process. N units with desired state ``launched`` are
submitted at once; the clock stops when every unit's running state has been published
to etcd by its agent. Prints figures, ending with ``units_per_s=<float>``.

    python bench/schedule.py --machines 100 --units 10000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fleetd.agent.agent import Agent
from fleetd.engine.engine import Engine
from fleetd.model.state import MachineState, StoredUnit
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.settings import Settings
from fleetlab.etcd import EtcdCluster
from fleetlab.simulated import SimulatedManager
from fleetlab.wait import eventually, wait_until_async


async def run(machines: int, units: int, clients: int, timeout: float) -> float:
    settings = Settings(agent_ttl=10.0, engine_ttl=10.0)
    with EtcdCluster() as cluster:
        config = EtcdConfig(endpoints=tuple(cluster.endpoints), request_timeout=30)
        prefix = "/bench/"
        # one connection (registry) per `clients` agents: aetcd serialises watch creation
        # per connection, and a real cluster has one connection per machine anyway
        registries = [connect(config, prefix) for _ in range(clients)]
        leader_registry = connect(config, prefix)
        submit_registry = connect(config, prefix)
        everyone = [*registries, leader_registry, submit_registry]
        agents = []
        for index in range(machines):
            registry = registries[index % clients]
            machine = MachineState(uuid.uuid4().hex, f"10.0.{index // 250}.{index % 250 + 1}", {})
            agents.append(Agent(registry, SimulatedManager(), machine, settings))
        tasks = [asyncio.create_task(agent.run()) for agent in agents]
        engine_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "engine",
            "--endpoints",
            ",".join(cluster.endpoints),
            "--prefix",
            prefix,
            stdout=asyncio.subprocess.PIPE,
        )
        await wait_until_async(lambda: all(a.ready.is_set() for a in agents), 60, "agents to register")

        async def has_leader() -> bool:
            return bool(await leader_registry.leader())

        await eventually(has_leader, 30, "the engine to lead")

        body = parse_unit_file("[Unit]\nDescription=bench\n[Service]\nExecStart=/bin/sleep infinity\n")
        batch = [(StoredUnit(f"bench-{i:06}.service", body, DesiredState.LAUNCHED), False) for i in range(units)]
        requests_before = sum(r.requests for r in everyone)
        started = time.perf_counter()
        await submit_registry.create_units(batch)
        submitted = time.perf_counter() - started

        def all_running() -> bool:
            # cheap test first: the full count only once enough states are published
            if sum(len(a.states.published) for a in agents) < units:
                return False
            return sum(1 for a in agents for s in a.states.published.values() if s.active_state == "active") >= units

        await wait_until_async(all_running, timeout, f"{units} units running", 0.02)
        elapsed = time.perf_counter() - started
        requests = sum(r.requests for r in everyone) - requests_before
        per_machine = sorted(len(a.schedule) for a in agents)

        engine_proc.terminate()
        engine_out = (await engine_proc.communicate())[0].decode().strip()
        for agent in agents:
            agent.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in everyone:
            await r.close()

    rate = units / elapsed
    print(f"machines={machines} units={units}")
    print(f"submit_s={submitted:.3f}")
    print(f"all_running_s={elapsed:.3f}")
    print(engine_out)
    print(f"units_per_machine_min={per_machine[0]} max={per_machine[-1]}")
    engine_requests = (
        int(engine_out.rsplit("engine_etcd_requests=", 1)[1]) if "engine_etcd_requests=" in engine_out else 0
    )
    requests += engine_requests
    print(f"etcd_requests={requests} etcd_requests_per_unit={requests / units:.3f}")
    print(f"units_per_s={rate:.1f}")
    return rate


async def run_engine(endpoints: str, prefix: str) -> None:
    """The engine process: lead until SIGTERM, then print its counters."""
    import signal

    settings = Settings(agent_ttl=10.0, engine_ttl=10.0)
    registry = connect(EtcdConfig(endpoints=tuple(endpoints.split(",")), request_timeout=30), prefix)
    engine = Engine(registry, "engine-bench", settings)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, engine.stop)
    await engine.run()
    stats = engine.stats
    print(
        f"engine_plans={stats.plans} engine_last_plan_s={stats.last_plan_s:.3f} "
        f"engine_etcd_requests={registry.requests}",
        flush=True,
    )
    await registry.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help="etcd connections shared by the agents (default: one per 25 agents, at least 4)",
    )
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--role", choices=("bench", "engine"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--endpoints", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.role == "engine":
        asyncio.run(run_engine(args.endpoints, args.prefix))
        return
    # aetcd creates the watches of one connection one at a time and wakes every waiting
    # creator on each step: hundreds of agents on one connection cost O(n^2) wake-ups.
    # Real agents each have their own connection; sharing one per 25 keeps the bench honest.
    clients = args.clients or max(4, args.machines // 25)
    asyncio.run(run(args.machines, args.units, clients, args.timeout))


if __name__ == "__main__":
    main()
