"""Benchmark: how long until ``fleetctl start --no-block bench@{1..N}.service`` runs everywhere?

A real cluster (fleetlab.fleetcluster: etcd plus H namespaced systemd hosts, each running
the real fleetd from its units; needs root). A template ``bench@.service`` (``/bin/sleep
infinity``) is written to a temporary directory, and ONE command starts N instances, the
way a user would type it::

    fleetctl --endpoint http://<host ip>:54728 start --no-block bench@1.service ... bench@N.service

run as a subprocess (our fleetctl, API driver) in that directory, so fleetctl finds the
template next to the instance names. Two figures per run, both from the moment the
command is started:

- ``start_cmd_s``: until the command exits (it submits every unit in one batch request);
- ``all_active_s``: until every one of the N units is ``active`` in the hosts' own systemd,
  asked from outside each host over its system bus with ``ListUnitsByPatterns`` (one call
  per host and poll, every 20 ms; it only lists units in memory, so it loads nothing and
  does not disturb systemd). fleet's own state is not consulted.

Between runs every unit is destroyed (``fleetctl destroy``) and the script waits until no
host has any of them loaded. The cluster is removed at the end, also on failure.

    python bench/start_many.py --hosts 5 --units 1000 --runs 3

Ends with ``all_active_s_median=<float>``; targets: 1,000 units on 5 hosts in 2.5 s,
100 units in 0.6 s.

Where the time goes (measured): the start is CPU-bound on this 2-core machine, and most
of the CPU is not fleet's. Each run prints ``cluster_cpu_s`` (every process of the hosts
and etcd) and ``machine_busy_cpu_s`` (the whole machine, including fleetctl, this script
and other people's work). For 1,000 units: the hosts' systemd (pid 1) ~3 s, the started
processes ~1.5 s (fork, exec, cgroup set-up: systemd's work in the unit's cgroup), D-Bus
~0.8 s, journald ~0.2 s, all five fleetd together ~1.2-1.6 s, etcd ~0.3 s, fleetctl ~0.5 s:
~8 s of CPU, i.e. ~4 s on 2 cores with nothing else running. One host alone starts 200 such
units in 0.6 s with 0.95 s of CPU (systemd 0.42, processes 0.3, D-Bus 0.12, fleetd 0.1).
Before each run the script waits (``--wait-idle``) until the machine is idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from _cluster import cgroup_cpu_seconds, cpu_seconds, log, require_hosts
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from fleetlab.fleetcluster import FleetCluster, FleetHost

TEMPLATE = "[Unit]\nDescription=bench %i\n\n[Service]\nExecStart=/bin/sleep infinity\n"
SYSTEMD = "org.freedesktop.systemd1"
ROOT = Path(__file__).resolve().parents[1]


class HostUnits:
    """One host's systemd, asked over its system bus from outside the host."""

    def __init__(self, host: FleetHost, bus: MessageBus) -> None:
        self.host = host
        self.bus = bus

    @classmethod
    async def connect(cls, host: FleetHost) -> HostUnits:
        return cls(host, await MessageBus(bus_address=host.host.dbus_address).connect())

    async def states(self, pattern: str) -> dict[str, str]:
        """unit -> ActiveState of the units in memory matching ``pattern``."""
        reply = await self.bus.call(
            Message(
                destination=SYSTEMD,
                path="/org/freedesktop/systemd1",
                interface=f"{SYSTEMD}.Manager",
                member="ListUnitsByPatterns",
                signature="asas",
                body=[[], [pattern]],
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"ListUnitsByPatterns on {self.host.name}: {reply and reply.body}")
        return {row[0]: row[3] for row in reply.body[0]}

    def close(self) -> None:
        self.bus.disconnect()


def cluster_cpu(cluster: FleetCluster) -> float:
    """CPU seconds used so far by the hosts (systemd, D-Bus, journald, fleetd, the units)
    and etcd: the start is CPU-bound here, so this says where a run's time went."""
    total = sum(cgroup_cpu_seconds(Path(h.host.cgroup)) or 0.0 for h in cluster.hosts)
    assert cluster.etcd is not None
    return total + sum(cpu_seconds(m.process.pid) for m in cluster.etcd.members if m.process is not None)


def machine_busy() -> float:
    """CPU seconds this machine spent busy (all processes, ours and others'), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def fleetctl(endpoint: str, args: list[str], cwd: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "fleetctl.main", "--endpoint", endpoint, *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def wait_for(
    systemds: list[HostUnits], names: set[str], active: bool, started: float, timeout: float, interval: float
) -> float:
    """Seconds since ``started`` until every name is active (``active``) or none is loaded."""
    while True:
        answers = await asyncio.gather(*(s.states("bench@*.service") for s in systemds))
        now = time.perf_counter()
        if active:
            running = sum(1 for a in answers for n, st in a.items() if n in names and st == "active")
            done = running >= len(names)
            progress = f"{running} of {len(names)} active"
        else:
            left = sum(1 for a in answers for n, st in a.items() if n in names and st not in ("inactive", "failed"))
            done = left == 0
            progress = f"{left} still active"
        if done:
            return now - started
        if now - started > timeout:
            raise TimeoutError(f"after {timeout:g} s: {progress}")
        await asyncio.sleep(interval)


async def wait_idle(limit: float, window: float = 0.5, busy_cores: float = 0.15) -> float:
    """Wait (at most ``limit`` s) until the machine is idle: less than ``busy_cores`` of CPU
    busy over ``window`` while the cluster stands by. Returns the seconds waited. The
    machine is shared, and a start of a thousand units is CPU-bound (see the docstring)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        before = machine_busy()
        await asyncio.sleep(window)
        if (machine_busy() - before) / window < busy_cores:
            break
    return time.perf_counter() - started


async def one_run(
    cluster: FleetCluster, systemds: list[HostUnits], units: int, workdir: str, timeout: float, interval: float
) -> tuple[float, float, float, float]:
    """One burst: (start_cmd_s, all_active_s, cluster CPU s, machine busy CPU s) until all active."""
    names = [f"bench@{i}.service" for i in range(1, units + 1)]
    endpoint = cluster.hosts[0].endpoint
    cpu_before, busy_before = cluster_cpu(cluster), machine_busy()
    started = time.perf_counter()
    proc = fleetctl(endpoint, ["start", "--no-block", *names], workdir)
    cmd_s: list[float] = []

    async def command() -> None:
        out, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
        cmd_s.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise RuntimeError(f"fleetctl start exited {proc.returncode}: {err.strip()[-2000:]}")

    waiter = asyncio.create_task(command())
    cpu = time.process_time()
    try:
        active_s = await wait_for(systemds, set(names), True, started, timeout, interval)
        cluster_s, busy_s = cluster_cpu(cluster) - cpu_before, machine_busy() - busy_before
        log(f"polling systemd cost this process {time.process_time() - cpu:.2f} s of CPU")
        await waiter
    finally:
        if not waiter.done():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(BaseException):
            await waiter
    # clean up for the next run: destroy all, wait until no host runs any of them
    cleanup = time.perf_counter()
    destroy = fleetctl(endpoint, ["destroy", *names], workdir)
    _, err = await asyncio.to_thread(destroy.communicate, timeout=timeout)
    if destroy.returncode != 0:
        raise RuntimeError(f"fleetctl destroy exited {destroy.returncode}: {err.strip()[-2000:]}")
    await wait_for(systemds, set(names), False, cleanup, timeout, 0.1)
    return cmd_s[0], active_s, cluster_s, busy_s


async def measure(
    cluster: FleetCluster, units: int, runs: int, timeout: float, interval: float, idle: float
) -> list[tuple[float, float, float, float]]:
    systemds = [await HostUnits.connect(h) for h in cluster.hosts]
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="start_many.") as workdir:
            Path(workdir, "bench@.service").write_text(TEMPLATE)
            for index in range(runs):
                waited = await wait_idle(idle)
                log(f"waited {waited:.1f} s for the machine to be idle")
                result = await one_run(cluster, systemds, units, workdir, timeout, interval)
                log(f"run {index + 1}/{runs}: start_cmd_s={result[0]:.3f} all_active_s={result[1]:.3f}")
                results.append(result)
                await asyncio.sleep(1.0)  # let the destroy's states settle before the next burst
    finally:
        for systemd in systemds:
            systemd.close()
    return results


