"""The API's bounds, against a real etcd: the unit and body size limits (413), malformed
query values and JSON (400, never 500), the all-or-nothing PATCH /machines (404 for an
unknown machine, nothing changed), the limit on concurrent journal follows (429), and
the batch route's limits and malformed batches (nothing stored) and the long-poll's
malformed parameters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_api import LOCAL, OTHER, SERVICE, THIRD, _client, error_of, opts, put, snapshot

from fleetd.api import Node
from fleetd.api.extensions import JOURNAL_FOLLOWS
from fleetd.model.limits import (
    MAX_BATCH_BYTES,
    MAX_BATCH_UNITS,
    MAX_JOURNAL_FOLLOWS,
    MAX_JSON_DEPTH,
    MAX_PATCH_MACHINES,
    MAX_PATCH_OPERATIONS,
    MAX_REQUEST_BYTES,
    MAX_STATE_WAIT_SECONDS,
    MAX_UNIT_BYTES,
    OPTION_OVERHEAD_BYTES,
    options_size,
)
from fleetd.model.state import MachineState
from fleetd.registry.registry import Registry

pytestmark = pytest.mark.integration

# fleet (and fleetd) take a unit only as application/json
JSON_TYPE = {"Content-Type": "application/json"}
UNITS = "/fleet/v1/units"


async def _follow_forever(unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
    yield f"{unit} starts"
    while follow:
        await asyncio.sleep(0.05)
        yield "tick"


@pytest.fixture
def node() -> Node:
    async def status(unit: str) -> str:
        return f"* {unit}\n"

    return Node(LOCAL, journal_source=_follow_forever, status_source=status)


@pytest.fixture
async def client(registry: Registry, node: Node) -> AsyncIterator[TestClient]:
    client = await _client(registry, node)
    try:
        yield client
    finally:
        await client.close()


async def _register(registry: Registry, *machines: str) -> None:
    lease = await registry.grant_lease(60)
    for machine in machines:
        await registry.register_machine(MachineState(machine, ""), lease)


# -- sizes ---------------------------------------------------------------------------------------


async def test_a_unit_beyond_the_limit_is_413_and_not_stored(client: TestClient, registry: Registry) -> None:
    overhead = OPTION_OVERHEAD_BYTES + len("Service") + len("ExecStart")
    fits = [{"section": "Service", "name": "ExecStart", "value": "x" * (MAX_UNIT_BYTES - overhead)}]
    assert options_size(fits) == MAX_UNIT_BYTES
    assert (await put(client, "big.service", desiredState="loaded", options=fits)).status == 201
    fits[0]["value"] += "y"
    message = await error_of(await put(client, "bigger.service", desiredState="loaded", options=fits), 413)
    assert str(MAX_UNIT_BYTES) in message and "bigger.service" in message
    # many small options in a long section count their section each time
    many = [{"section": "S" * 1000, "name": f"N{i}", "value": ""} for i in range(70)]
    assert "limit" in await error_of(await put(client, "many.service", desiredState="loaded", options=many), 413)
    assert [u.name for u in await snapshot(registry)] == ["big.service"]


async def test_a_body_beyond_the_limit_is_413_naming_it(client: TestClient, registry: Registry) -> None:
    body = b'{"desiredState": "loaded", "options": [], "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    message = await error_of(await client.put(f"{UNITS}/a.service", data=body, headers=JSON_TYPE), 413)
    assert str(MAX_REQUEST_BYTES) in message

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp stops reading
        for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
            yield b" " * 65536

    await error_of(await client.put(f"{UNITS}/a.service", data=chunks(), headers=JSON_TYPE), 413)
    assert await snapshot(registry) == []


# -- malformed input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
        '{"a":' * 5000 + "1" + "}" * 5000,
        json.dumps({"desiredState": "loaded", "options": [{"section": "S", "name": "n", "value": "\ud800"}]}),
        json.dumps({"desiredState": "loaded", "options": [{"section": "S", "name": "\udfff", "value": ""}]}),
        json.dumps({"\ud83d": "loaded"}),
        b'{"desiredState": "loaded", "options": [{"section": "S", "name": "n", "value": "\xff"}]}',
        "null",
        "[]",
        '"loaded"',
        "12",
        json.dumps({"desiredState": ["loaded"]}),
        json.dumps({"desiredState": "loaded", "options": {"section": "S"}}),
        json.dumps({"desiredState": "loaded", "options": [[]]}),
        json.dumps({"desiredState": "loaded", "options": [{"section": 1, "name": [], "value": {}}]}),
        json.dumps({"desiredState": "loaded", "name": 7, "options": []}),
    ],
)
async def test_malformed_bodies_are_400(client: TestClient, registry: Registry, body: str | bytes) -> None:
    await error_of(await client.put(f"{UNITS}/a.service", data=body, headers=JSON_TYPE), 400)
    assert await snapshot(registry) == []


async def test_a_valid_surrogate_pair_is_a_character(client: TestClient) -> None:
    options = [{"section": "Service", "name": "ExecStart", "value": "/bin/echo \U0001f600"}]
    response = await client.put(
        f"{UNITS}/emoji.service",
        data=json.dumps({"desiredState": "loaded", "options": options}),
        headers=JSON_TYPE,
    )
    assert response.status == 201
    assert (await (await client.get(f"{UNITS}/emoji.service")).json())["options"] == options


@pytest.mark.parametrize(
    "value",
    ["²", "١٢", "+5", " 5", "5 ", "1_0", "0", "-1", "5.0", "0x10", "\x00", "∞", "9" * 5000 + "x"],
)
async def test_bad_page_sizes_are_400(client: TestClient, value: str) -> None:
    for path in (UNITS, "/fleet/v1/state", "/fleet/v1/machines"):
        assert "pageSize" in await error_of(await client.get(path, params={"pageSize": value}), 400)


async def test_huge_page_sizes_are_capped_and_empty_is_the_default(client: TestClient) -> None:
    await put(client, "a.service", desiredState="loaded", options=opts(SERVICE))
    for value in ("10001", "9" * 5000, "0" * 5000 + "1", ""):
        response = await client.get(UNITS, params={"pageSize": value})
        assert response.status == 200
        assert [u["name"] for u in (await response.json())["units"]] == ["a.service"]


@pytest.mark.parametrize(
    "token",
    ["!!!", "\x00", "é", "W1tb" * 400, "eyJyIjoidW5pdHMiLCJhIjpbMV19", "bnVsbA", "x" * 5000, "=", "W10"],
)
async def test_bad_page_tokens_are_400(client: TestClient, token: str) -> None:
    await error_of(await client.get(UNITS, params={"nextPageToken": token}), 400)


@pytest.mark.parametrize(
    "params",
    [
        {"lines": "²"},
        {"lines": "9" * 40},
        {"lines": "-0x1"},
        {"lines": "1e3"},
        {"follow": "ja"},
        {"follow": "\x00"},
        {"output": "\U0001f600"},
    ],
)
async def test_bad_journal_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    await error_of(await client.get(f"/fleet/v1/machines/{LOCAL}/journal/a.service", params=params), 400)


async def test_bad_replace_is_400_and_nothing_is_stored(client: TestClient, registry: Registry) -> None:
    response = await put(client, "a.service", "?replace=²", desiredState="loaded", options=opts(SERVICE))
    await error_of(response, 400)
    assert await snapshot(registry) == []


# -- PATCH /machines ---------------------------------------------------------------------------------


async def test_patch_naming_an_unknown_machine_changes_nothing(client: TestClient, registry: Registry) -> None:
    await _register(registry, LOCAL, OTHER)
    await registry.update_dynamic_metadata(LOCAL, {"keep": "me"})
    body = [
        {"op": "add", "path": f"/{LOCAL}/metadata/role", "value": "web"},
        {"op": "remove", "path": f"/{LOCAL}/metadata/keep"},
        {"op": "add", "path": f"/{OTHER}/metadata/role", "value": "db"},
        {"op": "add", "path": f"/{THIRD}/metadata/role", "value": "db"},
    ]
    message = await error_of(await client.patch("/fleet/v1/machines", json=body), 404)
    assert THIRD in message and LOCAL not in message and "nothing was changed" in message
    assert await registry.dynamic_metadata(LOCAL) == {"keep": "me"}
    assert await registry.dynamic_metadata(OTHER) == {}

    response = await client.patch("/fleet/v1/machines", json=body[:3])
    assert response.status == 204, await response.text()
    assert await registry.dynamic_metadata(LOCAL) == {"role": "web"}
    assert await registry.dynamic_metadata(OTHER) == {"role": "db"}


async def test_patch_limits_are_413(client: TestClient, registry: Registry) -> None:
    def op(machine: str, key: str = "k") -> dict[str, Any]:
        return {"op": "add", "path": f"/{machine}/metadata/{key}", "value": "v"}

    machines = [f"{i:032x}" for i in range(MAX_PATCH_MACHINES + 1)]
    message = await error_of(await client.patch("/fleet/v1/machines", json=[op(m) for m in machines]), 413)
    assert str(MAX_PATCH_MACHINES) in message
    ops = [op(LOCAL, f"k{i}") for i in range(MAX_PATCH_OPERATIONS + 1)]
    assert str(MAX_PATCH_OPERATIONS) in await error_of(await client.patch("/fleet/v1/machines", json=ops), 413)


# -- journal follows -----------------------------------------------------------------------------------


async def test_concurrent_follows_are_bounded(client: TestClient) -> None:
    url = f"/fleet/v1/machines/{LOCAL}/journal/a.service"
    slots = client.app[JOURNAL_FOLLOWS]
    streams = []
    try:
        for _ in range(MAX_JOURNAL_FOLLOWS):
            response = await client.get(url, params={"follow": "true", "lines": "1"})
            assert response.status == 200
            streams.append(response)
        assert slots.active == MAX_JOURNAL_FOLLOWS
        refused = await client.get(url, params={"follow": "true"})
        message = await error_of(refused, 429)
        assert str(MAX_JOURNAL_FOLLOWS) in message and refused.headers["Retry-After"]
        # reading without follow is not limited
        plain = await client.get(url, params={"lines": "1"})
        assert plain.status == 200 and await plain.text() == "a.service starts\n"
    finally:
        for response in streams:
            response.close()
    for _ in range(100):  # slots are given back as the streams notice their clients left
        if slots.active == 0:
            break
        await asyncio.sleep(0.05)
    assert slots.active == 0
    again = await client.get(url, params={"follow": "true"})
    assert again.status == 200
    again.close()


# -- POST /units:batch and the GET /state long-poll ------------------------------------------------

BATCH = "/fleet/v1/units:batch"


async def test_the_batch_limits_are_413_naming_them(client: TestClient, registry: Registry) -> None:
    many = [f"n{i}.service" for i in range(MAX_BATCH_UNITS + 1)]
    message = await error_of(await client.post(BATCH, json={"destroy": many}), 413)
    assert str(MAX_BATCH_UNITS) in message
    pad = b'{"units": [], "pad": "' + b"x" * MAX_BATCH_BYTES + b'"}'
    assert str(MAX_BATCH_BYTES) in await error_of(await client.post(BATCH, data=pad, headers=JSON_TYPE), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bound still holds
        for _ in range(MAX_BATCH_BYTES // 65536 + 2):
            yield b" " * 65536

    await error_of(await client.post(BATCH, data=chunks(), headers=JSON_TYPE), 413)
    # larger than one unit's request, within the batch's: accepted
    body = {"units": [{"name": f"s{i}.service", "options": opts(SERVICE)} for i in range(MAX_BATCH_UNITS)]}
    response = await client.post(BATCH, json=body)
    assert response.status == 200 and len((await response.json())["units"]) == MAX_BATCH_UNITS
    await error_of(await client.post(BATCH, data=b"{}", headers={"Content-Type": "text/plain"}), 415)
    await error_of(await client.get(BATCH), 405)
    assert len(await snapshot(registry)) == MAX_BATCH_UNITS


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
        b'{"units": [{"name": "a.service", "options": [{"section": "S", "name": "n", "value": "\xff"}]}]}',
        json.dumps({"units": [{"name": "a.service", "desiredState": "loaded", "options": [{"value": "\ud800"}]}]}),
        "null",
        "[]",
        '"units"',
        json.dumps({"units": {"name": "a.service"}}),
        json.dumps({"units": [None]}),
        json.dumps({"units": [{"name": 7}]}),
        json.dumps({"units": [{"name": "a.service", "desiredState": ["loaded"], "options": []}]}),
        json.dumps({"units": [{"name": "a.service", "desiredState": "loaded", "options": {"section": "S"}}]}),
        json.dumps({"units": [{"name": "a.service", "options": [[]]}]}),
        json.dumps({"units": [{"name": "../../x.service", "options": opts(SERVICE)}]}),
        json.dumps({"units": [{"name": "a.service", "options": opts(SERVICE)}], "replace": "yes"}),
        json.dumps({"units": [{"name": "a.service", "options": opts(SERVICE)}], "destroy": ["a.service"]}),
        json.dumps({"units": [{"name": "a.service", "options": opts(SERVICE)}], "destroy": [{"name": "b.service"}]}),
        json.dumps({"destroy": "a.service"}),
    ],
)
async def test_malformed_batches_are_400_and_store_nothing(
    client: TestClient, registry: Registry, body: str | bytes
) -> None:
    await error_of_batch(await client.post(BATCH, data=body, headers=JSON_TYPE), 400)
    assert await snapshot(registry) == []


async def error_of_batch(response: Any, code: int) -> None:
    """fleet's error shape, with the per-unit problems a refused batch adds."""
    assert response.status == code, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"code", "message", "units", "written"}
    for problem in error.get("units", []):
        assert problem["code"] == code and problem["message"] and isinstance(problem["name"], str)


@pytest.mark.parametrize(
    "params",
    [
        {"wait": "true"},
        {"wait": "true", "index": "-1"},
        {"wait": "true", "index": "x"},
        {"wait": "true", "index": "²"},
        {"wait": "maybe", "index": "1"},
        {"wait": "true", "index": "1", "timeout": "0"},
        {"wait": "true", "index": "1", "timeout": str(MAX_STATE_WAIT_SECONDS + 1)},
        {"wait": "true", "index": "9" * 30},
        {"wait": "true", "index": "1", "unitName": "../x"},
    ],
)
async def test_bad_wait_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    await error_of(await client.get("/fleet/v1/state", params=params), 400)
