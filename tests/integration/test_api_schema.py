"""The OpenAPI description against the live API: schemathesis generates requests for every
operation from ``/fleet/v1/openapi.json`` (valid ones and, in its negative mode, invalid
ones) and checks every answer: no server error, a status the document lists for that
operation, the declared content type, headers and body schema, 405 for methods a path
does not have, and invalid requests refused with a 4xx.

fleetd's API is served on loopback over a real etcd with machines, units, states and
unplaceable reasons registered, so lists have data and names can be found; its node reads
journals and status from fakes (a follow ends after a few lines), so nothing needs systemd.
schemathesis runs as its own process (its CLI), bounded in examples and time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetctl_support import Loop, finite_journal, finite_status

from fleetd.api import Node, TcpListener, make_app, start_api
from fleetd.api.listeners import ApiServer
from fleetd.api.openapi import openapi_document
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.model.update import UpdateParams
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.registry.memory import MemoryRegistry
from fleetd.registry.registry import Registry
from fleetlab.etcd import EtcdCluster

pytestmark = pytest.mark.integration

LOCAL = "a" * 32
OTHER = "b" * 32
# per operation and phase (fuzzing, stateful); the coverage phase adds its own few hundred.
# The document's own route is left out by schemathesis (it is read, not tested); the first
# test here checks it.
MAX_EXAMPLES = int(os.environ.get("FLEET_SCHEMA_EXAMPLES", "50"))
MAX_SECONDS = 150  # for the whole run, which takes about 20 s
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
    ]
)
# negative_data_rejection also takes 413 (a body or list larger than a limit is refused so)
# and 415 (a unit PUT without Content-Type: application/json, as fleet refuses it);
# half the names drawn are the seeded ones, so reads, writes and deletes find something
# launched units a rolling update may start on: each once (no engine runs here to end it)
ROLLABLE_UNITS = [f"roll{i}.service" for i in range(1, 9)]
ROLLABLE = ", ".join(f'"{name}"' for name in ROLLABLE_UNITS)
CONFIG = f"""\
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "409", "413", "415", "429"]

[dictionaries.units]
values = ["hello.service", "web@.service", "web@1.service", "web@2.service", "everywhere.service", "missing.service",
          {ROLLABLE}]

[dictionaries.machines]
values = ["{LOCAL}", "{OTHER}"]

[dictionaries.revisions]
values = [1, 2]

[parameters]
"path.unitName" = {{ dictionary = "units", probability = 0.5 }}
"path.revision" = {{ dictionary = "revisions", probability = 0.5 }}
"query.unitName" = {{ dictionary = "units", probability = 0.5 }}
"path.machineID" = {{ dictionary = "machines", probability = 0.7 }}
"query.machineID" = {{ dictionary = "machines", probability = 0.5 }}

"""

SERVICE = "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sleep infinity\n"
TEMPLATE = "[Service]\nExecStart=/bin/echo %i\n"
GLOBAL = "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n"


async def _seed(registry: Registry) -> None:
    """Machines, units (plain, template, instance, global), placements, states and reasons."""
    lease = await registry.grant_lease(300)
    await registry.register_machine(MachineState(LOCAL, "127.0.0.1", {"role": "web"}), lease)
    await registry.register_machine(MachineState(OTHER, "127.0.0.2", {}), lease)
    units = [  # revision 1 each (kept as a revision too: /units/{name}/revisions/1 answers)
        (StoredUnit("hello.service", parse_unit_file(SERVICE), DesiredState.LAUNCHED, 1), False),
        (StoredUnit("web@.service", parse_unit_file(TEMPLATE), DesiredState.INACTIVE, 1), False),
        (StoredUnit("web@1.service", parse_unit_file(TEMPLATE), DesiredState.LOADED, 1), False),
        (StoredUnit("everywhere.service", parse_unit_file(GLOBAL), DesiredState.LAUNCHED, 1), True),
    ]
    units += [(StoredUnit(name, parse_unit_file(SERVICE), DesiredState.LAUNCHED, 1), False) for name in ROLLABLE_UNITS]
    await registry.create_units(units)
    leadership = await registry.acquire_leadership(LOCAL, lease)
    assert leadership is not None
    placed = [
        (LOCAL, ScheduledUnit("hello.service", parse_unit_file(SERVICE), DesiredState.LAUNCHED)),
        (OTHER, ScheduledUnit("web@1.service", parse_unit_file(TEMPLATE), DesiredState.LOADED)),
    ]
    await registry.apply_schedule(leadership, placed, [], {"stuck.service": "no machine has metadata region=mars"})
    # a rolling update in progress (no engine here: it stays pending), so reading one finds it
    await registry.begin_update("web@.service", parse_unit_file(SERVICE), UpdateParams(), time.time())
    hello_hash = parse_unit_file(SERVICE).hash()
    await registry.publish_states(
        LOCAL, lease, [UnitState("hello.service", LOCAL, hello_hash, "loaded", "active", "running")]
    )


@pytest.fixture
def api(loop: Loop, etcd: EtcdCluster, key_prefix: str) -> Iterator[str]:
    """The base URL of a fleetd API on loopback over a seeded registry."""

    async def start() -> tuple[Registry, ApiServer]:
        registry = connect(EtcdConfig(endpoints=tuple(etcd.endpoints), request_timeout=5), key_prefix)
        await _seed(registry)
        node = Node(LOCAL, journal_source=finite_journal, status_source=finite_status)
        server = await start_api(make_app(registry, node), [TcpListener("127.0.0.1", 0)])
        return registry, server

    registry, server = loop.run(start())
    try:
        yield f"http://127.0.0.1:{server.tcp_port()}"
    finally:
        loop.run(server.close())
        loop.run(registry.close())


def test_the_document_is_served_and_describes_every_route(api: str) -> None:
    with urllib.request.urlopen(f"{api}/fleet/v1/openapi.json", timeout=10) as response:
        served = json.load(response)
    assert served == json.loads(json.dumps(openapi_document()))
    described = {
        (method.upper(), path) for path, item in served["paths"].items() for method in item if method != "parameters"
    }
    app = make_app(MemoryRegistry(), Node(LOCAL))
    routes = {
        (route.method, route.resource.canonical.replace("{name}", "{unitName}").replace("{machine}", "{machineID}"))
        for route in app.router.routes()
        if route.method not in ("HEAD", "*")
        and route.resource is not None
        and not route.resource.canonical.startswith("/v1-alpha")  # the alias, tested in test_api.py
    }
    assert described == routes
    # every operation lists the errors every route can answer, and each response has a body
    for path, item in served["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                assert "401" in operation["responses"], (method, path)
                assert path == "/metrics" or "503" in operation["responses"], (method, path)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(api: str, tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "schemathesis"
    assert executable.exists(), f"{executable} is missing: install the test extras (pip install -e '.[test]')"
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    command = [
        str(executable),
        "run",
        f"{api}/fleet/v1/openapi.json",
        f"--checks={CHECKS}",
        f"--max-examples={MAX_EXAMPLES}",
        "--phases=coverage,fuzzing,stateful",
        "--workers=1",
        "--seed=20260101",
        "--generation-database=none",
        "--request-timeout=10",
        "--no-color",
    ]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=tmp_path,  # where it finds schemathesis.toml
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
    )
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    print(output)
    print(f"schemathesis took {elapsed:.1f} s")
    assert done.returncode == 0, output[-20000:]
    assert "No issues found" in output, output[-20000:]
    assert re.search(r"\b(\d+) generated, \1 passed", output), output[-5000:]
