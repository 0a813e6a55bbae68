"""GET /fleet/v1/events over a real etcd: pages, the unit filter, hostile queries, follow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetd.api import Node, make_app
from fleetd.model.history import EventKind, HistoryEvent
from fleetd.registry.etcd_registry import EtcdRegistry

pytestmark = pytest.mark.integration

BASE = 1_800_000_000.0


@pytest.fixture
async def client(registry: EtcdRegistry) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(registry, Node("a" * 32)))) as test_client:
        yield test_client


async def test_events_are_listed_oldest_first_by_page_and_by_unit(client: TestClient, registry: EtcdRegistry) -> None:
    await registry.record_events(
        [HistoryEvent(BASE + i, EventKind.STARTED, f"u{i % 2}.service", "1" * 32, f"step {i}") for i in range(5)]
    )
    answer = await client.get("/fleet/v1/events", params={"pageSize": "2"})
    page = await answer.json()
    assert answer.status == 200 and [e["reason"] for e in page["events"]] == ["step 0", "step 1"]
    assert page["events"][0] == {
        "time": "2027-01-15T08:00:00.000Z",
        "unit": "u0.service",
        "machine": "1" * 32,
        "event": "started",
        "reason": "step 0",
        "revision": None,
    }
    seen = [e["reason"] for e in page["events"]]
    while "nextPageToken" in page:
        page = await (
            await client.get("/fleet/v1/events", params={"pageSize": "2", "nextPageToken": page["nextPageToken"]})
        ).json()
        seen += [e["reason"] for e in page["events"]]
    assert seen == [f"step {i}" for i in range(5)]
    only = await (await client.get("/v1-alpha/events", params={"unitName": "u1.service"})).json()
    assert [e["reason"] for e in only["events"]] == ["step 1", "step 3"]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"unitName": "-bad"}, "unit name"),
        ({"nextPageToken": "%%%"}, "nextPageToken"),
        ({"nextPageToken": "eyJyIjoidW5pdHMiLCJhIjpbIngiXX0"}, "another list"),  # a units token
        ({"pageSize": "0"}, "pageSize"),
        ({"follow": "maybe"}, "follow"),
    ],
)
async def test_hostile_queries_are_refused_by_name(client: TestClient, query: dict[str, str], problem: str) -> None:
    answer = await client.get("/fleet/v1/events", params=query)
    assert answer.status == 400
    assert problem in (await answer.json())["error"]["message"]


async def test_follow_streams_the_stored_events_then_new_ones(client: TestClient, registry: EtcdRegistry) -> None:
    await registry.record_events([HistoryEvent(BASE, EventKind.PLACED, "web.service", "1" * 32, "first")])
    answer = await client.get("/fleet/v1/events", params={"follow": "true", "unitName": "web.service"})
    assert answer.status == 200 and answer.headers["Content-Type"] == "application/x-ndjson"

    async def next_event() -> dict[str, object]:
        return json.loads(await asyncio.wait_for(answer.content.readline(), 10))

    assert (await next_event())["reason"] == "first"
    await registry.record_events(
        [
            HistoryEvent(BASE + 1, EventKind.STARTED, "other.service", "1" * 32, "not this unit"),
            HistoryEvent(BASE + 2, EventKind.MOVED, "web.service", "2" * 32, "second"),
        ]
    )
    assert (await next_event())["reason"] == "second"  # the other unit's event was left out
    answer.close()
