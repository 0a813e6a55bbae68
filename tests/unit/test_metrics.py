"""fleetd's metrics (fleetd/metrics.py): each series moves when its event happens.

The engine and the agent run on the in-memory registry (SimCluster), the API under
aiohttp's TestClient, the etcd connection on a fake client: no etcd, no systemd, and every
wait is for the event itself (with a deadline), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aetcd.exceptions
import pytest
from aiohttp.test_utils import TestClient, TestServer
from dbus_fast import MessageType
from prometheus_client.parser import text_string_to_metric_families

from fleetd.aio import TaskHealth
from fleetd.api import Node, make_app
from fleetd.engine.engine import Engine
from fleetd.metrics import DECISION_REASONS, Metrics, decisions, unplace_reason
from fleetd.model.state import UnitState
from fleetd.model.unit import DesiredState, build_unit
from fleetd.registry import MemoryRegistry
from fleetd.registry.etcd import Etcd, EtcdConfig
from fleetd.scheduler import JobInfo, MachineInfo, Snapshot, Unplace, plan
from fleetd.settings import Settings
from fleetd.systemd.bus import SystemdBus, SystemdCallError
from fleetlab.simcluster import SimCluster, SimEngine
from fleetlab.wait import wait_until_async

FAST = Settings(
    agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.05, engine_resync_interval=3600, debounce=0.001
)
SLEEP = "[Service]\nExecStart=/bin/sleep infinity\n"
A = "aaaaaaaa" + "0" * 24
B = "bbbbbbbb" + "0" * 24


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def exported(metrics: Metrics, name: str) -> bool:
    return any(s.name == name for family in metrics.registry.collect() for s in family.samples)


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    cluster = SimCluster.in_memory(FAST)
    try:
        yield cluster
    finally:
        await cluster.close()


async def engine_with_metrics(sim: SimCluster, name: str) -> tuple[SimEngine, Metrics]:
    """An engine whose metrics know it (as the daemon wires them)."""
    engine = await sim.add_engine(name)
    engine.engine.metrics.engine = engine.engine
    return engine, engine.engine.metrics


# -- the engine -------------------------------------------------------------------------------


async def test_the_leader_exports_leadership_passes_decisions_and_the_cluster_from_its_view(sim: SimCluster) -> None:
    first = await sim.add_machine()
    leader, metrics = await engine_with_metrics(sim, "e1")
    await wait_until_async(leader.engine.leading.is_set, 5, "e1 to lead")
    # an engine that is not the leader (here: not campaigning at all)
    standby = Engine(sim.memory, "e2", FAST)  # type: ignore[arg-type]
    standby_metrics = standby.metrics
    standby_metrics.engine = standby
    assert value(metrics, "fleet_engine_leader") == 1
    assert value(standby_metrics, "fleet_engine_leader") == 0
    passes = value(metrics, "fleet_engine_pass_duration_seconds_count")

    for i in range(3):
        await sim.submit(f"app{i}.service", SLEEP)
    await sim.submit("off.service", SLEEP, DesiredState.INACTIVE)
    await sim.submit("mars.service", SLEEP + "[X-Fleet]\nMachineMetadata=region=mars\n")
    await wait_until_async(lambda: len(sim.placement()) == 3, 5, "3 units running")
    await wait_until_async(
        lambda: value(metrics, "fleet_engine_decisions_total", decision="placed", reason="new") == 3,
        5,
        "3 placements counted",
    )
    assert value(metrics, "fleet_engine_pass_duration_seconds_count") > passes
    await wait_until_async(lambda: value(metrics, "fleet_units_unplaceable") == 1, 5, "mars.service unplaceable")
    # the cluster, from the leader's view
    assert value(metrics, "fleet_units_total") == 5
    assert value(metrics, "fleet_units_desired", state="launched") == 4
    assert value(metrics, "fleet_units_desired", state="inactive") == 1
    assert value(metrics, "fleet_units_desired", state="loaded") == 0
    assert value(metrics, "fleet_machines_total") == 1
    assert value(metrics, "fleet_units_unreadable") == 0
    assert exported(metrics, "fleet_engine_updates_in_progress")
    assert value(metrics, "fleet_engine_updates_in_progress") == 0
    # a standby exports its leader gauge only: the cluster is the leader's to report
    for name in ("fleet_units_total", "fleet_machines_total", "fleet_units_unplaceable"):
        assert not exported(standby_metrics, name)

    # a machine lost: its units move, counted by that reason
    await sim.add_machine()
    await wait_until_async(lambda: value(metrics, "fleet_machines_total") == 2, 5, "the second machine seen")
    await sim.expire_machine(first.id)
    await wait_until_async(
        lambda: value(metrics, "fleet_engine_decisions_total", decision="moved", reason="machine-lost") == 3,
        5,
        "3 moves counted as machine-lost",
    )
    assert value(metrics, "fleet_machines_total") == 1
    assert value(metrics, "fleet_engine_decisions_total", decision="placed", reason="new") == 3


def job(name: str, xfleet: str = "", desired: DesiredState = DesiredState.LAUNCHED) -> JobInfo:
    built, _ = build_unit(name, f"[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}\n")
    return JobInfo(name, built.requirements, desired)


def snapshot(machines: dict[str, dict[str, str]], units: list[JobInfo], placements: dict[str, str]) -> Snapshot:
    return Snapshot({m: MachineInfo(m, md) for m, md in machines.items()}, {j.name: j for j in units}, placements)


# The real scheduler, driven into each reason it gives for taking a unit off a machine: a
# change of its wording that the classification misses fails here, not in a dashboard.
REASON_CASES = {
    "unit-gone": (snapshot({A: {}}, [], {"x.service": A}), {("unplaced", "unit-gone")}),
    "inactive": (
        snapshot({A: {}}, [job("x.service", desired=DesiredState.INACTIVE)], {"x.service": A}),
        {("unplaced", "inactive")},
    ),
    "machine-lost": (snapshot({B: {}}, [job("x.service")], {"x.service": A}), {("moved", "machine-lost")}),
    "global": (snapshot({A: {}}, [job("x.service", "Global=true")], {"x.service": A}), {("unplaced", "global")}),
    "metadata": (
        snapshot(
            {A: {"region": "eu"}, B: {"region": "us"}},
            [job("x.service", "MachineMetadata=region=us")],
            {"x.service": A},
        ),
        {("moved", "metadata")},
    ),
    "conflict": (
        snapshot(
            {A: {}, B: {}},
            [job("x.service", "Conflicts=y.service"), job("y.service")],
            {"x.service": A, "y.service": A},
        ),
        {("moved", "conflict")},
    ),
    "replaced": (
        snapshot({A: {}}, [job("x.service"), job("y.service", "Replaces=x.service")], {"x.service": A}),
        {("placed", "new"), ("unplaced", "replaced")},
    ),
    "machine-id": (
        snapshot({A: {}, B: {}}, [job("x.service", f"MachineID={B}")], {"x.service": A}),
        {("moved", "machine-id")},
    ),
    "machine-of": (
        snapshot(
            {A: {}, B: {}},
            [job("x.service", "MachineOf=y.service"), job("y.service", f"MachineID={B}")],
            {"x.service": A, "y.service": A},
        ),
        {("moved", "machine-id"), ("moved", "machine-of")},
    ),
}


@pytest.mark.parametrize("case", sorted(REASON_CASES))
def test_each_reason_of_the_scheduler_has_its_class(case: str) -> None:
    snap, expected = REASON_CASES[case]
    result = plan(snap)
    assert set(decisions(result.tasks)) == expected, result.tasks
    assert {reason for _, reason in decisions(result.tasks)} <= set(DECISION_REASONS)


def test_a_reason_nobody_classified_is_other_never_its_text() -> None:
    assert unplace_reason("a reason written next year") == "other"
    assert decisions([Unplace("x.service", A, "a reason written next year")]) == [("unplaced", "other")]


# -- the agent ---------------------------------------------------------------------------------


async def test_the_agent_times_systemd_batches_counts_failures_and_exports_units_by_state(sim: SimCluster) -> None:
    machine = await sim.add_machine()
    agent = machine.agent
    metrics = agent.executor.metrics
    metrics.agent = agent
    machine.manager.poison_loads["bad.service"] = "cannot write the unit file"
    await sim.add_engine()
    await sim.submit("good.service", SLEEP)
    await wait_until_async(lambda: sim.where("good.service"), 5, "good.service running")
    await wait_until_async(
        lambda: value(metrics, "fleet_agent_units", state="active") == 1, 5, "the running unit in its state"
    )
    assert value(metrics, "fleet_agent_units", state="failed") == 0
    assert value(metrics, "fleet_agent_systemd_batch_duration_seconds_count", operation="load") >= 1
    assert value(metrics, "fleet_agent_systemd_batch_duration_seconds_count", operation="start") >= 1
    assert value(metrics, "fleet_agent_systemd_errors_total", operation="load") == 0

    await sim.submit("bad.service", SLEEP)
    await wait_until_async(
        lambda: value(metrics, "fleet_agent_systemd_errors_total", operation="load") >= 1, 5, "the failed load counted"
    )


def test_units_by_state_counts_the_published_states_every_state_always_present() -> None:
    metrics = Metrics()
    published = {
        "a.service": UnitState("a.service", A, "h", "loaded", "active", "running"),
        "b.service": UnitState("b.service", A, "h", "loaded", "failed", "failed"),
        "c.service": UnitState("c.service", A, "h", "loaded", "failed", "failed"),
    }
    metrics.agent = SimpleNamespace(states=SimpleNamespace(published=published))
    assert value(metrics, "fleet_agent_units", state="active") == 1
    assert value(metrics, "fleet_agent_units", state="failed") == 2
    assert metrics.registry.get_sample_value("fleet_agent_units", {"state": "activating"}) == 0


def test_task_series_come_from_the_supervisor() -> None:
    metrics = Metrics()
    tasks = [TaskHealth("agent.keepalive", running=True), TaskHealth("engine", restarts=3, restart_at=12.0)]
    metrics.node = SimpleNamespace(error=lambda: "task engine is restarting", tasks=lambda: tasks)
    assert value(metrics, "fleet_task_up", task="agent.keepalive") == 1
    assert value(metrics, "fleet_task_up", task="engine") == 0
    assert value(metrics, "fleet_task_restarts_total", task="engine") == 3
    assert value(metrics, "fleet_node_serving") == 0


# -- etcd -----------------------------------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.fail = False

    async def get(self, key: bytes) -> Any:
        if self.fail:
            raise aetcd.exceptions.ConnectionFailedError("etcd is gone")
        return None


async def test_every_etcd_request_is_timed_by_operation_and_says_whether_etcd_answered() -> None:
    metrics = Metrics()
    etcd = Etcd(EtcdConfig(endpoints=("http://127.0.0.1:1",)))
    etcd.observe = metrics.etcd_request
    client = FakeClient()
    etcd._client = client  # type: ignore[assignment]  # no connection: the fake answers
    assert not exported(metrics, "fleet_registry_up")  # unknown before any request
    assert await etcd.get("k") is None
    assert value(metrics, "fleet_etcd_request_duration_seconds_count", operation="get") == 1
    assert value(metrics, "fleet_registry_up") == 1
    client.fail = True
    with pytest.raises(aetcd.exceptions.ConnectionFailedError):
        await etcd.get("k")
    assert value(metrics, "fleet_etcd_request_duration_seconds_count", operation="get") == 2
    assert value(metrics, "fleet_registry_up") == 0
    await etcd.close()


# -- the API -------------------------------------------------------------------------------------


@pytest.fixture
async def api() -> AsyncIterator[tuple[TestClient, Metrics]]:
    metrics = Metrics(process=True)
    client = TestClient(TestServer(make_app(MemoryRegistry(), Node(A), metrics=metrics)))
    await client.start_server()
    try:
        yield client, metrics
    finally:
        await client.close()


async def test_api_requests_are_timed_by_route_pattern_never_the_url(api: tuple[TestClient, Metrics]) -> None:
    client, metrics = api
    for name in ("a.service", "b.service", "c.service"):
        assert (await client.get(f"/fleet/v1/units/{name}")).status == 404
    assert (await client.get("/fleet/v1/units")).status == 200
    assert (await client.get("/no/such/thing")).status == 404
    assert (await client.request("TRACE", "/fleet/v1/units")).status == 405
    count = "fleet_api_request_duration_seconds_count"
    assert value(metrics, count, method="GET", route="/fleet/v1/units/{name}", code="404") == 3
    assert value(metrics, count, method="GET", route="/fleet/v1/units", code="200") == 1
    assert value(metrics, count, method="GET", route="unmatched", code="404") == 1
    assert value(metrics, count, method="other", route="unmatched", code="405") == 1
    assert value(metrics, "fleet_api_requests_total", method="GET", code="404") == 4
    routes = {s.labels["route"] for family in metrics.registry.collect() for s in family.samples if s.name == count}
    assert not any(".service" in route for route in routes), routes


async def test_metrics_parse_and_negotiate_openmetrics(api: tuple[TestClient, Metrics]) -> None:
    client, _ = api
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert families["fleet_node_serving"].type == "gauge"
    assert families["fleet_api_requests"].type == "counter"
    assert families["fleet_api_request_duration_seconds"].type == "histogram"
    assert families["fleet_engine_leader"].samples[0].value == 0  # no engine in this process
    assert "process_cpu_seconds" in families and "python_info" in families
    assert "fleet_units_total" not in families  # the cluster is the engine leader's to report
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


async def test_each_app_has_its_own_series() -> None:
    apps = [TestClient(TestServer(make_app(MemoryRegistry(), Node(A)))) for _ in range(2)]
    try:
        for client in apps:
            await client.start_server()
        await apps[0].get("/fleet/v1/units")
        await apps[0].get("/fleet/v1/units")
        texts = [await (await client.get("/metrics")).text() for client in apps]
    finally:
        await asyncio.gather(*(client.close() for client in apps))
    counts = [
        {
            (s.labels["method"], s.labels["code"]): s.value
            for f in text_string_to_metric_families(text)
            if f.name == "fleet_api_requests"
            for s in f.samples
        }
        for text in texts
    ]
    assert counts[0][("GET", "200")] == 2
    assert ("GET", "200") not in counts[1]  # the other app's scrape only


# -- D-Bus -----------------------------------------------------------------------------------------


class ErrorBus:
    """A connected bus on which systemd answers every call with an error."""

    connected = True

    async def call(self, msg: Any) -> Any:
        return SimpleNamespace(
            message_type=MessageType.ERROR, error_name="org.freedesktop.systemd1.NoSuchUnit", body=["no such unit"]
        )


async def test_failed_dbus_calls_are_counted_by_method() -> None:
    bus = SystemdBus("unix:path=/nonexistent", on_signal=lambda msg: None)
    bus._bus = ErrorBus()  # type: ignore[assignment]  # no D-Bus here: the fake answers
    bus._ready.set()
    metrics = Metrics()
    metrics.dbus = bus
    assert value(metrics, "fleet_systemd_dbus_errors_total", method="StartUnit") == 0
    for _ in range(2):
        with pytest.raises(SystemdCallError):
            await bus.call("StartUnit", "ss", ["x.service", "replace"])
    assert value(metrics, "fleet_systemd_dbus_errors_total", method="StartUnit") == 2
