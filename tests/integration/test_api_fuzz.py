"""Property-based fuzzing of the live API (fleetd's aiohttp app on loopback over a real etcd).

Hypothesis generates what clients could send: unit bodies (options with any sections, names
and values: unicode, lone surrogates, control characters, huge values), unit names,
desiredState values, batches of units (POST /units:batch, also as raw bodies), PATCH
/machines documents, raw bodies and query parameters (the long-poll's among them).
Whatever is sent, these hold:

- no answer is a 5xx, and every 4xx is fleet's error shape with its own status as code;
- a refused request (4xx) stored nothing: the units and the machines' metadata are as
  they were before it; a batch is refused or done whole, as its answer says per unit;
- what was accepted can be read back (GET /units and the unit itself answer 200);
- after each batch the cluster still places and starts a new unit: a real engine and two
  simulated machines run on the same registry the whole time, so every fuzzed unit the
  API accepts is also planned by the engine and acted on by the agents.

Bounded: about 150 examples per property, well under a minute in all. Examples are drawn
from a fixed seed unless FLEET_FUZZ_RANDOM=1 (then each run explores new ones).
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from fleetctl_support import Loop, finite_journal, finite_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from fleetd.api import Node, TcpListener, make_app, start_api
from fleetd.api.listeners import ApiServer
from fleetd.model.journal import JOURNAL_OUTPUTS
from fleetd.model.limits import MAX_REQUEST_BYTES, MAX_UNIT_BYTES
from fleetd.model.state import StoredUnit
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.registry.registry import Registry
from fleetd.settings import Settings
from fleetlab.etcd import EtcdCluster
from fleetlab.simcluster import SimCluster
from fleetlab.wait import wait_until_async

pytestmark = pytest.mark.integration

LOCAL = "a" * 32
OTHER = "b" * 32
UNKNOWN = "c" * 32
MACHINES = (LOCAL, OTHER)
EXAMPLES = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "150"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FLEET_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the live API -----------------------------------------------------------------------------------


@dataclass
class Live:
    """fleetd's API served on loopback, the registry behind it and a client session; every
    call runs on the background loop."""

    loop: Loop
    registry: Registry
    sim: SimCluster
    server: ApiServer
    session: aiohttp.ClientSession
    base: str
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)  # (method, status) -> count

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """``path`` is already percent-encoded; query values are encoded here."""
        url = self.base + path
        if query:
            url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())

        async def call() -> tuple[int, bytes]:
            headers = {"Content-Type": "application/json"} if body is not None else None  # as fleet's client
            async with self.session.request(method, URL(url, encoded=True), data=body, headers=headers) as response:
                return response.status, await response.read()

        status, answer = self.loop.run(call(), timeout=30)
        self.answers[(method, status)] += 1
        return status, answer

    def units(self) -> list[StoredUnit]:
        return self.loop.run(self.registry.units())

    def metadata(self) -> dict[str, dict[str, str]]:
        return {m: self.loop.run(self.registry.dynamic_metadata(m)) for m in MACHINES}


@pytest.fixture(scope="module")
def live(loop: Loop, etcd: EtcdCluster) -> Iterator[Live]:
    prefix = f"/fuzz-{uuid.uuid4().hex[:12]}/"

    async def start() -> Live:
        registry = connect(EtcdConfig(endpoints=tuple(etcd.endpoints), request_timeout=5), prefix)
        settings = Settings(agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.5, debounce=0.01)
        sim = SimCluster(tuple(etcd.endpoints), prefix, settings)
        for machine in MACHINES:
            await sim.add_machine(machine_id=machine)
        await sim.add_engine()
        node = Node(LOCAL, journal_source=finite_journal, status_source=finite_status)
        server = await start_api(make_app(registry, node), [TcpListener("127.0.0.1", 0)])
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        return Live(loop, registry, sim, server, session, f"http://127.0.0.1:{server.tcp_port()}")

    api = loop.run(start())
    try:
        yield api
    finally:

        async def stop() -> None:
            await api.session.close()
            await api.server.close()
            await api.sim.close()
            await api.registry.close()

        loop.run(stop())


def check_answer(status: int, body: bytes) -> None:
    """No 5xx; a 4xx is fleet's error shape with its status as code."""
    assert status < 500, (status, body[:500])
    if status >= 400:
        error = json.loads(body)["error"]
        assert error["code"] == status and isinstance(error["message"], str) and error["message"]


