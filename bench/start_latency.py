"""Benchmark: how long from ``PUT /fleet/v1/units/NAME`` (desiredState launched) until the
unit runs?

A real etcd and three namespaced systemd hosts, each running the real fleetd. Each run PUTs
a new ``sleep infinity`` service through one host's API (taking turns) and, from the moment
the request is sent, polls every host's systemd every 10 ms until one of them reports the
unit ``active``. That systemd-side check is the ground truth measured: it asks each host's
own systemd over its D-Bus system bus (``GetUnit`` + the unit's ``ActiveState``, what
``systemctl is-active`` reports, but without forking a process per poll; ``GetUnit`` does
not load a unit, so the polling does not disturb systemd). Once active, the script keeps
polling fleet's own view, ``GET /fleet/v1/state?unitName=``, until it reports the unit
active too (the agent's state published from systemd's signals), and records that time as a
second figure. The unit is then DELETEd and the script waits until no host runs it.

Ends with ``start_to_active_ms_median=<float>``; the target is under 500 ms.

    python bench/start_latency.py --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(__file__))

import aiohttp
from _cluster import delete_unit, log, require_hosts, unit_options
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from fleetd.model.state import short_id
from fleetlab.fleetcluster import FleetCluster, FleetHost
from fleetlab.wait import eventually

UNIT = "[Unit]\nDescription=bench start latency {index}\n[Service]\nExecStart=/bin/sleep infinity\n"
SYSTEMD = "org.freedesktop.systemd1"


class HostSystemd:
    """One host's systemd, asked over that host's system bus from outside the host."""

    def __init__(self, host: FleetHost, bus: MessageBus) -> None:
        self.host = host
        self.bus = bus

    @classmethod
    async def connect(cls, host: FleetHost) -> HostSystemd:
        bus = await MessageBus(bus_address=host.host.dbus_address).connect()
        return cls(host, bus)

    async def active_state(self, unit: str) -> str:
        """``ActiveState`` of a loaded unit; "" when systemd has not loaded it."""
        reply = await self.bus.call(
            Message(
                destination=SYSTEMD,
                path="/org/freedesktop/systemd1",
                interface=f"{SYSTEMD}.Manager",
                member="GetUnit",
                signature="s",
                body=[unit],
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            return ""  # org.freedesktop.systemd1.NoSuchUnit
        reply = await self.bus.call(
            Message(
                destination=SYSTEMD,
                path=reply.body[0],
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=[f"{SYSTEMD}.Unit", "ActiveState"],
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            return ""
        return str(reply.body[0].value)

    def close(self) -> None:
        self.bus.disconnect()


@dataclass
class Run:
    index: int
    via: str  # host whose API took the PUT
    ran_on: str  # host whose systemd ran the unit
    put_ms: float  # until the PUT answered
    active_ms: float  # until a host's systemd reported it active (the figure)
    reported_ms: float  # until GET /state reported it active


async def api_state(session: aiohttp.ClientSession, host: FleetHost, unit: str) -> list[dict[str, str]]:
    async with session.get(f"{host.endpoint}/fleet/v1/state", params={"unitName": unit}) as response:
        if response.status != 200:
            return []
        return (await response.json()).get("states", [])


async def one_run(
    index: int,
    name: str,
    via: FleetHost,
    systemds: list[HostSystemd],
    session: aiohttp.ClientSession,
    interval: float,
    timeout: float,
) -> Run:
    body = {"name": name, "desiredState": "launched", "options": unit_options(UNIT.format(index=index))}
    data = json.dumps(body).encode()
    put_ms: list[float] = []

    async def put() -> None:
        async with session.put(
            f"{via.endpoint}/fleet/v1/units/{name}", data=data, headers={"Content-Type": "application/json"}
        ) as response:
            text = await response.text()
            put_ms.append((time.perf_counter() - t0) * 1000)
            if response.status not in (201, 204):
                raise RuntimeError(f"PUT {name}: HTTP {response.status}: {text}")

    t0 = time.perf_counter()
    put_task = asyncio.create_task(put())
    deadline = t0 + timeout
    ran_on = ""
    while not ran_on:
        states = await asyncio.gather(*(s.active_state(name) for s in systemds))
        now = time.perf_counter()
        ran_on = next((s.host.name for s, state in zip(systemds, states, strict=True) if state == "active"), "")
        if ran_on:
            active_ms = (now - t0) * 1000
            break
        if put_task.done() and put_task.exception():
            raise put_task.exception()  # type: ignore[misc]
        if now > deadline:
            raise TimeoutError(f"{name} not active on any host after {timeout:g} s (states {states})")
        await asyncio.sleep(interval)
    await put_task

    machine = next(s.host.machine_id for s in systemds if s.host.name == ran_on)
    while True:
        states = await api_state(session, via, name)
        now = time.perf_counter()
        if any(s.get("machineID") == machine and s.get("systemdActiveState") == "active" for s in states):
            reported_ms = (now - t0) * 1000
            break
        if now > deadline:
            raise TimeoutError(f"{name} runs on {ran_on} but the API does not say so after {timeout:g} s")
        await asyncio.sleep(interval)
    return Run(index, via.name, ran_on, put_ms[0], active_ms, reported_ms)


async def wait_gone(name: str, systemds: list[HostSystemd], timeout: float) -> None:
    states: list[str] = []

    async def gone() -> bool:
        states[:] = await asyncio.gather(*(s.active_state(name) for s in systemds))
        return all(state in ("", "inactive", "failed") for state in states)

    await eventually(
        gone,
        timeout,
        f"{name} to be gone after DELETE",
        on_timeout=lambda: TimeoutError(f"{name} still present after DELETE: {states}"),
    )


async def measure(cluster: FleetCluster, runs: int, interval: float, timeout: float, pause: float) -> list[Run]:
    systemds = [await HostSystemd.connect(h) for h in cluster.hosts]
    results: list[Run] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for index in range(runs):
                name = f"bench-lat-{index:03}.service"
                via = cluster.hosts[index % len(cluster.hosts)]
                run = await one_run(index, name, via, systemds, session, interval, timeout)
                results.append(run)
                log(
                    f"run {index + 1:2}/{runs}: {run.active_ms:7.1f} ms to active on {run.ran_on} "
                    f"(PUT via {run.via} answered in {run.put_ms:.1f} ms; API state active at {run.reported_ms:.1f} ms)"
                )
                await asyncio.to_thread(delete_unit, via, name)
                await wait_gone(name, systemds, timeout)
                await asyncio.sleep(pause)
    finally:
        for systemd in systemds:
            systemd.close()
    return results


def summary(label: str, values: list[float]) -> str:
    return f"{label}_min={min(values):.1f} {label}_median={statistics.median(values):.1f} {label}_max={max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.01, help="polling interval (s)")
    parser.add_argument("--pause", type=float, default=0.2, help="pause between runs (s)")
    parser.add_argument("--timeout", type=float, default=20.0, help="per-run deadline (s)")
    parser.add_argument("--agent-ttl", default="10s", help="fleetd agent_ttl (fleetd's default is 10s)")
    args = parser.parse_args()
    require_hosts()

    cluster = FleetCluster(size=args.hosts, lab_prefix="blat", agent_ttl=args.agent_ttl)
    try:
        log(f"starting etcd and {args.hosts} systemd hosts running fleetd")
        cluster.start()
        log("cluster up: " + ", ".join(f"{h.name}={short_id(h.machine_id)}" for h in cluster.hosts))
        results = asyncio.run(measure(cluster, args.runs, args.interval, args.timeout, args.pause))
    finally:
        for fleet_host in cluster.hosts:  # nothing is left running, but stop fleetd cleanly first
            with contextlib.suppress(Exception):
                if fleet_host.host.is_alive():
                    fleet_host.host.systemctl("stop", "fleetd.service", check=False, timeout=30)
        log("removing the cluster")
        cluster.close()

    print(f"hosts={args.hosts} runs={len(results)} poll_interval_ms={args.interval * 1000:g}")
    print(
        "measured: from sending PUT /fleet/v1/units/NAME (desiredState launched) until a host's "
        "systemd reports ActiveState=active (D-Bus GetUnit + ActiveState on every host)"
    )
    for run in results:
        print(
            f"run={run.index + 1} via={run.via} ran_on={run.ran_on} put_ms={run.put_ms:.1f} "
            f"active_ms={run.active_ms:.1f} api_state_active_ms={run.reported_ms:.1f}"
        )
    print(summary("put_ms", [r.put_ms for r in results]))
    print(
        summary("api_state_active_ms", [r.reported_ms for r in results])
        + "  (GET /fleet/v1/state?unitName=, polled once systemd reported active)"
    )
    print(summary("start_to_active_ms", [r.active_ms for r in results]))
    print("target: start_to_active_ms_median < 500")
    print(f"start_to_active_ms_median={statistics.median(r.active_ms for r in results):.1f}")


if __name__ == "__main__":
    main()
