"""fleetctl writes many units in one request and waits by long-poll, with both drivers, and
still works against a fleetd without either (one request per unit, polling).

A real engine and simulated machines (fleetlab.simcluster) run on a real etcd; fleetd's
API is served in the same loop with a recorder of every request it is sent, so the tests
see what fleetctl asked, not only what it printed. The "older fleetd" is the same API
behind a layer that answers 404 for the batch route (as any unknown path) and serves
``GET /state`` as before the long-poll (``wait``/``index``/``timeout`` ignored, no
``X-Fleet-Index``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from fleetctl_support import Fleet, fleetctl, write_units

from fleetd.api import Node, UnixListener, make_app, start_api
from fleetd.api.errors import error_response
from fleetd.api.listeners import ApiServer
from fleetd.api.state import INDEX_HEADER
from fleetd.registry.etcd_registry import EtcdRegistry
from fleetlab.etcd import EtcdCluster
from fleetlab.simcluster import SimCluster

pytestmark = pytest.mark.integration

TEMPLATE = "[Unit]\nDescription=instance %i\n\n[Service]\nExecStart=/bin/sleep infinity\n"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    """What one API was asked: (method, path, query) per request."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p == path)

    def paths(self, method: str) -> list[str]:
        return [p for m, p, _ in self.requests if m == method]

    def waits(self) -> int:
        return sum(1 for m, p, q in self.requests if m == "GET" and p == "/fleet/v1/state" and q.get("wait"))

    def clear(self) -> None:
        self.requests.clear()


def recorder(recorded: Recorded) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        recorded.requests.append((request.method, request.path, dict(request.query)))
        return await handler(request)

    return record