def still_works(live: Live) -> None:
    """A new valid unit can be created and read back, the engine places it and a machine
    starts it, and every list still answers."""
    name = f"probe-{uuid.uuid4().hex[:8]}.service"
    options = parse_unit_file("[Service]\nExecStart=/bin/true\n").to_options()
    status, body = live.request(
        "PUT", f"/fleet/v1/units/{name}", body=_json({"desiredState": "launched", "options": options})
    )
    assert status == 201, body
    status, body = live.request("GET", f"/fleet/v1/units/{name}")
    assert status == 200 and json.loads(body)["options"] == options
    live.loop.run(wait_until_async(lambda: live.sim.where(name), 20, f"{name} placed and started"), timeout=30)
    for path in ("/fleet/v1/units", "/fleet/v1/state", "/fleet/v1/machines", "/fleet/v1/unplaceable"):
        status, body = live.request("GET", path, {"pageSize": "10000"})
        assert status == 200, (path, body[:500])
    assert live.request("DELETE", f"/fleet/v1/units/{name}")[0] == 204


def _json(document: Any) -> bytes:
    """JSON as a client would send it; lone surrogates travel as \\u escapes."""
    return json.dumps(document).encode()


def _path_segment(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


# -- strategies -------------------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # every code point, lone surrogates included
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
URL_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # what a URL can carry
SUFFIXES = ["service", "socket", "timer", "path", "target", "mount", "device", "bogus", ""]

valid_names = st.builds(
    lambda stem, instance, suffix: f"{stem}{'@' + instance if instance is not None else ''}.{suffix}",
    st.from_regex(r"[A-Za-z0-9:_.-]{1,20}", fullmatch=True),
    st.none() | st.from_regex(r"[A-Za-z0-9:_.-]{0,8}", fullmatch=True),
    st.sampled_from(SUFFIXES),
)
unit_names = st.one_of(
    valid_names, URL_TEXT.filter(bool), st.sampled_from(["hello.service", "web@.service", "web@1.service"])
)

huge_values = st.integers(MAX_UNIT_BYTES - 100, MAX_UNIT_BYTES + 100).map(lambda n: "x" * n)
sections = st.one_of(st.sampled_from(["Unit", "Service", "X-Fleet", "Install", " Unit", "Un]it", ""]), ANY_TEXT)
option_names = st.one_of(
    st.sampled_from(
        ["ExecStart", "Description", "Global", "MachineMetadata", "Conflicts", "MachineOf", "MachineID", "Replaces"]
    ),
    ANY_TEXT,
)
values = st.one_of(ANY_TEXT, st.sampled_from(["true", "%i", "%n", "web@*.service", "region=us"]), huge_values)
options = st.fixed_dictionaries({"section": sections, "name": option_names, "value": values})
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT
any_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=10,
)
desired_states = st.one_of(st.sampled_from(["inactive", "loaded", "launched"]), any_json)

# options a unit could really have, with any text a line can hold as their value
plausible_options = st.fixed_dictionaries(
    {
        "section": st.sampled_from(["Unit", "Service", "X-Fleet", "Install"]),
        "name": st.sampled_from(["ExecStart", "Description", "Global", "MachineMetadata", "Conflicts", "MachineOf"])
        | st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,12}", fullmatch=True),
        # one option in about 20 is near or over the size limit
        "value": st.integers(0, 19).flatmap(
            lambda n: (
                huge_values
                if n == 0
                else st.sampled_from(["true", "false", "%i", "%n", "web@*.service", "region=us", "yes"])
                if n < 5
                else st.text(st.characters(exclude_categories=(), exclude_characters="\r\n"), max_size=60)
            )
        ),
    }
)
plausible_bodies = st.fixed_dictionaries(
    {
        "desiredState": st.sampled_from(["inactive", "loaded", "launched"]),
        "options": st.lists(plausible_options, min_size=1, max_size=6),
    }
)

