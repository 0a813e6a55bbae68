"""``GET /metrics`` against a real etcd, wired as the daemon wires it: one Metrics for the
API, the engine and the etcd connection. The scrape parses as Prometheus' text format,
shows the cluster from the engine leader's memory, and sends etcd nothing at all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from fleetd.api import Node, make_app
from fleetd.engine.engine import Engine
from fleetd.metrics import Metrics
from fleetd.model.state import MachineState, StoredUnit
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd import Etcd, EtcdConfig
from fleetd.registry.etcd_registry import EtcdRegistry
from fleetd.settings import Settings
from fleetlab.etcd import EtcdCluster
from fleetlab.wait import eventually

pytestmark = pytest.mark.integration

LOCAL = "a" * 32
SERVICE = "[Service]\nExecStart=/bin/sleep infinity\n"
FAST = Settings(agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.05, debounce=0.001)


@pytest.fixture
async def daemon(etcd: EtcdCluster, key_prefix: str) -> AsyncIterator[tuple[TestClient, EtcdRegistry, Engine]]:
    """The API, an engine and their etcd connection sharing one Metrics, as fleetd.server
    builds them (the API's connection is its own here, so its requests can be counted)."""
    metrics = Metrics(process=True)
    config = EtcdConfig(endpoints=tuple(etcd.endpoints), request_timeout=5)
    api_etcd, engine_etcd = Etcd(config), Etcd(config)
    api_etcd.observe = engine_etcd.observe = metrics.etcd_request
    api_registry, engine_registry = EtcdRegistry(api_etcd, key_prefix), EtcdRegistry(engine_etcd, key_prefix)
    engine = Engine(engine_registry, LOCAL, FAST, metrics=metrics)
    metrics.engine = engine
    client = TestClient(TestServer(make_app(api_registry, Node(LOCAL), metrics=metrics)))
    task: asyncio.Task[None] | None = None
    try:
        await client.start_server()
        task = asyncio.create_task(engine.run())
        yield client, api_registry, engine
    finally:
        engine.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await client.close()
        await api_registry.close()
        await engine_registry.close()


async def scrape(client: TestClient, registry: EtcdRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """One scrape, parsed: family -> labels -> value; fails if it sent etcd anything."""
    before = registry.requests
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert registry.requests == before, "a scrape sent etcd a request"
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


async def test_a_scrape_shows_the_cluster_from_the_leaders_memory_and_reads_nothing_from_etcd(
    daemon: tuple[TestClient, EtcdRegistry, Engine],
) -> None:
    client, registry, engine = daemon
    await registry.create_unit(StoredUnit("a.service", parse_unit_file(SERVICE), DesiredState.LAUNCHED), False)
    await registry.create_unit(StoredUnit("b.service", parse_unit_file(SERVICE), DesiredState.INACTIVE), False)
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(LOCAL, "10.0.0.1"), lease)

    async def placed() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        families = await scrape(client, registry)
        decisions = families.get("fleet_engine_decisions", {})
        return families if decisions.get((("decision", "placed"), ("reason", "new")), 0) == 1 else None

    families = await eventually(placed, 10, "a.service placed, and counted")
    assert families["fleet_engine_leader"][()] == 1
    assert families["fleet_units_total"][()] == 2
    assert families["fleet_units_desired"][(("state", "launched"),)] == 1
    assert families["fleet_units_desired"][(("state", "inactive"),)] == 1
    assert families["fleet_machines_total"][()] == 1
    assert families["fleet_units_unplaceable"][()] == 0
    assert families["fleet_units_unreadable"][()] == 0
    assert families["fleet_engine_updates_in_progress"][()] == 0
    assert families["fleet_engine_pass_duration_seconds"][(("le", "+Inf"),)] >= 1
    assert families["fleet_registry_up"][()] == 1
    etcd_ops = {dict(labels).get("operation") for labels in families["fleet_etcd_request_duration_seconds"]}
    assert {"get_prefix", "lease", "transaction"} <= etcd_ops, etcd_ops
    assert families["fleet_node_serving"][()] == 1
    assert "process_resident_memory_bytes" in families

    # the engine stops leading: its fleetd no longer speaks for the cluster
    engine.stop()
    await eventually(lambda: _async(not engine.leading.is_set()), 10, "the engine to step down")
    families = await scrape(client, registry)
    assert families["fleet_engine_leader"][()] == 0
    assert "fleet_units_total" not in families


async def _async(value: bool) -> bool:
    return value
