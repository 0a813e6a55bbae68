"""fleet v1.0.0's own client against fleetd's API, over a real etcd.

Every request below is sent exactly as fleet v1.0.0's HTTP driver sends it (client/http.go
through the generated schema/v1-gen.go of schema/v1.json): the path under ``/fleet/v1/``,
``?alt=json`` on every call, ``User-Agent: google-api-go-client/0.5``, a PUT body with
``Content-Type: application/json`` and Go's ``omitempty`` fields (no ``desiredState`` on
submit, no ``value`` for an empty option value), and paging by ``nextPageToken`` only. The
answers are checked the way that client reads them: any 2xx is success, an error is
``{"error": {"code", "message"}}`` and a 404 on Units.Get / UnitState.Get means "none".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetd.api import Node, make_app
from fleetd.model.state import MachineState, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.registry import Registry

pytestmark = pytest.mark.integration

BASE = "/fleet/v1/"  # client.NewHTTPClient: path.Join(ep.Path, "fleet", "v1") + "/"
ALT = "alt=json"  # every generated call sets it
HEADERS = {"User-Agent": "google-api-go-client/0.5"}
PUT_HEADERS = {**HEADERS, "Content-Type": "application/json"}
M1 = "1" * 32
M2 = "2" * 32
SERVICE = "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sleep infinity\nExecStartPre=\n"
SERVICE2 = "[Unit]\nDescription=hello again\n\n[Service]\nExecStart=/bin/sleep 1000\n"


def go_options(text: str) -> list[dict[str, str]]:
    """schema.MapUnitFileToSchemaUnitOptions, JSON-encoded with omitempty."""
    return [{k: v for k, v in o.items() if v != ""} for o in parse_unit_file(text).to_options()]


def go_body(**fields: Any) -> bytes:
    """googleapi.WithoutDataWrapper.JSONReader of a schema.Unit: empty fields left out."""
    return json.dumps({k: v for k, v in fields.items() if v not in ("", None, [])}).encode()


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(make_app(registry, Node(M1), token_limit=2)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def go_error(response: Any, code: int) -> str:
    """googleapi.CheckResponse: a non-2xx is an error read from {"error": {...}}."""
    assert response.status == code, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body["error"]["code"] == code
    return str(body["error"]["message"])


async def go_list(client: TestClient, resource: str, field: str) -> list[dict[str, Any]]:
    """HTTPClient.Machines/Units/UnitStates: List, then List with nextPageToken until none."""
    items: list[dict[str, Any]] = []
    query = ALT
    while True:
        response = await client.get(f"{BASE}{resource}?{query}", headers=HEADERS)
        assert response.status == 200, await response.text()
        page = await response.json()
        items.extend(page.get(field) or [])
        token = page.get("nextPageToken") or ""
        if not token:
            return items
        query = f"{ALT}&nextPageToken={quote(token, safe='')}"  # url.Values.Encode: sorted keys


async def test_submit_as_fleetctl_creates_an_inactive_unit(client: TestClient, registry: Registry) -> None:
    # fleetctl submit: cAPI.CreateUnit(&schema.Unit{Name, Options}) -> Units.Set
    body = go_body(name="a.service", options=go_options(SERVICE))
    assert b"desiredState" not in body and b'"value"' in body
    response = await client.put(f"{BASE}units/a.service?{ALT}", data=body, headers=PUT_HEADERS)
    assert response.status == 201, await response.text()
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.desired is DesiredState.INACTIVE
    assert stored.file == parse_unit_file(SERVICE)  # the option sent without "value" kept as empty

    # Units.Get reads it back in schema.Unit's shape
    response = await client.get(f"{BASE}units/a.service?{ALT}", headers=HEADERS)
    assert response.status == 200
    unit = await response.json()
    assert unit["name"] == "a.service" and unit["desiredState"] == "inactive"
    assert unit["currentState"] == "inactive"
    assert {(o["section"], o["name"], o["value"]) for o in unit["options"]} >= {
        ("Service", "ExecStart", "/bin/sleep infinity")
    }


async def test_set_unit_target_state_as_fleetctl(client: TestClient, registry: Registry) -> None:
    await client.put(
        f"{BASE}units/a.service?{ALT}", data=go_body(name="a.service", options=go_options(SERVICE)), headers=PUT_HEADERS
    )
    # load / start / stop / unload: SetUnitTargetState -> {"desiredState", "name"}
    for target in ("loaded", "launched", "loaded", "inactive"):
        body = go_body(name="a.service", desiredState=target)
        response = await client.put(f"{BASE}units/a.service?{ALT}", data=body, headers=PUT_HEADERS)
        assert response.status == 204, await response.text()
        stored = await registry.get_unit("a.service")
        assert stored is not None and stored.desired == target


async def test_a_new_version_of_a_unit_replaces_it_with_201(client: TestClient, registry: Registry) -> None:
    put = f"{BASE}units/a.service?{ALT}"
    await client.put(put, data=go_body(name="a.service", options=go_options(SERVICE)), headers=PUT_HEADERS)
    await client.put(put, data=go_body(name="a.service", desiredState="launched"), headers=PUT_HEADERS)
    # fleet's api/units.go: options whose unit file differs -> create (201), overwriting
    response = await client.put(put, data=go_body(name="a.service", options=go_options(SERVICE2)), headers=PUT_HEADERS)
    assert response.status == 201
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.file == parse_unit_file(SERVICE2)
    # the same options again: no new unit; without a desired state that is fleet's 409
    response = await client.put(put, data=go_body(name="a.service", options=go_options(SERVICE2)), headers=PUT_HEADERS)
    assert "desiredState" in await go_error(response, 409)


async def test_replace_as_fleetctl_makes_the_new_version_inactive_first(client: TestClient, registry: Registry) -> None:
    # fleetctl load/start --replace of a loaded or launched unit: Units.Set with the new
    # options only (no desiredState). fleet stores it as a new unit (desired inactive), its
    # client waits for currentState inactive, then sets the target state it wants.
    put = f"{BASE}units/a.service?{ALT}"
    for target in ("loaded", "launched"):
        await client.put(put, data=go_body(name="a.service", options=go_options(SERVICE)), headers=PUT_HEADERS)
        await client.put(put, data=go_body(name="a.service", desiredState=target), headers=PUT_HEADERS)
        body = go_body(name="a.service", options=go_options(SERVICE2))
        assert b"desiredState" not in body
        assert (await client.put(put, data=body, headers=PUT_HEADERS)).status == 201
        stored = await registry.get_unit("a.service")
        assert stored is not None and stored.file == parse_unit_file(SERVICE2)
        assert stored.desired is DesiredState.INACTIVE
        unit = await (await client.get(put, headers=HEADERS)).json()
        assert (unit["desiredState"], unit["currentState"]) == ("inactive", "inactive")
        response = await client.put(put, data=go_body(name="a.service", desiredState=target), headers=PUT_HEADERS)
        assert response.status == 204
        stored = await registry.get_unit("a.service")
        assert stored is not None and stored.desired == target
        assert (await client.delete(put, headers=HEADERS)).status == 204


async def test_a_value_continued_over_lines_as_fleetctl_reads_it(client: TestClient, registry: Registry) -> None:
    # a unit file with "ExecStart=/bin/sh -c \\" and an indented next line: fleet's client
    # (go-systemd's parser) sends the value with the lines as written, backslash-newline
    # between them. fleetd stores it as its own parser reads that file.
    text = "[Service]\nExecStart=/bin/sh -c \\\n    'sleep 1000'\n"
    continued = [
        {"section": "Service", "name": "ExecStart", "value": "/bin/sh -c \\\n    'sleep 1000'"},
    ]
    put = f"{BASE}units/a.service?{ALT}"
    response = await client.put(put, data=go_body(name="a.service", options=continued), headers=PUT_HEADERS)
    assert response.status == 201, await response.text()
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.file == parse_unit_file(text)
    assert stored.file.to_options()[0]["value"] == "/bin/sh -c 'sleep 1000'"
    # start --replace of the same file: fleet's client sees the stored unit differ from its
    # file and sends it again as a new version; it then waits for inactive, then starts it
    await client.put(put, data=go_body(name="a.service", desiredState="launched"), headers=PUT_HEADERS)
    response = await client.put(put, data=go_body(name="a.service", options=continued), headers=PUT_HEADERS)
    assert response.status in (201, 204), await response.text()
    stored = await registry.get_unit("a.service")
    assert stored is not None and stored.desired is DesiredState.INACTIVE and stored.file == parse_unit_file(text)
    # a line break without a continuation is still refused
    broken = [{"section": "Service", "name": "ExecStart", "value": "/bin/true\nUser=root"}]
    response = await client.put(
        f"{BASE}units/b.service?{ALT}", data=go_body(name="b.service", options=broken), headers=PUT_HEADERS
    )
    assert "line break" in await go_error(response, 400)


async def test_unknown_unit_without_options_is_409(client: TestClient) -> None:
    body = go_body(name="nope.service", desiredState="launched")
    response = await client.put(f"{BASE}units/nope.service?{ALT}", data=body, headers=PUT_HEADERS)
    assert (await go_error(response, 409)).startswith("unit does not exist and options field empty")


async def test_put_without_json_content_type_is_415(client: TestClient) -> None:
    body = go_body(name="a.service", options=go_options(SERVICE))
    response = await client.put(
        f"{BASE}units/a.service?{ALT}", data=body, headers={**HEADERS, "Content-Type": "text/plain"}
    )
    assert await go_error(response, 415) == "only acceptable Content-Type is application/json"


async def test_get_and_destroy_as_fleetctl(client: TestClient, registry: Registry) -> None:
    # HTTPClient.Unit: a 404 is "no such unit", not an error
    await go_error(await client.get(f"{BASE}units/a.service?{ALT}", headers=HEADERS), 404)
    await client.put(
        f"{BASE}units/a.service?{ALT}", data=go_body(name="a.service", options=go_options(SERVICE)), headers=PUT_HEADERS
    )
    response = await client.delete(f"{BASE}units/a.service?{ALT}", headers=HEADERS)
    assert response.status == 204
    assert await registry.get_unit("a.service") is None
    await go_error(await client.delete(f"{BASE}units/a.service?{ALT}", headers=HEADERS), 404)


async def test_list_units_pages_with_next_page_token(client: TestClient) -> None:
    for index in range(5):
        name = f"u{index}.service"
        body = go_body(name=name, options=go_options(SERVICE))
        assert (await client.put(f"{BASE}units/{name}?{ALT}", data=body, headers=PUT_HEADERS)).status == 201
    units = await go_list(client, "units", "units")  # token_limit 2: three pages
    assert [u["name"] for u in units] == [f"u{i}.service" for i in range(5)]


async def test_list_machines_pages_and_shows_patched_metadata(client: TestClient, registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    for machine in (M1, M2, "3" * 32):
        await registry.register_machine(MachineState(machine, "10.0.0.1", {"zone": "a"}), lease)
    response = await client.patch(
        f"{BASE}machines", json=[{"op": "add", "path": f"/{M2}/metadata/role", "value": {"value": "db"}}]
    )
    assert response.status == 204
    machines = await go_list(client, "machines", "machines")
    assert [m["id"] for m in machines] == [M1, M2, "3" * 32]
    assert machines[1] == {"id": M2, "primaryIP": "10.0.0.1", "metadata": {"zone": "a", "role": "db"}}


async def test_patch_machines_as_fleets_functional_tests_send_it(client: TestClient, registry: Registry) -> None:
    # fleet's functional tests (machines_test.go) PATCH with net/http directly, no
    # Content-Type, and marshal a struct whose Value field has no json tag: the key is
    # "Value". fleet's API decodes it with encoding/json, where keys match in any case.
    lease = await registry.grant_lease(30)
    for machine in (M1, M2):
        await registry.register_machine(MachineState(machine, "10.0.0.1", {"hostname": machine[:4]}), lease)

    async def patch(ops: list[dict[str, Any]]) -> Any:
        return await client.patch(f"{BASE}machines", data=json.dumps(ops).encode())

    response = await patch(
        [
            {"op": "add", "path": f"/{M1}/metadata/foo", "Value": {"value": "bar"}},
            {"op": "replace", "path": f"/{M2}/metadata/ping", "Value": {"value": "splat"}},
        ]
    )
    assert response.status == 204, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")  # checked by those tests
    machines = await go_list(client, "machines", "machines")
    assert [m["metadata"] for m in machines] == [
        {"hostname": "1111", "foo": "bar"},
        {"hostname": "2222", "ping": "splat"},
    ]
    response = await patch(
        [
            {"op": "remove", "path": f"/{M1}/metadata/foo", "Value": {"value": ""}},
            {"OP": "Remove", "path": f"/{M2}/metadata/ping"},  # an op is matched exactly
        ]
    )
    assert "invalid op" in await go_error(response, 400)
    response = await patch(
        [
            {"op": "remove", "path": f"/{M1}/metadata/foo", "Value": {"value": ""}},
            {"OP": "remove", "PATH": f"/{M2}/metadata/ping", "value": {"VALUE": ""}},
        ]
    )
    assert response.status == 204, await response.text()
    machines = await go_list(client, "machines", "machines")
    assert [m["metadata"] for m in machines] == [{"hostname": "1111"}, {"hostname": "2222"}]
    # the bad requests of TestMachinesPatchBad: 400 in fleet's error shape
    for op in (
        {"op": "noop", "path": f"/{M1}/metadata/foo", "Value": {"value": "bar"}},
        {"op": "add", "path": f"/{M1}/foo", "Value": {"value": "bar"}},
        {"op": "add", "path": f"/{M1}/metadata/foo", "Value": {"value": ""}},
    ):
        await go_error(await patch([op]), 400)


async def test_unit_states_list_filter_and_get(client: TestClient, registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    await registry.publish_states(
        M1,
        lease,
        [
            UnitState("a.service", M1, "1" * 40, "loaded", "active", "running"),
            UnitState("b.service", M1, "2" * 40, "loaded", "inactive", "dead"),
        ],
    )
    await registry.publish_states(M2, lease, [UnitState("a.service", M2, "1" * 40, "loaded", "failed", "failed")])
    # HTTPClient.UnitStates: every page, by nextPageToken
    states = await go_list(client, "state", "states")
    assert [(s["name"], s["machineID"]) for s in states] == [("a.service", M1), ("a.service", M2), ("b.service", M1)]
    assert set(states[0]) == {"name", "hash", "machineID", "systemdLoadState", "systemdActiveState", "systemdSubState"}
    # UnitState.List with unitName (schema/v1.json): filtered, then paged
    response = await client.get(f"{BASE}state?{ALT}&unitName=a.service", headers=HEADERS)
    page = await response.json()
    assert [(s["name"], s["machineID"]) for s in page["states"]] == [("a.service", M1), ("a.service", M2)]
    # HTTPClient.UnitState (fleetctl start --block-attempts): one state of the unit
    response = await client.get(f"{BASE}state/a.service?{ALT}", headers=HEADERS)
    assert response.status == 200
    one = await response.json()
    assert (one["machineID"], one["systemdActiveState"], one["systemdLoadState"]) == (M1, "active", "loaded")
    await go_error(await client.get(f"{BASE}state/none.service?{ALT}", headers=HEADERS), 404)


async def test_old_prefix_and_bare_prefixes(client: TestClient) -> None:
    assert (await client.get(f"/v1-alpha/units?{ALT}", headers=HEADERS)).status == 200
    assert (await client.get(f"/v1-alpha/state/none.service?{ALT}", headers=HEADERS)).status == 404
    for prefix in ("/fleet/v1", "/v1-alpha"):
        await go_error(await client.get(prefix, headers=HEADERS), 405)