unit_bodies = st.one_of(
    plausible_bodies,
    plausible_bodies,
    st.fixed_dictionaries(
        {"desiredState": desired_states},
        optional={
            "options": st.one_of(st.lists(options, max_size=6), any_json),
            "name": st.one_of(unit_names, any_json),
            "currentState": any_json,
        },
    ),
    any_json,
)


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bodies no JSON encoder would write: bytes, deep nesting, over the size limit."""
    kind = draw(st.sampled_from(["bytes", "deep", "huge", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(20, 5000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    if kind == "huge":
        return b'{"desiredState": "loaded", "options": [], "x": "' + b"y" * MAX_REQUEST_BYTES + b'"}'
    return _json(draw(unit_bodies))[: draw(st.integers(0, 50))]


# -- properties --------------------------------------------------------------------------------------


def _refused_changes_nothing(
    live: Live, method: str, path: str, query: dict[str, str] | None, body: bytes | None
) -> None:
    before, metadata = live.units(), live.metadata()
    status, answer = live.request(method, path, query, body)
    check_answer(status, answer)
    if status >= 400:
        assert live.units() == before, (method, path, status, answer[:300])
        assert live.metadata() == metadata
    elif method == "PUT":
        read_status, read = live.request("GET", path)
        assert read_status == 200, read[:500]


def test_put_units(live: Live) -> None:
    replaces = st.sampled_from([None, None, None, "true", "false", "²", "1"]) | URL_TEXT

    fresh = itertools.count()

    @FUZZ
    @given(fresh_name=st.sampled_from([True, True, False]), name=unit_names, body=unit_bodies, replace=replaces)
    def put(fresh_name: bool, name: str, body: Any, replace: str | None) -> None:
        if fresh_name:  # a name not used yet, so the body itself decides
            name = f"fuzz{next(fresh)}.service"
        query = None if replace is None else {"replace": replace}
        _refused_changes_nothing(live, "PUT", f"/fleet/v1/units/{_path_segment(name)}", query, _json(body))

    put()
    still_works(live)


def test_put_raw_bodies(live: Live) -> None:
    @FUZZ
    @given(name=unit_names, body=raw_bodies())
    def put(name: str, body: bytes) -> None:
        _refused_changes_nothing(live, "PUT", f"/fleet/v1/units/{_path_segment(name)}", None, body)

    put()
    still_works(live)


def test_unit_names_on_every_unit_route(live: Live) -> None:
    @FUZZ
    @given(name=unit_names, method=st.sampled_from(["GET", "DELETE"]))
    def call(name: str, method: str) -> None:
        path = f"/fleet/v1/units/{_path_segment(name)}"
        if method == "DELETE":
            _refused_changes_nothing(live, method, path, None, None)
        else:
            check_answer(*live.request(method, path))

    call()
    still_works(live)


metadata_paths = st.one_of(
    st.builds(
        lambda machine, key: f"/{machine}/metadata/{key}",
        st.sampled_from([LOCAL, OTHER, UNKNOWN, "", "x/y"]) | ANY_TEXT,
        st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True) | ANY_TEXT,
    ),
    ANY_TEXT,
    any_json,
)
metadata_values = st.one_of(
    st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    ANY_TEXT,
    st.fixed_dictionaries({"value": ANY_TEXT | st.just("ok")}),
    any_json,
)
patch_operations = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "replace", "remove"]) | any_json, "path": metadata_paths},
    optional={"value": metadata_values},
)
plausible_operations = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["add", "replace", "remove"]),
        "path": st.builds(
            lambda machine, key: f"/{machine}/metadata/{key}",
            st.sampled_from([LOCAL, OTHER, LOCAL, OTHER, UNKNOWN]),
            st.sampled_from(["role", "region", "disk"]),
        ),
        "value": st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True) | st.fixed_dictionaries({"value": st.just("ssd")}),
    }
)
patch_documents = st.one_of(
    st.lists(plausible_operations, max_size=6),
    st.lists(plausible_operations | patch_operations, max_size=6),
    any_json,
)


def test_patch_machines(live: Live) -> None:
    @FUZZ
    @given(document=patch_documents)
    def patch(document: Any) -> None:
        _refused_changes_nothing(live, "PATCH", "/fleet/v1/machines", None, _json(document))

    patch()
    still_works(live)


batch_entries = st.one_of(
    st.builds(lambda name, body: {**body, "name": name} if isinstance(body, dict) else body, unit_names, unit_bodies),
    st.builds(lambda name, body: {**body, "name": name}, unit_names, plausible_bodies),
    any_json,
)
batch_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "units": st.lists(batch_entries, max_size=6) | any_json,
            "destroy": st.lists(unit_names | st.sampled_from(["hello.service", "web@1.service"]), max_size=4)
            | any_json,
            "replace": st.booleans() | any_json,
        },
    ),
    any_json,
)


def _batch_all_or_nothing(live: Live, body: bytes) -> None:
    """A refused batch stored nothing; an accepted one did what it says for every unit."""
    before = {u.name: u for u in live.units()}
    status, answer = live.request("POST", "/fleet/v1/units:batch", None, body)
    check_answer(status, answer)
    after = {u.name: u for u in live.units()}
    if status >= 400:
        assert after == before, (status, answer[:300])
        return
    for entry in json.loads(answer)["units"]:
        if entry["result"] in ("destroyed", "absent"):
            assert entry["name"] not in after, entry
        else:
            assert entry["name"] in after, entry
            read_status, read = live.request("GET", f"/fleet/v1/units/{_path_segment(entry['name'])}")
            assert read_status == 200, read[:500]


def test_post_batches(live: Live) -> None:
    fresh = itertools.count()

    @FUZZ
    @given(body=batch_bodies, fresh_names=st.sampled_from([True, True, False]))
    def post(body: Any, fresh_names: bool) -> None:
        if fresh_names and isinstance(body, dict) and isinstance(body.get("units"), list):
            # names not used yet, so each body itself decides (a few repeat on purpose)
            body["units"] = [
                {**entry, "name": f"fuzzb{next(fresh) // 2}.service"}
                if isinstance(entry, dict) and isinstance(entry.get("name"), str)
                else entry
                for entry in body["units"]
            ]
        _batch_all_or_nothing(live, _json(body))

    post()
    still_works(live)


def test_post_raw_batches(live: Live) -> None:
    @FUZZ
    @given(body=raw_bodies())
    def post(body: bytes) -> None:
        _batch_all_or_nothing(live, body)

    post()
    still_works(live)


QUERY_VALUES = st.one_of(
    URL_TEXT,
    st.sampled_from(["0", "1", "-1", "10000", "10001", "²", "١٢", "9" * 30, "true", "yes", "", " 5", "+5", "1e3"]),
    st.integers(-(10**20), 10**20).map(str),
)
list_paths = st.sampled_from(["/fleet/v1/units", "/fleet/v1/state", "/fleet/v1/machines", "/fleet/v1/unplaceable"])
list_queries = st.dictionaries(
    st.sampled_from(["pageSize", "nextPageToken", "unitName", "machineID", "x"]), QUERY_VALUES, max_size=4
)


def test_list_queries(live: Live) -> None:
    @FUZZ
    @given(path=list_paths, query=list_queries)
    def get(path: str, query: dict[str, str]) -> None:
        check_answer(*live.request("GET", path, query))

    get()
    still_works(live)


def test_state_long_polls(live: Live) -> None:
    """Hostile wait/index/timeout values: never a 5xx, and a valid wait is over within its
    timeout (drawn at 1 s here so the property stays fast)."""
    waits = st.dictionaries(
        st.sampled_from(["wait", "index", "timeout", "unitName", "machineID", "pageSize"]),
        st.one_of(QUERY_VALUES, st.sampled_from(["true", "1", "0", "5", "6", "-1", "99999999999999999999"])),
        max_size=5,
    ).map(lambda query: {**query, "timeout": "1"} if query.get("timeout") in ("5", "4", "3", "2") else query)

    @FUZZ
    @given(query=waits)
    def get(query: dict[str, str]) -> None:
        check_answer(*live.request("GET", "/fleet/v1/state", query))

    get()
    still_works(live)


def test_journal_and_status(live: Live) -> None:
    journal_queries = st.dictionaries(
        st.sampled_from(["lines", "follow", "output"]),
        st.one_of(QUERY_VALUES, st.sampled_from(JOURNAL_OUTPUTS)),
        max_size=3,
    )

    @FUZZ
    @given(
        machine=st.sampled_from([LOCAL, OTHER, UNKNOWN]) | URL_TEXT.filter(bool),
        unit=unit_names,
        kind=st.sampled_from(["journal", "status"]),
        query=journal_queries,
    )
    def get(machine: str, unit: str, kind: str, query: dict[str, str]) -> None:
        path = f"/fleet/v1/machines/{_path_segment(machine)}/{kind}/{_path_segment(unit)}"
        check_answer(*live.request("GET", path, query))

    get()
    still_works(live)


def test_every_stored_unit_reads_back(live: Live) -> None:
    """Runs after the properties above (file order): what they stored is still readable."""
    for unit in live.units():
        status, body = live.request("GET", f"/fleet/v1/units/{_path_segment(unit.name)}")
        assert status == 200, body[:500]
    still_works(live)
    print("answers (method, status): count:", dict(sorted(live.answers.items())))