def spread(values: list[float]) -> str:
    return f"median={statistics.median(values):.3f} min-max={min(values):.3f}-{max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.02, help="systemd polling interval (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-run deadline (s)")
    parser.add_argument(
        "--wait-idle", type=float, default=60, help="wait at most this long for an idle machine before each run"
    )
    parser.add_argument("--agent-ttl", default="10s", help="fleetd agent_ttl (fleetd's default is 10s)")
    args = parser.parse_args()
    require_hosts()
    load_before = os.getloadavg()
    cluster = FleetCluster(size=args.hosts, lab_prefix="bstart", agent_ttl=args.agent_ttl)
    try:
        log(f"starting etcd and {args.hosts} systemd hosts running fleetd")
        cluster.start()
        results = asyncio.run(measure(cluster, args.units, args.runs, args.timeout, args.interval, args.wait_idle))
    finally:
        for fleet_host in cluster.hosts:
            with contextlib.suppress(Exception):
                if fleet_host.host.is_alive():
                    fleet_host.host.systemctl("stop", "fleetd.service", check=False, timeout=30)
        log("removing the cluster")
        cluster.close()
    print(f"hosts={args.hosts} units={args.units} runs={len(results)}")
    print("loadavg_before=" + ",".join(f"{x:.2f}" for x in load_before))
    print("loadavg_after=" + ",".join(f"{x:.2f}" for x in os.getloadavg()))
    for index, (cmd_s, active_s, cluster_s, busy_s) in enumerate(results, 1):
        print(
            f"run={index} start_cmd_s={cmd_s:.3f} all_active_s={active_s:.3f} "
            f"cluster_cpu_s={cluster_s:.2f} machine_busy_cpu_s={busy_s:.2f} "
            f"(of {os.cpu_count()} x {active_s:.2f} s; the rest of the busy time: fleetctl, this script, others)"
        )
    print("start_cmd_s " + spread([r[0] for r in results]))
    print("all_active_s " + spread([r[1] for r in results]))
    print("cluster_cpu_s " + spread([r[2] for r in results]))
    print(f"all_active_s_median={statistics.median(r[1] for r in results):.3f}")


if __name__ == "__main__":
    main()
