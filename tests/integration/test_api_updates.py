"""Rolling updates over the API against a real etcd: POST /updates validates everything
before writing, answers 201 with the record, 409 while one is in progress; GET answers
the record; and an engine on the same etcd carries an update out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetd.api import Node, make_app
from fleetd.engine.engine import Engine
from fleetd.model.state import StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.registry import Registry
from fleetd.settings import Settings
from fleetlab.wait import eventually

pytestmark = pytest.mark.integration

OLD = parse_unit_file("[Service]\nExecStart=/bin/sleep 1000\n")
NEW = parse_unit_file("[Service]\nExecStart=/bin/sleep 2000\n")
MACHINE = "a" * 32


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(make_app(registry, Node(MACHINE))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def template(registry: Registry, count: int = 2) -> None:
    await registry.create_unit(StoredUnit("web@.service", OLD, DesiredState.INACTIVE, 1), False, "test")
    for i in range(1, count + 1):
        await registry.create_unit(StoredUnit(f"web@{i}.service", OLD, DesiredState.LAUNCHED, 1), False, "test")


async def error_of(response: Any, code: int) -> str:
    assert response.status == code, await response.text()
    body = await response.json()
    assert body["error"]["code"] == code
    return str(body["error"]["message"])


GLOBAL_OPTION = {"section": "X-Fleet", "name": "Global", "value": "true"}


@pytest.mark.parametrize(
    ("name", "body", "code", "fragment"),
    [
        ("web@.service", [], 400, "JSON object"),
        ("web@.service", {}, 400, "either options"),
        ("web@.service", {"options": NEW.to_options(), "revision": 1}, 400, "either options"),
        ("web", {"options": NEW.to_options()}, 400, ""),
        ("web@.service", {"options": []}, 400, "non-empty"),
        ("web@.service", {"options": [{"section": "S"}]}, 400, "options"),
        ("web@.service", {"options": [{"section": "S", "name": "N", "value": " x"}]}, 400, "whitespace"),
        ("web@.service", {"options": NEW.to_options(), "maxParallel": 0}, 400, "maxParallel"),
        ("web@.service", {"options": NEW.to_options(), "minHealthy": "10s"}, 400, "minHealthy"),
        ("web@.service", {"options": NEW.to_options(), "healthyDeadline": 1e300}, 400, "healthyDeadline"),
        ("web@.service", {"options": NEW.to_options(), "autoRevert": "no"}, 400, "autoRevert"),
        ("web@.service", {"options": NEW.to_options(), "unit": "x.service"}, 400, "unknown field"),
        ("web@.service", {"revision": -1}, 400, "revision"),
        ("web@.service", {"revision": 9}, 404, "no kept revision 9"),
        ("web@1.service", {"options": NEW.to_options()}, 400, "update the template"),
        ("nothing.service", {"options": NEW.to_options()}, 404, "not found"),
        ("web@.service", {"options": OLD.to_options()}, 400, "already has this body"),
        ("web@.service", {"options": [*NEW.to_options(), GLOBAL_OPTION]}, 400, "global"),
    ],
)
async def test_a_bad_request_is_refused_naming_the_problem_and_writes_nothing(
    client: TestClient, registry: Registry, name: str, body: Any, code: int, fragment: str
) -> None:
    await template(registry)
    message = await error_of(await client.post(f"/fleet/v1/updates/{name}", json=body), code)
    assert fragment in message
    assert await registry.update_versions() == {}
    assert (await registry.get_unit("web@1.service")).revision == 1  # type: ignore[union-attr]


async def test_an_update_is_created_read_and_a_second_one_conflicts(client: TestClient, registry: Registry) -> None:
    await template(registry)
    assert await error_of(await client.get("/fleet/v1/updates/web@.service"), 404)
    body = {"options": NEW.to_options(), "maxParallel": 2, "minHealthy": 1}
    answer = await client.post("/fleet/v1/updates/web@.service", json=body)
    assert answer.status == 201, await answer.text()
    record = await answer.json()
    assert record["state"] == "pending" and record["targetHash"] == NEW.hash()
    assert [i["name"] for i in record["instances"]] == ["web@1.service", "web@2.service"]
    assert record["params"] == {"maxParallel": 2, "minHealthy": 1.0, "healthyDeadline": 300.0, "autoRevert": True}
    assert record["origin"].startswith("API")
    got = await client.get("/fleet/v1/updates/web@.service")
    assert got.status == 200 and (await got.json())["instances"] == record["instances"]
    message = await error_of(await client.post("/fleet/v1/updates/web@.service", json=body), 409)
    assert "already pending" in message
    listed = await (await client.get("/fleet/v1/updates")).json()
    assert [u["name"] for u in listed["updates"]] == ["web@.service"] and listed["unreadable"] == {}


async def test_a_rollback_targets_a_kept_revision(client: TestClient, registry: Registry) -> None:
    await registry.create_unit(StoredUnit("db.service", OLD, DesiredState.LAUNCHED, 1), False, "test")
    await registry.replace_unit(StoredUnit("db.service", NEW, DesiredState.LAUNCHED, 2), False, "test")
    answer = await client.post("/fleet/v1/updates/db.service", json={"revision": "previous"})
    assert answer.status == 201, await answer.text()
    record = await answer.json()
    assert (record["kind"], record["targetRevision"], record["targetHash"]) == ("rollback", 1, OLD.hash())


async def test_the_engine_carries_out_an_update_posted_to_the_api(client: TestClient, registry: Registry) -> None:
    await template(registry, 3)
    lease = await registry.grant_lease(60)

    async def agents() -> None:  # every instance reported active on the body it has
        while True:
            states = []
            for unit in await registry.units():
                if unit.desired is DesiredState.LAUNCHED:
                    states.append(UnitState(unit.name, MACHINE, unit.hash, "loaded", "active", "running"))
            await registry.publish_states(MACHINE, lease, states)
            await asyncio.sleep(0.05)

    settings = Settings(agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.05, debounce=0.001)
    tasks = [asyncio.create_task(agents()), asyncio.create_task(Engine(registry, MACHINE, settings).run())]
    try:
        body = {"options": NEW.to_options(), "maxParallel": 2, "minHealthy": 0.2}
        assert (await client.post("/fleet/v1/updates/web@.service", json=body)).status == 201

        async def finished() -> dict[str, Any] | None:
            record = await (await client.get("/fleet/v1/updates/web@.service")).json()
            return record if record["state"] not in ("pending", "running") else None

        record = await eventually(finished, 20, "the update to end")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert record["state"] == "finished", record["reason"]
    assert record["counts"]["healthy"] == 3
    for name in ("web@.service", "web@1.service", "web@2.service", "web@3.service"):
        unit = await registry.get_unit(name)
        assert unit is not None and unit.file == NEW and unit.revision == 2
