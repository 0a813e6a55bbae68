"""``POST /fleet/v1/units:batch`` and the long-poll of ``GET /fleet/v1/state`` against a
real etcd: many units in one request, all or nothing as decided, every problem named per
unit; the atomicity the batch really gives when another writer interferes; and a wait for
unit changes that answers on a change, on its timeout and on shutdown, bounded in number."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_api import LOCAL, SERVICE, SERVICE2, _client, error_of, opts, snapshot

from fleetd.api import Node
from fleetd.api.state import INDEX_HEADER, STATE_WAITS
from fleetd.model.batch import BatchError
from fleetd.model.limits import MAX_UNIT_BYTES
from fleetd.model.state import ScheduledUnit, UnitState
from fleetd.model.submit import Refusal, submission
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd_registry import EtcdRegistry
from fleetd.registry.registry import Registry
from fleetlab.wait import wait_until_async

pytestmark = pytest.mark.integration

BATCH = "/fleet/v1/units:batch"
STATE = "/fleet/v1/state"
JSON_TYPE = {"Content-Type": "application/json"}
TEMPLATE = "[Service]\nExecStart=/bin/echo %i\n"


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[TestClient]:
    client = await _client(registry, Node(LOCAL))
    try:
        yield client
    finally:
        await client.close()


async def batch(client: TestClient, **body: Any) -> Any:
    return await client.post(BATCH, json=body)


async def results(response: Any) -> dict[str, str]:
    assert response.status == 200, await response.text()
    return {entry["name"]: entry["result"] for entry in (await response.json())["units"]}


async def refused(response: Any, code: int) -> dict[str, tuple[int, str]]:
    """A refused batch: fleet's error shape plus every problem per unit."""
    assert response.status == code, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == code and error["message"]
    return {p["name"]: (p["code"], p["message"]) for p in error["units"]}


# -- the batch -------------------------------------------------------------------------------------


async def test_a_batch_creates_starts_stops_and_destroys_many_units(client: TestClient, registry: Registry) -> None:
    names = [f"b{i:03d}.service" for i in range(200)]
    created = await batch(
        client,
        units=[
            {"name": "web@.service", "options": opts(TEMPLATE)},
            *({"name": n, "desiredState": "launched", "options": opts(SERVICE)} for n in names),
        ],
    )
    assert await results(created) == {"web@.service": "created", **dict.fromkeys(names, "created")}
    stored = {u.name: u for u in await snapshot(registry)}
    assert len(stored) == 201 and {stored[n].desired for n in names} == {DesiredState.LAUNCHED}
    # instances from the template, desired-state changes and a no-op, in one request
    changed = await batch(
        client,
        units=[
            {"name": "web@1.service", "desiredState": "launched"},
            {"name": "b000.service", "desiredState": "loaded"},
            {"name": "b001.service", "desiredState": "launched"},
        ],
    )
    assert await results(changed) == {
        "web@1.service": "created",
        "b000.service": "changed",
        "b001.service": "unchanged",
    }
    unit = await client.get("/fleet/v1/units/web@1.service")
    assert (await unit.json())["desiredState"] == "launched"
    # replace needs "replace": the same request with it replaces the body
    body = {"units": [{"name": "b002.service", "desiredState": "launched", "options": opts(SERVICE2)}]}
    assert await refused(await client.post(BATCH, json=body), 409) == {
        "b002.service": (409, "unit b002.service already exists with different contents; use --replace")
    }
    assert await results(await client.post(BATCH, json={**body, "replace": True})) == {"b002.service": "replaced"}
    destroyed = await batch(client, destroy=[*names, "never.service"])
    assert await results(destroyed) == {**dict.fromkeys(names, "destroyed"), "never.service": "absent"}
    assert [u.name for u in await snapshot(registry)] == ["web@.service", "web@1.service"]


async def test_a_refused_batch_names_every_problem_and_changes_nothing(client: TestClient, registry: Registry) -> None:
    await batch(client, units=[{"name": "kept.service", "desiredState": "launched", "options": opts(SERVICE)}])
    before = await snapshot(registry)
    huge = [{"section": "Service", "name": "ExecStart", "value": "x" * MAX_UNIT_BYTES}]
    problems = await refused(
        await batch(
            client,
            units=[
                {"name": "fine.service", "desiredState": "launched", "options": opts(SERVICE)},
                {"name": "no suffix", "desiredState": "launched", "options": opts(SERVICE)},
                {"name": "tmpl@.service", "desiredState": "launched", "options": opts(TEMPLATE)},
                {"name": "odd.service", "desiredState": "running", "options": opts(SERVICE)},
                {"name": "big.service", "options": huge},
                {"name": "fine.service", "desiredState": "loaded"},
            ],
            destroy=["kept.service", "also bad"],
        ),
        400,
    )
    assert set(problems) == {"no suffix", "tmpl@.service", "odd.service", "big.service", "fine.service", "destroy[1]"}
    assert all(code == 400 for code, _ in problems.values())
    assert str(MAX_UNIT_BYTES) in problems["big.service"][1]
    assert "named twice" in problems["fine.service"][1]
    # valid on their own, refused against the cluster: still every one, still nothing written
    problems = await refused(
        await batch(
            client,
            units=[
                {"name": "new.service", "desiredState": "launched", "options": opts(SERVICE)},
                {"name": "kept.service", "desiredState": "launched", "options": opts(SERVICE2)},
                {"name": "orphan@1.service", "desiredState": "launched"},
            ],
        ),
        409,
    )
    assert set(problems) == {"kept.service", "orphan@1.service"}
    assert await snapshot(registry) == before


