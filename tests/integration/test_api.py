"""The HTTP API v1 against a real etcd: every route, every error path, and the listeners
(TCP with a bearer token and TLS, the unix socket, systemd socket activation)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from fleetd.api import (
    ListenError,
    Node,
    TcpListener,
    UnixListener,
    make_app,
    make_ssl_context,
    start_api,
)
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile, UnitOption, parse_unit_file
from fleetd.registry.registry import Registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "a" * 32
OTHER = "b" * 32
THIRD = "c" * 32
SERVICE = "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sleep infinity\n"
SERVICE2 = "[Unit]\nDescription=hello again\n\n[Service]\nExecStart=/bin/sleep 1000\n"
GLOBAL = "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n"
TEMPLATE = "[Service]\nExecStart=/bin/echo %i\n\n[X-Fleet]\nConflicts=%p@*.service\n"


def opts(text: str) -> list[dict[str, str]]:
    return parse_unit_file(text).to_options()


class Journal:
    """A fake journal reader: ``lines`` numbered lines, then (with follow) a tick every
    50 ms until closed; records its calls and whether it was closed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool, str]] = []
        self.closed = asyncio.Event()

    async def __call__(self, unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        self.calls.append((unit, lines, follow, output))
        if unit == "missing.service":
            raise LookupError("no journal entries for missing.service")
        if unit == "broken.service":
            yield "first"
            raise RuntimeError("journalctl died")
        try:
            for index in range(lines):
                yield f"{unit} line {index}"
            while follow:
                await asyncio.sleep(0.05)
                yield "tick"
        finally:
            self.closed.set()


async def fake_status(unit: str) -> str:
    if unit == "missing.service":
        raise LookupError("unit missing.service is not loaded here")
    return f"* {unit} - hello\n   Active: active (running)\n"


@pytest.fixture
def node() -> Node:
    return Node(LOCAL, journal_source=Journal(), status_source=fake_status)


async def _client(registry: Registry, node: Node, token_limit: int = 100) -> TestClient:
    client = TestClient(TestServer(make_app(registry, node, token_limit=token_limit)))
    await client.start_server()
    return client


@pytest.fixture
async def client(registry: Registry, node: Node) -> AsyncIterator[TestClient]:
    client = await _client(registry, node)
    try:
        yield client
    finally:
        await client.close()


async def error_of(response: aiohttp.ClientResponse, code: int) -> str:
    """Assert fleet's error shape with ``code`` and return the message."""
    assert response.status == code, await response.text()
    body = await response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


async def put(client: TestClient, unit: str, query: str = "", **body: Any) -> aiohttp.ClientResponse:
    return await client.put(f"/fleet/v1/units/{unit}{query}", json=body)


async def snapshot(registry: Registry) -> list[StoredUnit]:
    return await registry.units()


# -- units ---------------------------------------------------------------------------------


async def test_units_empty_list_has_no_token(client: TestClient) -> None:
    response = await client.get("/fleet/v1/units")
    assert response.status == 200
    assert await response.json() == {"units": []}


async def test_create_get_and_list_a_unit(client: TestClient, registry: Registry) -> None:
    response = await put(client, "hello.service", desiredState="launched", options=opts(SERVICE), name="hello.service")
    assert response.status == 201
    stored = await registry.get_unit("hello.service")
    assert stored is not None and stored.desired is DesiredState.LAUNCHED
    assert stored.file == parse_unit_file(SERVICE)

    response = await client.get("/fleet/v1/units/hello.service")
    assert response.status == 200
    expected = {
        "name": "hello.service",
        "options": opts(SERVICE),
        "desiredState": "launched",
        "currentState": "inactive",
        "machineID": "",
        "revision": 1,  # beyond fleet: the number of its body (its first)
    }
    assert await response.json() == expected
    listing = await (await client.get("/fleet/v1/units")).json()
    assert listing == {"units": [expected]}


async def test_get_and_delete_missing_unit_are_404(client: TestClient) -> None:
    message = await error_of(await client.get("/fleet/v1/units/nope.service"), 404)
    assert "nope.service" in message
    await error_of(await client.delete("/fleet/v1/units/nope.service"), 404)


async def test_delete_unit(client: TestClient, registry: Registry) -> None:
    assert (await put(client, "a.service", desiredState="inactive", options=opts(SERVICE))).status == 201
    response = await client.delete("/fleet/v1/units/a.service")
    assert response.status == 204
    assert await registry.get_unit("a.service") is None
    await error_of(await client.delete("/fleet/v1/units/a.service"), 404)


@pytest.mark.parametrize(
    ("name", "body", "fragment"),
    [
        ("bad", {"desiredState": "launched", "options": opts(SERVICE)}, 'invalid unit name "bad"'),
        # a missing "value" is an empty one (fleet's client leaves it out); a missing name is not
        ("a.service", {"desiredState": "launched", "options": [{"section": "Service", "value": "x"}]}, "option 0"),
        ("a.service", {"desiredState": "launched", "options": "nope"}, "options must be a list"),
        (
            "a.service",
            {"desiredState": "launched", "options": opts("[X-Fleet]\nMachineID=abc\nGlobal=true\n")},
            "MachineID cannot be combined with Global",
        ),
        (
            "a.service",
            {"desiredState": "launched", "options": opts("[X-Fleet]\nMachineMetadata=a==b\n")},
            "malformed value",
        ),
        ("a.service", {"desiredState": "running", "options": opts(SERVICE)}, "invalid desiredState"),
        ("a.service", {"name": "b.service", "desiredState": "launched", "options": opts(SERVICE)}, "does not match"),
        ("a.service", {"name": 7, "desiredState": "launched", "options": opts(SERVICE)}, "must be a string"),
        ("foo@.service", {"desiredState": "launched", "options": opts(TEMPLATE)}, "cannot activate template"),
        ("foo@.service", {"desiredState": "loaded", "options": opts(TEMPLATE)}, "cannot activate template"),
    ],
)
async def test_rejected_put_is_400_and_changes_nothing(
    client: TestClient, registry: Registry, name: str, body: dict[str, Any], fragment: str
) -> None:
    await registry.create_unit(StoredUnit("keep.service", parse_unit_file(SERVICE), DesiredState.LOADED), False)
    before = await snapshot(registry)
    message = await error_of(await client.put(f"/fleet/v1/units/{name}", json=body), 400)
    assert fragment in message
    assert await snapshot(registry) == before


async def test_put_with_malformed_or_empty_or_non_object_body(client: TestClient, registry: Registry) -> None:
    url = "/fleet/v1/units/a.service"
    message = await error_of(
        await client.put(url, data=b"{not json", headers={"Content-Type": "application/json"}), 400
    )
    assert "malformed JSON" in message
    assert "empty" in await error_of(await client.put(url, data=b"", headers={"Content-Type": "application/json"}), 400)
    assert "JSON object" in await error_of(await client.put(url, json=["x"]), 400)
    assert await snapshot(registry) == []


async def test_template_may_be_submitted_inactive_and_instances_come_from_it(
    client: TestClient, registry: Registry
) -> None:
    assert (await put(client, "foo@.service", desiredState="inactive", options=opts(TEMPLATE))).status == 201
    # a template can never be activated, even once stored
    before = await snapshot(registry)
    message = await error_of(await put(client, "foo@.service", desiredState="launched"), 400)
    assert "cannot activate template" in message
    assert await snapshot(registry) == before

    # an instance without options is made from its template
    response = await put(client, "foo@bar.service", desiredState="launched")
    assert response.status == 201
    instance = await registry.get_unit("foo@bar.service")
    assert instance is not None
    assert instance.file == parse_unit_file(TEMPLATE)
    assert instance.desired is DesiredState.LAUNCHED

    # an instance whose template is not there: fleet's 409, nothing stored
    message = await error_of(await put(client, "baz@1.service", desiredState="launched"), 409)
    assert "baz@.service" in message
    assert await registry.get_unit("baz@1.service") is None


async def test_new_plain_unit_without_options_is_409(client: TestClient, registry: Registry) -> None:
    message = await error_of(await put(client, "new.service", desiredState="launched"), 409)
    assert message.startswith("unit does not exist and options field empty")  # fleet's message
    assert "new.service" in message
    await error_of(await put(client, "new.service", desiredState="launched", options=[]), 409)
    await error_of(await put(client, "new.service"), 409)
    assert await snapshot(registry) == []


async def test_put_without_desired_state_as_fleets_client_submits(client: TestClient, registry: Registry) -> None:
    # fleet's client submits {"name", "options"}: the unit is created inactive
    assert (await put(client, "a.service", name="a.service", options=opts(SERVICE))).status == 201
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.desired is DesiredState.INACTIVE
    assert (await put(client, "b.service", desiredState="", options=opts(SERVICE))).status == 201
    assert (await put(client, "a.service", desiredState="launched")).status == 204
    # new options without a desired state: the file is replaced and, as fleet stores a new
    # unit, made inactive (fleet's client waits for that before it loads or starts it again)
    assert (await put(client, "a.service", options=opts(SERVICE2))).status == 201
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.desired is DesiredState.INACTIVE
    assert stored.file == parse_unit_file(SERVICE2)
    # an existing unit with no new options and no desired state: fleet's 409
    before = await snapshot(registry)
    message = await error_of(await put(client, "a.service", name="a.service"), 409)
    assert "must provide desiredState" in message
    await error_of(await put(client, "a.service", options=opts(SERVICE2)), 409)
    assert await snapshot(registry) == before


async def test_existing_unit_changes_desired_state(client: TestClient, registry: Registry) -> None:
    assert (await put(client, "a.service", desiredState="inactive", options=opts(SERVICE))).status == 201
    for target in ("loaded", "launched", "loaded", "inactive", "launched"):
        response = await put(client, "a.service", desiredState=target)
        assert response.status == 204, await response.text()
        stored = await registry.get_unit("a.service")
        assert stored is not None and stored.desired == target
    # identical options (even an empty list, as fleet's client sends) also just set the state
    assert (await put(client, "a.service", desiredState="loaded", options=opts(SERVICE))).status == 204
    assert (await put(client, "a.service", desiredState="inactive", options=[])).status == 204
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.desired is DesiredState.INACTIVE
    assert stored.file == parse_unit_file(SERVICE)


async def test_different_options_replace_the_file_with_201(client: TestClient, registry: Registry) -> None:
    assert (await put(client, "a.service", desiredState="loaded", options=opts(SERVICE))).status == 201
    # as in fleet, a plain PUT with different options replaces the unit's file: 201
    response = await put(client, "a.service", desiredState="launched", options=opts(SERVICE2))
    assert response.status == 201
    stored = await registry.get_unit("a.service")
    assert stored is not None
    assert stored.file == parse_unit_file(SERVICE2) and stored.desired is DesiredState.LAUNCHED

    # ?replace=true (fleetd's own clients) replaces too and answers 204, as it always did
    response = await put(client, "a.service", "?replace=true", desiredState="launched", options=opts(SERVICE))
    assert response.status == 204
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.file == parse_unit_file(SERVICE)

    # replace can also turn a unit global (and back): the global copy follows
    response = await put(client, "a.service", "?replace=true", desiredState="launched", options=opts(GLOBAL))
    assert response.status == 204
    assert "a.service" in (await registry.global_units())[0]
    response = await put(client, "a.service", "?replace=1", desiredState="launched", options=opts(SERVICE))
    assert response.status == 204
    assert "a.service" not in (await registry.global_units())[0]
    assert "replace" in await error_of(
        await put(client, "a.service", "?replace=maybe", desiredState="launched", options=opts(SERVICE2)), 400
    )


async def test_global_unit_is_stored_as_global(client: TestClient, registry: Registry) -> None:
    assert (await put(client, "g.service", desiredState="launched", options=opts(GLOBAL))).status == 201
    globals_, _ = await registry.global_units()
    assert globals_["g.service"].desired is DesiredState.LAUNCHED


async def test_units_are_paginated_with_token_limit(registry: Registry, node: Node) -> None:
    body = parse_unit_file(SERVICE)
    names = [f"u{index:03d}.service" for index in range(250)]
    await registry.create_units((StoredUnit(name, body, DesiredState.INACTIVE), False) for name in names)
    client = await _client(registry, node, token_limit=100)
    try:
        seen: list[str] = []
        sizes: list[int] = []
        token = None
        while True:
            params = {"nextPageToken": token} if token else {}
            response = await client.get("/fleet/v1/units", params=params)
            assert response.status == 200
            page = await response.json()
            sizes.append(len(page["units"]))
            seen.extend(unit["name"] for unit in page["units"])
            token = page.get("nextPageToken")
            if token is None:
                assert "nextPageToken" not in page
                break
            assert isinstance(token, str) and token
        assert sizes == [100, 100, 50]
        assert seen == names

        assert "nextPageToken" in await error_of(
            await client.get("/fleet/v1/units", params={"nextPageToken": "garbage!"}), 400
        )
        # a token of one list is refused by another
        first = await (await client.get("/fleet/v1/units")).json()
        await error_of(await client.get("/fleet/v1/machines", params={"nextPageToken": first["nextPageToken"]}), 400)
    finally:
        await client.close()


async def _leader(registry: Registry):
    lease = await registry.grant_lease(30)
    leadership = await registry.acquire_leadership(OTHER, lease)
    assert leadership is not None
    return leadership


async def test_current_state_and_machine_id(client: TestClient, registry: Registry) -> None:
    service, glob = parse_unit_file(SERVICE), parse_unit_file(GLOBAL)
    for name in ("run.service", "stopped.service", "pending.service", "off.service"):
        await registry.create_unit(StoredUnit(name, service, DesiredState.LAUNCHED), False)
    await registry.create_unit(StoredUnit("g.service", glob, DesiredState.LAUNCHED), True)
    leadership = await _leader(registry)
    await registry.apply_schedule(
        leadership,
        [
            (LOCAL, ScheduledUnit("run.service", service, DesiredState.LAUNCHED)),
            (OTHER, ScheduledUnit("stopped.service", service, DesiredState.LOADED)),
            (OTHER, ScheduledUnit("pending.service", service, DesiredState.LAUNCHED)),
            (LOCAL, ScheduledUnit("g.service", glob, DesiredState.LAUNCHED)),
            (OTHER, ScheduledUnit("g.service", glob, DesiredState.LAUNCHED)),
        ],
        [],
    )
    lease = await registry.grant_lease(30)
    await registry.publish_states(
        LOCAL,
        lease,
        [
            UnitState("run.service", LOCAL, service.hash(), "loaded", "active", "running"),
            UnitState("g.service", LOCAL, glob.hash(), "loaded", "activating", "start"),
            # a stale report from a machine the unit is not placed on does not count
            UnitState("off.service", LOCAL, service.hash(), "loaded", "active", "running"),
        ],
    )
    await registry.publish_states(
        OTHER,
        lease,
        [
            UnitState("stopped.service", OTHER, service.hash(), "loaded", "inactive", "dead"),
            UnitState("g.service", OTHER, glob.hash(), "loaded", "failed", "failed"),
        ],
    )
    units = {u["name"]: u for u in (await (await client.get("/fleet/v1/units")).json())["units"]}
    got = {name: (u["currentState"], u["machineID"]) for name, u in units.items()}
    assert got == {
        "run.service": ("launched", LOCAL),
        "stopped.service": ("loaded", OTHER),
        "pending.service": ("inactive", OTHER),
        "off.service": ("inactive", ""),
        "g.service": ("launched", ""),
    }
    one = await (await client.get("/fleet/v1/units/stopped.service")).json()
    assert (one["currentState"], one["machineID"]) == ("loaded", OTHER)
    one = await (await client.get("/fleet/v1/units/g.service")).json()
    assert (one["currentState"], one["machineID"]) == ("launched", "")


# -- state ---------------------------------------------------------------------------------


async def test_state_lists_filters_and_paginates(registry: Registry, node: Node) -> None:
    lease = await registry.grant_lease(30)
    await registry.publish_states(
        LOCAL,
        lease,
        [
            UnitState("a.service", LOCAL, "1" * 40, "loaded", "active", "running"),
            UnitState("b.service", LOCAL, "2" * 40, "loaded", "inactive", "dead"),
        ],
    )
    await registry.publish_states(OTHER, lease, [UnitState("a.service", OTHER, "1" * 40, "loaded", "failed", "failed")])
    client = await _client(registry, node, token_limit=2)
    try:
        first = await (await client.get("/fleet/v1/state")).json()
        assert [(s["name"], s["machineID"]) for s in first["states"]] == [("a.service", LOCAL), ("a.service", OTHER)]
        assert first["states"][0] == {
            "name": "a.service",
            "hash": "1" * 40,
            "machineID": LOCAL,
            "systemdLoadState": "loaded",
            "systemdActiveState": "active",
            "systemdSubState": "running",
        }
        second = await (await client.get("/fleet/v1/state", params={"nextPageToken": first["nextPageToken"]})).json()
        assert [(s["name"], s["machineID"]) for s in second["states"]] == [("b.service", LOCAL)]
        assert "nextPageToken" not in second

        by_machine = await (await client.get("/fleet/v1/state", params={"machineID": OTHER})).json()
        assert [(s["name"], s["systemdActiveState"]) for s in by_machine["states"]] == [("a.service", "failed")]
        by_unit = await (await client.get("/fleet/v1/state", params={"unitName": "b.service"})).json()
        assert [s["machineID"] for s in by_unit["states"]] == [LOCAL]
        both = await (await client.get("/fleet/v1/state", params={"unitName": "a.service", "machineID": LOCAL})).json()
        assert [s["systemdSubState"] for s in both["states"]] == ["running"]
        none = await (await client.get("/fleet/v1/state", params={"machineID": THIRD})).json()
        assert none == {"states": []}
        await error_of(await client.get("/fleet/v1/state", params={"unitName": "bad/name"}), 400)
    finally:
        await client.close()


# -- machines ------------------------------------------------------------------------------


async def test_machines_list_and_paginate(registry: Registry, node: Node) -> None:
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(LOCAL, "10.0.0.1", {"region": "us"}), lease)
    await registry.register_machine(MachineState(OTHER, "10.0.0.2", {}), lease)
    client = await _client(registry, node, token_limit=1)
    try:
        first = await (await client.get("/fleet/v1/machines")).json()
        assert first["machines"] == [{"id": LOCAL, "primaryIP": "10.0.0.1", "metadata": {"region": "us"}}]
        second = await (await client.get("/fleet/v1/machines", params={"nextPageToken": first["nextPageToken"]})).json()
        assert second == {"machines": [{"id": OTHER, "primaryIP": "10.0.0.2", "metadata": {}}]}
    finally:
        await client.close()


