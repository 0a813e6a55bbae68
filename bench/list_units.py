"""Benchmark: how long do ``fleetctl list-units`` and ``list-unit-files`` take on a loaded
cluster?

A real cluster (fleetlab.fleetcluster: etcd plus N namespaced systemd hosts, each
running fleetd from its units; needs root). U units with desired state ``launched`` are
submitted at once (Registry.create_units on the cluster's etcd), and the benchmark waits
until every one is active on its host. Then ``fleetctl --endpoint http://<host ip>:54728
list-units`` and ``list-unit-files`` run 10 times each as subprocesses, alternating (so a
burst of load on the machine hits both alike), and the wall time of each run is measured.
The last lines are ``list_units_s_median=<float>`` and ``list_unit_files_s_median=<float>``
(seconds), each after its runs, min and max.

    python bench/list_units.py --hosts 5 --units 1000

Units are ``Type=oneshot`` + ``RemainAfterExit=yes`` (active without a process each);
``--sleep`` makes them long-running ``sleep`` processes instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fleetd.model.state import StoredUnit
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetlab.fleetcluster import PREFIX, FleetCluster

ONESHOT = "[Unit]\nDescription=bench %n\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
SLEEP = "[Unit]\nDescription=bench %n\n\n[Service]\nExecStart=/bin/sleep infinity\n"


async def submit_and_wait(endpoints: list[str], units: int, body: str, timeout: float) -> float:
    registry = connect(EtcdConfig(endpoints=tuple(endpoints), request_timeout=30), PREFIX)
    try:
        file = parse_unit_file(body)
        started = time.monotonic()
        await registry.create_units(
            (StoredUnit(f"bench-{i:05d}.service", file, DesiredState.LAUNCHED), False) for i in range(units)
        )
        deadline = started + timeout
        active = 0
        while True:
            states = await registry.unit_states()
            active = sum(1 for s in states if s.name.startswith("bench-") and s.active_state == "active")
            if active >= units:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {active} of {units} units active after {timeout:.0f} s")
            await asyncio.sleep(0.5)
    finally:
        await registry.close()


COMMANDS = ("list-units", "list-unit-files")


def time_listings(endpoint: str, runs: int, expected_rows: int) -> dict[str, list[float]]:
    """Wall time of each run of each command, the commands alternating run by run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    env["PYTHONPATH"] = os.path.join(os.path.dirname(__file__), "..") + os.pathsep + env.get("PYTHONPATH", "")
    timings: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name in COMMANDS:
            command = [sys.executable, "-m", "fleetctl.main", "--endpoint", endpoint, name]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"fleetctl {name} failed ({done.returncode}): {done.stderr.strip()}")
            rows = len(done.stdout.splitlines()) - 1
            if rows != expected_rows:
                raise RuntimeError(f"fleetctl {name} printed {rows} rows, expected {expected_rows}")
            timings[name].append(elapsed)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sleep", action="store_true", help="long-running sleep units instead of oneshot ones")
    parser.add_argument(
        "--token-limit",
        type=int,
        default=0,
        help="fleetd's API page size (token_limit; fleet's default 100 when 0)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every unit to be active")
    args = parser.parse_args()

    extra = {"token_limit": str(args.token_limit)} if args.token_limit else {}
    cluster = FleetCluster(size=args.hosts, lab_prefix="benchls", agent_ttl="10s", extra_config=extra)
    with cluster:
        print(f"cluster: {args.hosts} hosts up, etcd at {cluster.etcd_endpoints()[0]}", flush=True)
        took = asyncio.run(
            submit_and_wait(cluster.etcd_endpoints(), args.units, SLEEP if args.sleep else ONESHOT, args.timeout)
        )
        print(f"start_all_s={took:.2f} ({args.units / took:.0f} units/s)", flush=True)
        endpoint = cluster.hosts[0].endpoint
        for name, timings in time_listings(endpoint, args.runs, args.units).items():
            key = name.replace("-", "_")
            print(f"{key}_runs_s=" + ",".join(f"{t:.3f}" for t in timings))
            print(f"{key}_s_min={min(timings):.3f} {key}_s_max={max(timings):.3f}")
            print(f"{key}_s_median={statistics.median(timings):.3f}", flush=True)


if __name__ == "__main__":
    main()
