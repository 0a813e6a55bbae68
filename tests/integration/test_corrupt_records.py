"""Records fleetd never writes, under every key family the registry reads, on a real etcd.

Each case writes junk where a record should be, then checks that the cluster goes on: the
engine still places a new unit and its agent runs it, every listing of the API answers,
the bad record is shown or skipped (never a 500), and a bad unit can be destroyed.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fleetd.api import Node, make_app
from fleetd.registry.etcd_registry import EtcdRegistry
from fleetd.registry.keys import Keys
from fleetlab.simcluster import SimCluster
from fleetlab.wait import wait_until_async

pytestmark = pytest.mark.integration

SLEEP = "[Service]\nExecStart=/bin/sleep infinity\n"
JUNK = [b"[]", b"junk", b'{"name": 3}', b"\xff\xfe", b"null", b'{"options": "x"}']


def families(keys: Keys, machine_id: str) -> dict[str, list[str]]:
    """Where junk goes, by key family: several keys each, some beside real records."""
    return {
        "units": [keys.unit(f"bad{i}.service") for i in range(len(JUNK))],
        "global": [keys.global_unit(f"badglobal{i}.service") for i in range(len(JUNK))],
        "machines": [keys.machine(f"{i}" * 32) for i in range(len(JUNK))],
        "machine-metadata": [keys.machine_metadata(machine_id)],
        "schedule": [keys.placement(machine_id, f"badplaced{i}.service") for i in range(len(JUNK))],
        "states": [keys.state(f"badstate{i}.service", machine_id) for i in range(len(JUNK))],
        "unplaceable": [keys.unplaceable("x.service")],
    }


@pytest.mark.parametrize(
    "family", ["units", "global", "machines", "machine-metadata", "schedule", "states", "unplaceable"]
)
async def test_junk_under_a_key_family_never_stops_the_cluster(sim: SimCluster, key_prefix: str, family: str) -> None:
    machine = await sim.add_machine()
    await sim.add_engine()
    await sim.submit("before.service", SLEEP)
    await wait_until_async(lambda: sim.where("before.service"), 10, "before.service running")
    registry = sim.registry()
    assert isinstance(registry, EtcdRegistry)
    etcd = registry._etcd
    for index, key in enumerate(families(Keys(key_prefix), machine.id)[family]):
        await etcd.put(key, JUNK[index % len(JUNK)])
    # the cluster goes on: a new unit is placed and runs, the old one keeps running
    await sim.submit("after.service", SLEEP)
    await wait_until_async(lambda: sim.where("after.service") == [machine.id], 10, "after.service running")
    assert sim.where("before.service") == [machine.id]
    # every listing answers
    client = TestClient(TestServer(make_app(registry, Node(machine.id))))
    await client.start_server()
    try:
        for path in ("/fleet/v1/units", "/fleet/v1/state", "/fleet/v1/machines", "/fleet/v1/unplaceable"):
            response = await client.get(path)
            assert response.status == 200, (path, await response.text())
        units = {u["name"]: u for u in (await (await client.get("/fleet/v1/units")).json())["units"]}
        assert {"before.service", "after.service"} <= set(units)
        if family == "units":
            bad = units["bad0.service"]
            assert bad["currentState"] == "unreadable" and "expected a JSON object" in bad["error"]
            response = await client.put(
                "/fleet/v1/units/bad0.service", json={"desiredState": "launched", "options": []}
            )
            assert response.status == 409 and "destroy" in (await response.json())["error"]["message"]
            assert (await client.delete("/fleet/v1/units/bad0.service")).status == 204
            listed = (await (await client.get("/fleet/v1/units")).json())["units"]
            assert "bad0.service" not in {u["name"] for u in listed}
    finally:
        await client.close()
    if family in ("units", "global", "machines", "schedule", "states"):
        seen = [machine.agent.registry, *(e.engine.registry for e in sim.engines), registry]
        assert any(r.bad_record_counts() for r in seen), "the unreadable records were counted"