async def test_a_patch_shows_in_the_next_machine_list_at_once(client: TestClient, registry: Registry) -> None:
    # no agent republishes here: the listing itself lays the stored dynamic metadata over
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(LOCAL, "10.0.0.1", {"region": "us", "os": "coreos"}), lease)
    await registry.register_machine(MachineState(OTHER, "10.0.0.2", {}), lease)
    response = await client.patch(
        "/fleet/v1/machines",
        json=[
            {"op": "add", "path": f"/{LOCAL}/metadata/role", "value": {"value": "web"}},
            {"op": "replace", "path": f"/{LOCAL}/metadata/region", "value": "eu"},
            {"op": "add", "path": f"/{OTHER}/metadata/disk", "value": "ssd"},
        ],
    )
    assert response.status == 204
    listed = (await (await client.get("/fleet/v1/machines")).json())["machines"]
    assert listed == [
        {"id": LOCAL, "primaryIP": "10.0.0.1", "metadata": {"region": "eu", "os": "coreos", "role": "web"}},
        {"id": OTHER, "primaryIP": "10.0.0.2", "metadata": {"disk": "ssd"}},
    ]
    # the same under fleet's old prefix
    assert (await (await client.get("/v1-alpha/machines")).json())["machines"] == listed


async def test_patch_machines_accepts_both_value_shapes(client: TestClient, registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    for machine in (LOCAL, OTHER):  # only registered machines can be changed
        await registry.register_machine(MachineState(machine, ""), lease)
    response = await client.patch(
        "/fleet/v1/machines",
        json=[
            {"op": "add", "path": f"/{LOCAL}/metadata/region", "value": "us-east"},
            {"op": "add", "path": f"/{LOCAL}/metadata/disk", "value": {"value": "ssd"}},
            {"op": "replace", "path": f"/{OTHER}/metadata/role", "value": {"value": "db"}},
        ],
    )
    assert response.status == 204, await response.text()
    assert await registry.dynamic_metadata(LOCAL) == {"region": "us-east", "disk": "ssd"}
    assert await registry.dynamic_metadata(OTHER) == {"role": "db"}

    response = await client.patch(
        "/fleet/v1/machines",
        json=[
            {"op": "replace", "path": f"/{LOCAL}/metadata/region", "value": "eu"},
            {"op": "remove", "path": f"/{LOCAL}/metadata/disk"},
            # later operations on the same key win
            {"op": "add", "path": f"/{OTHER}/metadata/tmp", "value": "x"},
            {"op": "remove", "path": f"/{OTHER}/metadata/tmp"},
        ],
    )
    assert response.status == 204
    assert await registry.dynamic_metadata(LOCAL) == {"region": "eu"}
    assert await registry.dynamic_metadata(OTHER) == {"role": "db"}
    assert (await client.patch("/fleet/v1/machines", json=[])).status == 204


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"op": "move", "path": f"/{LOCAL}/metadata/k", "value": "v"}, "invalid op"),
        ({"op": "add", "path": f"/{LOCAL}/labels/k", "value": "v"}, "invalid path"),
        ({"op": "add", "path": f"{LOCAL}/metadata/k", "value": "v"}, "invalid path"),
        ({"op": "add", "path": f"/{LOCAL}/metadata/k/x", "value": "v"}, "invalid path"),
        ({"op": "add", "path": f"/{LOCAL}/metadata/k"}, "needs a value"),
        ({"op": "add", "path": f"/{LOCAL}/metadata/k", "value": 5}, "value must be a string"),
        ({"op": "add", "path": f"/{LOCAL}/metadata/k", "value": {"v": "x"}}, "value must be a string"),
        ({"op": "add", "path": f"/{LOCAL}/metadata/k", "value": ""}, "invalid value"),
        ({"op": "add", "path": f"/{LOCAL}/metadata/k", "value": "a,b"}, "invalid value"),
        ({"op": "add", "path": f"/{LOCAL}/metadata/k=j", "value": "v"}, "invalid metadata key"),
        ("add", "expected an object"),
    ],
)
async def test_rejected_patch_changes_nothing(client: TestClient, registry: Registry, bad: Any, fragment: str) -> None:
    await registry.update_dynamic_metadata(LOCAL, {"keep": "me"})
    body = [{"op": "add", "path": f"/{LOCAL}/metadata/first", "value": "ok"}, bad]
    message = await error_of(await client.patch("/fleet/v1/machines", json=body), 400)
    assert fragment in message and "operation 1" in message
    assert await registry.dynamic_metadata(LOCAL) == {"keep": "me"}