@web.middleware
async def older_fleetd(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API as it was before the batch route and the long-poll."""
    if request.path.endswith("/units:batch"):
        return error_response(404, f"path {request.path} not found")
    if request.path.endswith("/state"):
        query = {k: v for k, v in request.query.items() if k not in ("wait", "index", "timeout")}
        response = await handler(request.clone(rel_url=request.rel_url.with_query(query)))
        response.headers.popall(INDEX_HEADER, None)
        return response
    return await handler(request)


@dataclass
class Lab:
    fleet: Fleet
    sim: SimCluster
    tmp: Path
    servers: list[ApiServer] = field(default_factory=list)

    def serve(self, *, older: bool = False) -> tuple[dict[str, str], Recorded]:
        """A fleetd API on a unix socket (an older one when ``older``); fleetctl's env for it."""
        recorded = Recorded()
        path = str(self.tmp / f"api-{len(self.servers)}.sock")

        async def start() -> ApiServer:
            app = make_app(self.fleet.registry, Node(sorted(self.sim.machines)[0]))  # type: ignore[arg-type]
            app.middlewares.append(recorder(recorded))
            if older:
                app.middlewares.append(older_fleetd)
            return await start_api(app, [UnixListener(path, mode=0o600)])

        self.servers.append(self.fleet.run(start()))
        return {"FLEETCTL_ENDPOINT": f"unix://{path}"}, recorded


@pytest.fixture
def lab(fleet: Fleet, etcd: EtcdCluster, key_prefix: str, tmp_path: Path) -> Iterator[Lab]:
    sim = SimCluster(tuple(etcd.endpoints), key_prefix)
    lab = Lab(fleet, sim, tmp_path)
    try:
        fleet.run(sim.add_machine())
        fleet.run(sim.add_machine())
        fleet.run(sim.add_engine())
        yield lab
    finally:
        for server in lab.servers:
            fleet.run(server.close())
        fleet.run(sim.close())


def instances(tmp_path: Path, count: int) -> list[str]:
    write_units(tmp_path, {"web@.service": TEMPLATE})
    return [f"web@{i}.service" for i in range(1, count + 1)]


def launched(out: str) -> list[str]:
    return sorted(line.split()[1] for line in out.splitlines() if line.split()[2:3] == ["launched"])


def test_start_of_many_units_is_one_batch_and_waits_by_long_poll(lab: Lab, tmp_path: Path) -> None:
    env, recorded = lab.serve()
    names = instances(tmp_path, 30)
    result = fleetctl("start", *names, env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert launched(result.out) == sorted(names)
    assert recorded.count("POST", "/fleet/v1/units:batch") == 1
    assert recorded.paths("PUT") == []
    # waiting: long-polls, and the units listed only by the plan and the first look
    assert recorded.waits() >= 1
    assert recorded.count("GET", "/fleet/v1/units") <= 3
    recorded.clear()
    result = fleetctl("stop", *names, env=env)
    assert result.code == 0, result.err
    assert recorded.count("POST", "/fleet/v1/units:batch") == 1 and recorded.paths("PUT") == []
    recorded.clear()
    result = fleetctl("destroy", "web@*.service", env=env)
    assert result.code == 0, result.err
    assert sorted(line.split()[1] for line in result.out.splitlines()) == sorted(names)
    assert recorded.count("POST", "/fleet/v1/units:batch") == 1 and recorded.paths("DELETE") == []
    assert lab.sim.placement() == {}


def test_an_older_fleetd_gets_one_request_per_unit_and_is_polled(lab: Lab, tmp_path: Path) -> None:
    env, recorded = lab.serve(older=True)
    names = instances(tmp_path, 12)
    result = fleetctl("start", *names, env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert launched(result.out) == sorted(names)
    assert recorded.count("POST", "/fleet/v1/units:batch") == 1  # tried once: 404
    assert sorted(recorded.paths("PUT")) == sorted(f"/fleet/v1/units/{n}" for n in names)
    assert recorded.waits() == 0  # the first answer had no index: never asked to wait
    recorded.clear()
    result = fleetctl("destroy", *names, env=env)
    assert result.code == 0, result.err
    assert sorted(recorded.paths("DELETE")) == sorted(f"/fleet/v1/units/{n}" for n in names)
    assert lab.sim.placement() == {}


def test_the_etcd_driver_writes_through_submit_many_and_watches(
    lab: Lab, tmp_path: Path, etcd: EtcdCluster, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "FLEETCTL_DRIVER": "etcd",
        "FLEETCTL_ENDPOINT": etcd.endpoints[0],
        "FLEETCTL_ETCD_KEY_PREFIX": key_prefix,
    }
    waits: list[int] = []
    watched = EtcdRegistry.wait_unit_changes

    async def counted(self: EtcdRegistry, after: int) -> int:
        waits.append(after)
        return await watched(self, after)

    async def no_single_writes(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit written or destroyed one at a time")

    monkeypatch.setattr(EtcdRegistry, "wait_unit_changes", counted)
    monkeypatch.setattr(EtcdRegistry, "submit", no_single_writes)
    monkeypatch.setattr(EtcdRegistry, "destroy_unit", no_single_writes)
    names = instances(tmp_path, 20)
    result = fleetctl("start", *names, env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert launched(result.out) == sorted(names)
    assert waits, "waited without watching"
    result = fleetctl("unload", *names, env=env)
    assert result.code == 0, result.err
    assert all(line.split()[2] == "inactive" for line in result.out.splitlines())
    result = fleetctl("destroy", *names, env=env)
    assert result.code == 0, result.err
    assert lab.fleet.units() == {}


def test_a_request_timeout_too_short_to_wait_in_polls(lab: Lab, tmp_path: Path) -> None:
    """A long-poll must end within the request timeout: under 2 s fleetctl polls instead."""
    env, recorded = lab.serve()
    names = instances(tmp_path, 3)
    result = fleetctl("--request-timeout", "1.5", "start", *names, env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert launched(result.out) == sorted(names)
    assert recorded.waits() == 0 and recorded.count("GET", "/fleet/v1/state") >= 1