async def test_a_writer_interfering_mid_batch_costs_only_the_transaction_it_touched(registry: EtcdRegistry) -> None:
    """What Registry.submit_many states: each transaction (at most 128 operations) is all or
    nothing and conditional on its units as read; a unit changed by another writer after
    the read makes its transaction write nothing and is decided again, the other
    transactions stand, and the refusal names what was written."""
    names = [f"r{i:03d}.service" for i in range(150)]  # several transactions
    interloper = "r070.service"
    original = registry._decide_batch
    calls = 0

    async def decide_then_interfere(requests: Any, written: Any) -> Any:
        nonlocal calls
        calls += 1
        decided = await original(requests, written)
        if calls == 1:  # after the batch read the cluster, another client creates one of its units
            await registry.submit(submission(interloper, DesiredState.LOADED, opts(SERVICE2)))
        return decided

    registry._decide_batch = decide_then_interfere  # type: ignore[method-assign]
    with pytest.raises(BatchError) as error:
        await registry.submit_many([submission(n, DesiredState.LAUNCHED, opts(SERVICE)) for n in names])
    assert calls == 2
    assert {p.name: p.kind for p in error.value.problems} == {interloper: Refusal.CONFLICT}
    written = set(error.value.written)
    # exactly the interloper's transaction is missing: a run of units around it, not all
    missing = [n for n in names if n not in written]
    first, last = names.index(missing[0]), names.index(missing[-1])
    assert interloper in missing and missing == names[first : last + 1]
    assert 1 < len(missing) < len(names) // 2
    stored = {u.name: u for u in await registry.units()}
    assert set(stored) == written | {interloper}
    assert stored[interloper].file == parse_unit_file(SERVICE2)  # the other writer's unit is intact
    # repeating the batch (without the conflicting unit) finishes it
    registry._decide_batch = original  # type: ignore[method-assign]
    rest = [submission(n, DesiredState.LAUNCHED, opts(SERVICE)) for n in names if n != interloper]
    await registry.submit_many(rest)
    assert len(await registry.units()) == 150


# -- the long-poll ------------------------------------------------------------------------------------


async def test_a_state_listing_carries_its_index_and_a_wait_answers_on_a_change(
    client: TestClient, registry: Registry
) -> None:
    first = await client.get(STATE)
    assert first.status == 200 and (await first.json()) == {"states": []}
    index = int(first.headers[INDEX_HEADER])
    lease = await registry.grant_lease(30)
    state = UnitState("a.service", LOCAL, "h", "loaded", "active", "running")

    slots = client.app[STATE_WAITS]
    started = time.monotonic()
    waiting = asyncio.ensure_future(client.get(STATE, params={"wait": "true", "index": str(index), "timeout": "5"}))
    await wait_until_async(lambda: slots.active == 1 or waiting.done(), 5, "the wait to start")
    assert not waiting.done()  # nothing changed yet: it waits
    await registry.publish_states(LOCAL, lease, [state])
    answer = await waiting
    assert answer.status == 200 and time.monotonic() - started < 4
    assert [s["name"] for s in (await answer.json())["states"]] == ["a.service"]
    after = int(answer.headers[INDEX_HEADER])
    assert after > index
    # nothing changes: the wait ends at its timeout with the same index
    started = time.monotonic()
    idle = await client.get(
        STATE, params={"wait": "true", "index": str(after), "timeout": "1", "unitName": "a.service"}
    )
    assert idle.status == 200 and 0.9 <= time.monotonic() - started < 4
    assert int(idle.headers[INDEX_HEADER]) == after
    # a placement is a change too; an index from the past answers at once
    leadership = await registry.acquire_leadership(LOCAL, lease)
    assert leadership is not None
    await registry.apply_schedule(
        leadership, [(LOCAL, ScheduledUnit("a.service", parse_unit_file(SERVICE), DesiredState.LOADED))], []
    )
    moved = await client.get(STATE, params={"wait": "true", "index": str(after), "timeout": "5"})
    assert int(moved.headers[INDEX_HEADER]) > after


async def test_waits_are_bounded_and_end_on_shutdown(registry: Registry) -> None:
    client = await _client(registry, Node(LOCAL))
    slots = client.app[STATE_WAITS]
    slots.limit = 2
    try:
        index = (await client.get(STATE)).headers[INDEX_HEADER]
        params = {"wait": "true", "index": index, "timeout": "5"}
        waits = [asyncio.ensure_future(client.get(STATE, params=params)) for _ in range(2)]
        await wait_until_async(lambda: slots.active == 2, 5, "two waits to start")
        too_many = await client.get(STATE, params=params)
        message = await error_of(too_many, 429)
        assert "2" in message and too_many.headers["Retry-After"]
        # a listing without wait is not limited
        assert (await client.get(STATE)).status == 200
        started = time.monotonic()
        await client.app.shutdown()  # what the server does on stop: the waits answer now
        answers = await asyncio.gather(*waits)
        assert [a.status for a in answers] == [200, 200] and time.monotonic() - started < 3
        assert slots.active == 0
    finally:
        await client.close()