async def test_patch_needs_a_json_list(client: TestClient) -> None:
    await error_of(await client.patch("/fleet/v1/machines", json={"op": "add"}), 400)
    await error_of(
        await client.patch("/fleet/v1/machines", data=b"[{", headers={"Content-Type": "application/json"}), 400
    )


# -- discovery, errors, 503, unplaceable, metrics --------------------------------------------


async def test_discovery_describes_every_route(client: TestClient) -> None:
    response = await client.get("/fleet/v1/discovery")
    assert response.status == 200
    doc = await response.json()
    assert doc["basePath"] == "/fleet/v1/"
    described = {
        (method["httpMethod"], "/fleet/v1/" + method["path"])
        for resource in doc["resources"].values()
        for method in resource["methods"].values()
    }
    routes = {
        (route.method, route.resource.canonical.replace("{name}", "{unitName}").replace("{machine}", "{machineID}"))
        for route in client.app.router.routes()
        if route.method not in ("HEAD", "*") and route.resource is not None
    }
    routes.discard(("GET", "/metrics"))
    fleet = {(method, path) for method, path in routes if path.startswith("/fleet/v1/")}
    assert described == fleet
    # every route is also served under fleet's old prefix, and nothing else is
    assert routes - fleet == {(method, path.replace("/fleet/v1/", "/v1-alpha/")) for method, path in fleet}
    assert {"Unit", "UnitState", "Machine", "Error"} <= set(doc["schemas"])


async def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert "/fleet/v1/nothing" in await error_of(await client.get("/fleet/v1/nothing"), 404)
    await error_of(await client.get("/nothing/at/all"), 404)
    await error_of(await client.get("/fleet/v1/units/a/b"), 404)
    response = await client.post("/fleet/v1/units", json={})
    assert "POST" in await error_of(response, 405)
    assert "GET" in response.headers["Allow"]
    await error_of(await client.delete("/fleet/v1/machines"), 405)


async def test_node_error_answers_503_everywhere(client: TestClient, node: Node, registry: Registry) -> None:
    node.error_message = f"machine ID {LOCAL} is already registered by another live fleetd"
    for method, path in [
        ("GET", "/fleet/v1/units"),
        ("PUT", "/fleet/v1/units/a.service"),
        ("DELETE", "/fleet/v1/units/a.service"),
        ("GET", "/fleet/v1/state"),
        ("GET", "/fleet/v1/machines"),
        ("PATCH", "/fleet/v1/machines"),
        ("GET", "/fleet/v1/discovery"),
        ("GET", "/fleet/v1/unplaceable"),
        ("GET", f"/fleet/v1/machines/{LOCAL}/journal/a.service"),
        ("GET", f"/fleet/v1/machines/{LOCAL}/status/a.service"),
        ("GET", "/fleet/v1/nothing"),
    ]:
        response = await client.request(method, path, json={"desiredState": "launched", "options": opts(SERVICE)})
        assert await error_of(response, 503) == node.error_message
    assert await snapshot(registry) == []
    # metrics still answer, and say the node is not serving
    text = await (await client.get("/metrics")).text()
    assert "fleet_node_serving 0" in text
    node.error_message = None
    assert (await client.get("/fleet/v1/units")).status == 200


async def test_unplaceable_reasons(client: TestClient, registry: Registry) -> None:
    assert await (await client.get("/fleet/v1/unplaceable")).json() == {"units": {}}
    leadership = await _leader(registry)
    reason = "no machine has metadata region=mars"
    await registry.apply_schedule(leadership, [], [], {"x.service": reason})
    assert await (await client.get("/fleet/v1/unplaceable")).json() == {"units": {"x.service": reason}}


async def test_metrics(client: TestClient, registry: Registry) -> None:
    # this fleetd's own series; the cluster's come from the engine leader
    # (tests/integration/test_metrics_scrape.py), so an API alone exports none
    await put(client, "a.service", desiredState="launched", options=opts(SERVICE))
    await put(client, "b.service", desiredState="inactive", options=opts(SERVICE))
    await client.get("/fleet/v1/nothing")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert families["fleet_node_serving"].samples[0].value == 1
    assert families["fleet_engine_leader"].samples[0].value == 0
    assert "fleet_units_total" not in families
    requests = {(s.labels["method"], s.labels["code"]): s.value for s in families["fleet_api_requests"].samples}
    assert families["fleet_api_requests"].type == "counter"
    assert requests[("PUT", "201")] == 2
    assert requests[("GET", "404")] == 1


# -- journal and status ------------------------------------------------------------------------


async def test_journal_of_the_local_machine(client: TestClient, node: Node) -> None:
    response = await client.get(
        f"/fleet/v1/machines/{LOCAL}/journal/hello.service", params={"lines": "3", "output": "cat"}
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert await response.text() == "".join(f"hello.service line {i}\n" for i in range(3))
    assert node.journal_source.calls[-1] == ("hello.service", 3, False, "cat")  # type: ignore[union-attr]
    # defaults: 10 lines, short output
    response = await client.get(f"/fleet/v1/machines/{LOCAL}/journal/hello.service")
    assert len((await response.text()).splitlines()) == 10
    assert node.journal_source.calls[-1] == ("hello.service", 10, False, "short")  # type: ignore[union-attr]


async def test_journal_follow_streams_and_stops_when_the_client_leaves(client: TestClient, node: Node) -> None:
    journal: Journal = node.journal_source  # type: ignore[assignment]
    response = await client.get(
        f"/fleet/v1/machines/{LOCAL}/journal/hello.service", params={"lines": "2", "follow": "true"}
    )
    assert response.status == 200
    got = [await asyncio.wait_for(response.content.readline(), 5) for _ in range(4)]
    assert got == [b"hello.service line 0\n", b"hello.service line 1\n", b"tick\n", b"tick\n"]
    response.close()
    await asyncio.wait_for(journal.closed.wait(), 5)


async def test_journal_follow_without_lines_sends_headers_at_once(client: TestClient) -> None:
    response = await asyncio.wait_for(
        client.get(f"/fleet/v1/machines/{LOCAL}/journal/hello.service", params={"lines": "0", "follow": "1"}), 3
    )
    assert response.status == 200
    assert await asyncio.wait_for(response.content.readline(), 5) == b"tick\n"
    response.close()


async def test_journal_errors(client: TestClient, registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(OTHER, "10.0.0.2"), lease)
    base = "/fleet/v1/machines"
    response = await client.get(f"{base}/{OTHER}/journal/hello.service")
    message = await error_of(response, 404)
    assert OTHER in message and "10.0.0.2" in message
    assert response.headers["X-Fleet-Machine-IP"] == "10.0.0.2"
    assert "not in the cluster" in await error_of(await client.get(f"{base}/{THIRD}/journal/hello.service"), 404)
    assert "no journal entries" in await error_of(await client.get(f"{base}/{LOCAL}/journal/missing.service"), 404)
    await error_of(await client.get(f"{base}/{LOCAL}/journal/hello"), 400)
    for params in ({"lines": "x"}, {"lines": "-1"}, {"follow": "perhaps"}, {"output": "yaml"}):
        await error_of(await client.get(f"{base}/{LOCAL}/journal/hello.service", params=params), 400)
    # a failure after the stream started is reported inside the stream
    text = await (await client.get(f"{base}/{LOCAL}/journal/broken.service")).text()
    assert text.startswith("first\n") and "journalctl died" in text


async def test_status(client: TestClient, registry: Registry) -> None:
    response = await client.get(f"/fleet/v1/machines/{LOCAL}/status/hello.service")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert (await response.text()).startswith("* hello.service - hello")
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(OTHER, "10.0.0.2"), lease)
    assert "10.0.0.2" in await error_of(await client.get(f"/fleet/v1/machines/{OTHER}/status/hello.service"), 404)
    assert "not loaded" in await error_of(await client.get(f"/fleet/v1/machines/{LOCAL}/status/missing.service"), 404)


async def test_status_carries_the_commands_exit_code(registry: Registry) -> None:
    # the status source is the real unit_status_text, its command a shell that prints and
    # exits 3 as systemctl status does for an inactive unit
    from fleetd.systemd.journal import StatusText, unit_status_text

    async def inactive(unit: str) -> str:
        return await unit_status_text(unit, prefix=("sh", "-c", 'echo "* $0 inactive"; exit 3', "x"))

    client = await _client(registry, Node(LOCAL, status_source=inactive))
    try:
        response = await client.get(f"/fleet/v1/machines/{LOCAL}/status/hello.service")
        assert response.status == 200  # fleet-style clients still get the text
        assert response.headers["X-Fleet-Exit-Code"] == "3"
        assert await response.text() == "* x inactive\n"
    finally:
        await client.close()
    assert StatusText("a", 4).exit_code == 4 and StatusText("a") == "a"
    # a source that says nothing of the code (a plain str): no header
    client = await _client(registry, Node(LOCAL, status_source=fake_status))
    try:
        response = await client.get(f"/fleet/v1/machines/{LOCAL}/status/hello.service")
        assert response.status == 200 and "X-Fleet-Exit-Code" not in response.headers
    finally:
        await client.close()


async def test_node_without_journal_or_status_answers_501(registry: Registry) -> None:
    client = await _client(registry, Node(LOCAL))
    try:
        await error_of(await client.get(f"/fleet/v1/machines/{LOCAL}/status/a.service"), 501)
        await error_of(await client.get(f"/fleet/v1/machines/{LOCAL}/journal/a.service"), 501)
    finally:
        await client.close()


# -- listeners ---------------------------------------------------------------------------------


async def test_tcp_token_and_unix_socket(registry: Registry, node: Node, tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "fleet.sock")
    app = make_app(registry, node)
    server = await start_api(app, [TcpListener("127.0.0.1", 0, token="s3cret"), UnixListener(path)])
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        url = f"http://127.0.0.1:{server.tcp_port()}/fleet/v1/units"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert "bearer token" in await error_of(response, 401)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
                await error_of(response, 401)
            async with session.get(url, headers={"Authorization": "Basic s3cret"}) as response:
                await error_of(response, 401)
            async with session.get(f"http://127.0.0.1:{server.tcp_port()}/nothing") as response:
                await error_of(response, 401)  # unknown routes are not revealed either
            async with session.get(url, headers={"Authorization": "Bearer s3cret"}) as response:
                assert response.status == 200
                assert await response.json() == {"units": []}
        # the unix socket asks for no token
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
            async with session.put(
                "http://fleet/fleet/v1/units/a.service", json={"desiredState": "loaded", "options": opts(SERVICE)}
            ) as response:
                assert response.status == 201
            async with session.get("http://fleet/fleet/v1/units/a.service") as response:
                assert (await response.json())["desiredState"] == "loaded"
    finally:
        await server.close()
    assert not os.path.exists(path)  # our socket file is removed on close


async def test_close_ends_open_journal_streams_quickly(registry: Registry, node: Node) -> None:
    journal: Journal = node.journal_source  # type: ignore[assignment]
    server = await start_api(make_app(registry, node), [TcpListener("127.0.0.1", 0)])
    url = f"http://127.0.0.1:{server.tcp_port()}/fleet/v1/machines/{LOCAL}/journal/a.service?lines=1&follow=true"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert await asyncio.wait_for(response.content.readline(), 5) == b"a.service line 0\n"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(server.close(), 10)
        assert loop.time() - started < 1.5
    await asyncio.wait_for(journal.closed.wait(), 5)


async def test_unix_socket_stale_live_and_foreign_files(registry: Registry, node: Node, tmp_path: Path) -> None:
    path = str(tmp_path / "fleet.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # leaves the file behind, nobody listening
    server = await start_api(make_app(registry, node), [UnixListener(path, mode=0o600)])
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # a second server must not steal a live socket
        with pytest.raises(ListenError, match="already serving"):
            await start_api(make_app(registry, node), [UnixListener(path)])
        assert os.path.exists(path)
        connector = aiohttp.UnixConnector(path=path)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://fleet/fleet/v1/machines") as response,
        ):
            assert response.status == 200
    finally:
        await server.close()
    regular = tmp_path / "not-a-socket"
    regular.write_text("data")
    with pytest.raises(ListenError, match="not a socket"):
        await start_api(make_app(registry, node), [UnixListener(str(regular))])
    assert regular.read_text() == "data"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
async def test_tls_with_token(registry: Registry, node: Node, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = make_ssl_context(str(cert), str(key))
    server = await start_api(make_app(registry, node), [TcpListener("127.0.0.1", 0, context, token="t")])
    try:
        client_context = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{server.tcp_port()}/fleet/v1/machines"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=client_context, headers={"Authorization": "Bearer t"}) as response:
                assert response.status == 200
            async with session.get(url, ssl=client_context) as response:
                await error_of(response, 401)
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url.replace("https", "http")) as response:
                    await response.read()
    finally:
        await server.close()
    with pytest.raises(ListenError, match="TLS"):
        make_ssl_context(str(tmp_path / "missing.pem"), str(key))


ACTIVATION_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, socket, sys
    import aiohttp
    from fleetd.api import ActivationError, Node, activated_listeners, listen_fds, make_app, start_api

    # started as systemd would: fd 3 is a listening TCP socket, LISTEN_PID is our pid
    port = int(os.environ["TEST_PORT"])
    result = {"pid_matches": os.environ.get("LISTEN_PID") == str(os.getpid())}
    sockets = listen_fds()
    result["count"] = len(sockets)
    result["fd"] = sockets[0].fileno()
    result["same_port"] = sockets[0].getsockname()[1] == port
    result["unset"] = not any(k in os.environ for k in ("LISTEN_FDS", "LISTEN_PID"))

    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid() + 1))
    result["other_pid"] = len(listen_fds())
    result["unset_after_other_pid"] = "LISTEN_FDS" not in os.environ
    os.environ.update(LISTEN_FDS="x", LISTEN_PID=str(os.getpid()))
    try:
        listen_fds()
    except ActivationError as exc:
        result["malformed"] = str(exc)

    class NoRegistry:
        pass

    async def main():
        app = make_app(NoRegistry(), Node("a" * 32))
        server = await start_api(app, activated_listeners(sockets, token="tok"))
        try:
            url = f"http://127.0.0.1:{port}/fleet/v1/discovery"
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as response:
                    result["no_token"] = response.status
                async with session.get(url, headers={"Authorization": "Bearer tok"}) as response:
                    result["with_token"] = response.status
                    result["doc"] = (await response.json())["id"]
        finally:
            await server.close()

    asyncio.run(main())
    print(json.dumps(result))
    """
)


def test_socket_activation_in_a_subprocess() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    fd = listener.fileno()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_PORT": str(listener.getsockname()[1])}
    env.pop("LISTEN_FDS", None)
    # like systemd: put the socket on fd 3, set LISTEN_PID to the pid that then execs fleetd
    launcher = (
        "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
        "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2]])"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", launcher, str(fd), ACTIVATION_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
            pass_fds=(fd,),
        )
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pid_matches"]
    assert result["count"] == 1 and result["fd"] == 3 and result["same_port"] and result["unset"]
    assert result["other_pid"] == 0 and result["unset_after_other_pid"]
    assert "LISTEN_FDS" in result["malformed"]
    assert result["no_token"] == 401
    assert result["with_token"] == 200 and result["doc"] == "fleet:v1"


async def test_page_size_query_overrides_token_limit(registry) -> None:  # type: ignore[no-untyped-def]
    from aiohttp.test_utils import TestClient, TestServer

    from fleetd.api import Node, make_app
    from fleetd.model.state import StoredUnit
    from fleetd.model.unit import DesiredState
    from fleetd.model.unitfile import parse_unit_file

    body = parse_unit_file("[Service]\nExecStart=/bin/true\n")
    await registry.create_units(
        (StoredUnit(f"p{i:03}.service", body, DesiredState.INACTIVE), False) for i in range(150)
    )
    async with TestClient(TestServer(make_app(registry, Node("m" * 32), token_limit=100))) as client:
        whole = await (await client.get("/fleet/v1/units?pageSize=500")).json()
        assert len(whole["units"]) == 150 and "nextPageToken" not in whole
        first = await (await client.get("/fleet/v1/units")).json()
        assert len(first["units"]) == 100 and first["nextPageToken"]
        small = await (await client.get("/fleet/v1/units?pageSize=7")).json()
        assert len(small["units"]) == 7
        bad = await client.get("/fleet/v1/units?pageSize=zero")
        assert bad.status == 400 and "pageSize" in (await bad.json())["error"]["message"]


# -- the unit input contract (docs/units.md) ----------------------------------------------------


async def _still_accepts_a_new_unit(client: TestClient, registry: Registry, index: int) -> None:
    """After a refusal the API and the registry work as before: a valid unit is created."""
    name = f"after-{index}.service"
    assert (await put(client, name, desiredState="launched", options=opts(GLOBAL))).status == 201
    stored = await registry.get_unit(name)
    assert stored is not None and stored.file == parse_unit_file(GLOBAL)


def _with(section: str, name: str, value: str) -> list[dict[str, str]]:
    return [*opts(SERVICE), {"section": section, "name": name, "value": value}]


CONTRACT_REFUSALS: list[tuple[str, list[dict[str, str]], str]] = [
    # a name so long that an agent's ".<name>.tmp" would exceed 255 bytes
    ("x" * 243 + ".service", opts(GLOBAL), "longer than 240 characters (251)"),
    ("x" * 233 + ".service", opts(GLOBAL), "longer than 240 characters (241)"),
    ("-Hroot@somehost.service", opts(SERVICE), 'must not start with "-"'),
    (".hidden.service", opts(SERVICE), 'must not start with "."'),
    ("fleetd.service", opts(SERVICE), "reserved for the host"),
    ("dbus.socket", opts(SERVICE), "reserved for the host"),
    ("systemd-journald.service", opts(SERVICE), "reserved for the host"),
    ("init.scope", opts(SERVICE), "reserved for the host"),
    ("multi-user.target", opts(SERVICE), "reserved for the host"),
    # a lone surrogate: no UTF-8 text (file, hash, etcd) can hold it
    ("a.service", _with("Unit", "Documentation", "\ud800"), "surrogate"),
    # written out, the value would swallow the next line (User=nobody): refused
    ("a.service", _with("Service", "ExecStart", "/bin/sleep 1000 \\"), "[Service] ExecStart"),
    ("a.service", _with("Service", "ExecStartPre", "/bin/sleep 1000 \\"), "ends with a backslash"),
    ("a.service", _with("Service", "Environment", " A=1"), "starts or ends with whitespace"),
    ("a.service", _with("Service", "Environment", "A=1\t"), "starts or ends with whitespace"),
    ("a.service", _with("Unit", "Documentation", "a\x1b[2Jb"), "control character"),
    ("a.service", _with("Unit", "Documentation", "a\u2028b"), "line break"),
    ("a.service", _with("Uni\tt", "Documentation", "x"), "control character"),
]


@pytest.mark.parametrize(("name", "options", "fragment"), CONTRACT_REFUSALS)
async def test_put_breaking_the_unit_contract_is_400_and_stores_nothing(
    client: TestClient, registry: Registry, name: str, options: list[dict[str, str]], fragment: str
) -> None:
    await registry.create_unit(StoredUnit("keep.service", parse_unit_file(SERVICE), DesiredState.LOADED), False)
    before = await snapshot(registry)
    message = await error_of(
        await client.put(f"/fleet/v1/units/{name}", json={"desiredState": "launched", "options": options}), 400
    )
    assert fragment in message
    assert await snapshot(registry) == before
    globals_, _ = await registry.global_units()
    assert list(globals_) == []
    await _still_accepts_a_new_unit(client, registry, 1)


async def test_inner_tabs_backslashes_and_unicode_are_kept(client: TestClient, registry: Registry) -> None:
    options = [
        *_with("Service", "Environment", "A=1\tB=2"),
        {"section": "Service", "name": "ExecStartPre", "value": "/bin/echo a\\ b"},
        {"section": "Unit", "name": "Documentation", "value": "caf\u00e9 \U0001f680"},
    ]
    assert (await put(client, "kept.service", desiredState="inactive", options=options)).status == 201
    got = await (await client.get("/fleet/v1/units/kept.service")).json()
    assert got["options"] == UnitFile.from_options(options).to_options()


async def test_status_and_journal_refuse_bad_unit_names(registry: Registry) -> None:
    asked: list[str] = []

    async def status(unit: str) -> str:
        asked.append(unit)
        return f"* {unit}\n"

    async def journal(unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        asked.append(unit)
        yield unit

    client = await _client(registry, Node(LOCAL, journal_source=journal, status_source=status))
    try:
        base = f"/fleet/v1/machines/{LOCAL}"
        for name in ("-Hroot@somehost.service", "--help.service", "dbus.service", "x" * 243 + ".service"):
            for route in ("status", "journal"):
                message = await error_of(await client.get(f"{base}/{route}/{name}"), 400)
                assert "invalid unit name" in message
        assert asked == []
        assert (await client.get(f"{base}/status/web.service")).status == 200
        assert asked == ["web.service"]
        await _still_accepts_a_new_unit(client, registry, 2)
    finally:
        await client.close()


async def test_a_stored_unit_breaking_the_contract_can_be_stopped_and_destroyed_not_started(
    client: TestClient, registry: Registry
) -> None:
    # what an old client could have written straight to etcd
    bad = UnitFile((UnitOption("Service", "ExecStart", "/bin/sleep 1000 \\"), UnitOption("Service", "User", "nobody")))
    await registry.create_unit(StoredUnit("old.service", bad, DesiredState.LOADED), False)
    message = await error_of(await put(client, "old.service", desiredState="launched"), 400)
    assert "as stored cannot run" in message and "ends with a backslash" in message
    assert (await registry.get_unit("old.service")).desired is DesiredState.LOADED  # type: ignore[union-attr]
    assert (await put(client, "old.service", desiredState="inactive")).status == 204
    assert (await client.delete("/fleet/v1/units/old.service")).status == 204
    assert await registry.get_unit("old.service") is None
    await _still_accepts_a_new_unit(client, registry, 3)


# -- fleet's mux: content type, the old prefix, the bare prefixes ---------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},  # aiohttp sends application/octet-stream for bytes
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/jsonx"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ],
)
async def test_put_needs_json_content_type(client: TestClient, registry: Registry, headers: dict[str, str]) -> None:
    body = json.dumps({"desiredState": "loaded", "options": opts(SERVICE)}).encode()
    message = await error_of(await client.put("/fleet/v1/units/a.service", data=body, headers=headers), 415)
    assert "application/json" in message
    assert await snapshot(registry) == []
    # parameters and surrounding spaces are accepted, as in fleet
    typed = {"Content-Type": " application/json ; charset=utf-8"}
    assert (await client.put("/fleet/v1/units/a.service", data=body, headers=typed)).status == 201


async def test_two_content_types_are_refused_by_aiohttp(client: TestClient) -> None:
    # fleet answers 415; aiohttp's HTTP parser refuses a repeated Content-Type first (400)
    body = json.dumps({"desiredState": "loaded", "options": opts(SERVICE)}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Type", "application/json")]
    response = await client.put("/fleet/v1/units/a.service", data=body, headers=headers)
    assert response.status in (400, 415)


async def test_patch_machines_takes_any_content_type_as_fleet(client: TestClient) -> None:
    # fleet checks the Content-Type of a unit PUT only
    response = await client.patch("/fleet/v1/machines", data=b"[]", headers={"Content-Type": "text/plain"})
    assert response.status == 204


async def test_v1_alpha_is_an_alias_of_every_route(client: TestClient, registry: Registry) -> None:
    response = await client.put("/v1-alpha/units/a.service", json={"desiredState": "loaded", "options": opts(SERVICE)})
    assert response.status == 201
    assert [u["name"] for u in (await (await client.get("/v1-alpha/units")).json())["units"]] == ["a.service"]
    assert (await (await client.get("/v1-alpha/units/a.service")).json())["desiredState"] == "loaded"
    assert (await client.get("/v1-alpha/state")).status == 200
    assert (await client.get("/v1-alpha/machines")).status == 200
    assert (await client.patch("/v1-alpha/machines", json=[])).status == 204
    assert (await client.get("/v1-alpha/discovery")).status == 200
    assert (await client.delete("/v1-alpha/units/a.service")).status == 204
    await error_of(await client.post("/v1-alpha/units", json={}), 405)


@pytest.mark.parametrize("path", ["/fleet/v1", "/v1-alpha", "/"])
@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "DELETE", "PATCH"])
async def test_bare_prefixes_are_405(client: TestClient, path: str, method: str) -> None:
    response = await client.request(method, path)
    await error_of(response, 405)
    assert response.headers["Allow"] == ""
