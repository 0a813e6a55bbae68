"""fleetctl against fleetd's real API (served in-process) over a real etcd.

No engine or agents here: placements, unit states and unplaceable reasons are written
straight into the registry, so every output can be pinned exactly. Blocking against a
running engine and agents is in test_fleetctl_blocking.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fleetctl_support import (
    ROOT,
    TOKEN,
    Fleet,
    canonical,
    fleetctl,
    fleetctl_process,
    state,
    write_units,
)

from fleetd.model.state import ScheduledUnit
from fleetd.model.unit import DesiredState
from fleetlab.etcd import EtcdCluster

pytestmark = pytest.mark.integration

M1 = "113f16a7" + "0" * 24
M2 = "22aa33bb" + "1" * 24
HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep infinity\n"
HELLO2 = "[Unit]\nDescription=Hello again\n\n[Service]\nExecStart=/bin/sleep 1000\n"
GLOBAL = "[Unit]\nDescription=everywhere\n\n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n"
TEMPLATE = "[Unit]\nDescription=web %i\n\n[Service]\nExecStart=/bin/echo %i\n\n[X-Fleet]\nConflicts=web@*.service\n"


def env_for(target: str) -> dict[str, str]:
    return {"FLEETCTL_ENDPOINT": target}


@pytest.fixture
def api(fleet: Fleet):  # type: ignore[no-untyped-def]
    return fleet.add_api(M1)


@pytest.fixture
def env(api) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return env_for(api.unix)


# -- list commands --------------------------------------------------------------------------


def test_list_commands_print_fleets_tables(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    fleet.add_machine(M1, "172.17.8.103", {"az": "us-west-1b", "disk": "ssd"})
    fleet.add_machine(M2, "172.17.8.104")
    write_units(tmp_path, {"hello.service": HELLO, "global.service": GLOBAL, "idle.service": HELLO2})
    assert fleetctl("submit", "hello.service", "global.service", "idle.service", env=env, cwd=tmp_path).code == 0
    units = fleet.units()
    hello_hash = units["hello.service"].hash
    fleet.place(M1, "hello.service")
    assert fleet.registry is not None
    fleet.run(fleet.registry.set_desired_state("hello.service", DesiredState.LAUNCHED))
    fleet.publish(
        state("hello.service", M1, hash_=hello_hash),
        state("global.service", M2, active="inactive", sub="dead", hash_=units["global.service"].hash),
        state("global.service", M1, hash_=units["global.service"].hash),
    )

    result = fleetctl("list-machines", env=env)
    assert result.code == 0, result.err
    assert result.out == (
        "MACHINE\t\tIP\t\tMETADATA\n113f16a7...\t172.17.8.103\taz=us-west-1b,disk=ssd\n22aa33bb...\t172.17.8.104\t-\n"
    )
    result = fleetctl("list-units", env=env)
    assert result.out == (
        "UNIT\t\tMACHINE\t\t\t\tACTIVE\t\tSUB\n"
        "global.service\t113f16a7.../172.17.8.103\tactive\t\trunning\n"
        "global.service\t22aa33bb.../172.17.8.104\tinactive\tdead\n"
        "hello.service\t113f16a7.../172.17.8.103\tactive\t\trunning\n"
    )
    result = fleetctl("list-units", "--full", "--no-legend", "--fields=unit,hash,machine", env=env)
    assert result.out.splitlines()[2] == f"hello.service\t{hello_hash}\t{M1}/172.17.8.103"
    result = fleetctl("list-unit-files", env=env)
    assert result.out == (
        "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n"
        f"global.service\t{units['global.service'].hash[:7]}\tinactive\t-\t\tglobal\n"
        f"hello.service\t{hello_hash[:7]}\tlaunched\tlaunched\t113f16a7.../172.17.8.103\n"
        f"idle.service\t{units['idle.service'].hash[:7]}\tinactive\tinactive\t-\n"
    )
    result = fleetctl("list-unit-files", "-l", "--fields", "unit,global,desc", env=env)
    assert result.out == (
        "UNIT\t\tGLOBAL\tDESC\n"
        "global.service\ttrue\teverywhere\n"
        "hello.service\tfalse\tHello World\n"
        "idle.service\tfalse\tHello again\n"
    )
    # fleet's deprecated "tmachine" is "target", with fleet's warning; fleet's --driver=API spelling
    result = fleetctl("--driver=API", "list-unit-files", "--fields", "unit,dstate,state,tmachine", env=env)
    assert result.code == 0
    assert result.err == 'WARNING: The "tmachine" field is deprecated. Use "target" instead\n'
    assert result.out.splitlines()[:3] == [
        "UNIT\t\tDSTATE\t\tSTATE\t\tTMACHINE",
        "global.service\tinactive\t-\t\tglobal",
        "hello.service\tlaunched\tlaunched\t113f16a7.../172.17.8.103",
    ]
    machines = json.loads(fleetctl("list-machines", "-o", "json", env=env).out)
    assert machines[0] == {"machine": M1, "ip": "172.17.8.103", "metadata": {"az": "us-west-1b", "disk": "ssd"}}
    states = json.loads(fleetctl("list-units", "--output=json", "--fields=unit,machine,active", env=env).out)
    assert states[-1] == {"unit": "hello.service", "machine": M1, "active": "active"}
    files = json.loads(fleetctl("list-unit-files", "--output", "json", env=env).out)
    assert [f["unit"] for f in files] == ["global.service", "hello.service", "idle.service"]
    assert files[1] == {
        "unit": "hello.service",
        "hash": hello_hash,
        "dstate": "launched",
        "state": "launched",
        "target": M1,
        "global": False,
        "desc": "Hello World",
    }


def test_list_unit_files_is_sorted_and_pages_through_many_units(
    fleet: Fleet, env: dict[str, str], tmp_path: Path
) -> None:
    names = [f"u{i:03d}.service" for i in range(230, -1, -1)]
    write_units(tmp_path, dict.fromkeys(names, HELLO))
    result = fleetctl("submit", *names, env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == len(names)
    listed = fleetctl("list-unit-files", "--no-legend", "--fields=unit", env=env).out.split()
    assert listed == sorted(names)


def test_bad_fields_are_usage_errors(env: dict[str, str]) -> None:
    result = fleetctl("list-units", "--fields=unit,bogus", env=env)
    assert result.code == 2
    assert 'invalid field "bogus"' in result.err and "unit,load,active,sub,machine,hash" in result.err
    assert fleetctl("list-machines", "--fields=", env=env).code == 2


# -- submit / destroy / cat / templates -----------------------------------------------------------


def test_submit_and_destroy_nine_template_instances_twice(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    write_units(tmp_path, {"web@.service": TEMPLATE})
    instances = [f"web@{i}.service" for i in range(1, 10)]
    for _ in range(2):
        result = fleetctl("submit", *instances, env=env, cwd=tmp_path)
        assert result.code == 0, result.err
        assert result.out.splitlines() == [f"Unit {n} inactive" for n in instances]
        stored = fleet.units()
        assert sorted(stored) == instances
        assert stored["web@3.service"].file == fleet.units()["web@3.service"].file
        assert fleetctl("cat", "web@3", env=env).out == canonical(TEMPLATE)
        result = fleetctl("destroy", "web@*", env=env)
        assert result.code == 0, result.err
        assert result.out.splitlines() == [f"Destroyed {n}" for n in instances]
        assert fleet.units() == {}


def test_instance_from_the_registered_template(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    write_units(tmp_path, {"web@.service": TEMPLATE})
    assert fleetctl("submit", "web@.service", env=env, cwd=tmp_path).code == 0
    other = tmp_path / "elsewhere"
    other.mkdir()
    result = fleetctl("submit", "web@7", env=env, cwd=other)  # no local template: the registered one
    assert result.code == 0, result.err
    assert result.out == "Unit web@7.service inactive\n"
    assert fleet.units()["web@7.service"].file == fleet.units()["web@.service"].file
    result = fleetctl("submit", "nothing@1.service", env=env, cwd=other)
    assert result.code == 1
    assert "nothing@.service" in result.err and "template" in result.err


def test_templates_can_be_submitted_but_not_activated(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    write_units(tmp_path, {"web@.service": TEMPLATE})
    for command in ("load", "start"):
        result = fleetctl(command, "--no-block", "web@.service", env=env, cwd=tmp_path)
        assert result.code == 1
        assert "cannot activate template web@.service" in result.err
    assert fleet.units() == {}
    assert fleetctl("submit", "web@.service", env=env, cwd=tmp_path).code == 0
    assert list(fleet.units()) == ["web@.service"]


def test_cat_prints_the_stored_file(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    write_units(tmp_path, {"hello.service": HELLO})
    assert fleetctl("submit", "hello", env=env, cwd=tmp_path).code == 0
    result = fleetctl("cat", "hello.service", env=env)
    assert (result.code, result.out) == (0, HELLO)
    result = fleetctl("cat", "nope.service", env=env)
    assert result.code == 1 and "nope.service not found" in result.err


def test_submit_paths_globs_and_mangling(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    write_units(
        units, {"a.service": HELLO, "b.service": HELLO2, "c.socket": "[Socket]\nListenStream=80\n", "d.service": HELLO}
    )
    # an unexpanded glob matching local files, a path without suffix, a path with one
    result = fleetctl("submit", "units/[ab].service", "units/d", "units/c.socket", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert sorted(fleet.units()) == ["a.service", "b.service", "c.socket", "d.service"]
    # names as arguments of stop-like commands: path basenames and globs over the cluster
    result = fleetctl("destroy", "units/a.service", "[bc]*", env=env, cwd=tmp_path)
    assert result.out.splitlines() == ["Destroyed a.service", "Destroyed b.service", "Destroyed c.socket"]
    result = fleetctl("destroy", "zzz*", env=env)
    assert result.code == 1 and "no unit in the cluster matches zzz*" in result.err


def test_local_file_differing_from_the_registered_one(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "hello.service"
    path.write_text(HELLO)
    assert fleetctl("submit", "hello.service", env=env, cwd=tmp_path).code == 0
    path.write_text(HELLO2)
    result = fleetctl("submit", "hello.service", env=env, cwd=tmp_path)
    assert result.code == 0
    assert (
        "WARNING: Unit hello.service in registry differs from local unit file hello.service. Add --replace to override."
        in result.err
    )
    assert fleetctl("cat", "hello", env=env).out == HELLO
    result = fleetctl("submit", "--replace", "hello.service", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "WARNING" not in result.err
    assert fleetctl("cat", "hello", env=env).out == HELLO2


@pytest.mark.parametrize("command", ["load", "start"])
def test_replace_with_load_and_start(fleet: Fleet, env: dict[str, str], tmp_path: Path, command: str) -> None:
    path = tmp_path / "hello.service"
    path.write_text(HELLO)
    assert fleetctl(command, "--no-block", "hello.service", env=env, cwd=tmp_path).code == 0
    path.write_text(HELLO2)
    result = fleetctl(command, "--no-block", "hello.service", env=env, cwd=tmp_path)
    assert "differs from local unit file" in result.err
    assert fleetctl("cat", "hello", env=env).out == HELLO
    result = fleetctl(command, "--no-block", "--replace", "hello.service", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert fleetctl("cat", "hello", env=env).out == HELLO2
    expected = {"load": "loaded", "start": "launched"}[command]
    assert str(fleet.units()["hello.service"].desired) == expected


def test_bad_unit_files_are_refused_and_nothing_is_submitted(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    write_units(
        tmp_path,
        {
            "good.service": HELLO,
            "bad.service": "[Unit]\nDescription=x\n\n[Service\nExecStart=/bin/true\n",
            "conflict.service": "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineID=abc\nGlobal=true\n",
        },
    )
    result = fleetctl_process("submit", "good.service", "bad.service", "conflict.service", env=env, cwd=tmp_path)
    assert result.code == 1
    assert "bad.service:4: unterminated section header" in result.err
    assert "conflict.service:6: MachineID cannot be combined with Global" in result.err
    assert fleet.units() == {}
    result = fleetctl("start", "missing.service", env=env, cwd=tmp_path)
    assert result.code == 1 and "unable to find unit missing.service" in result.err
    result = fleetctl("submit", "bad name.service", env=env, cwd=tmp_path)
    assert result.code == 1 and "invalid unit name" in result.err


# -- --no-block, stop/unload rules ------------------------------------------------------------------


def test_no_block_prints_triggered_lines(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    write_units(tmp_path, {"hello.service": HELLO, "global.service": GLOBAL})
    result = fleetctl("start", "--no-block", "hello.service", "global.service", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "Triggered global unit global.service start",
        "Triggered unit hello.service start",
    ]
    result = fleetctl("stop", "--no-block", "hello", "global", env=env)
    assert sorted(result.out.splitlines()) == [
        "Triggered global unit global.service stop",
        "Triggered unit hello.service stop",
    ]
    result = fleetctl("unload", "--no-block", "hello", env=env)
    assert result.out == "Triggered unit hello.service unload\n"
    result = fleetctl("stop", "hello", env=env)
    assert result.code == 1 and "cannot stop hello.service: its desired state is inactive" in result.err
    result = fleetctl("stop", "nothere", env=env)
    assert result.code == 1 and "unit nothere.service does not exist" in result.err


def test_unplaceable_unit_fails_with_the_reason(fleet: Fleet, env: dict[str, str], tmp_path: Path) -> None:
    write_units(
        tmp_path, {"picky.service": "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineMetadata=region=mars\n"}
    )
    result = fleetctl("submit", "picky.service", env=env, cwd=tmp_path)
    assert result.code == 0
    fleet.set_reasons({"picky.service": "no machine has metadata region=mars (2 machines checked)"})
    started = time.monotonic()
    result = fleetctl("start", "--block-attempts=1", "picky.service", env=env, cwd=tmp_path)
    took = time.monotonic() - started
    # one attempt is fleet's two seconds (its waitForState polls for defaultSleepTime, 2 s)
    assert 2 <= took < 6, f"--block-attempts=1 took {took:.1f} s"
    assert result.code == 1
    assert "Unit picky.service cannot be placed: no machine has metadata region=mars" in result.err
    assert (
        "timed out waiting for unit picky.service to report state launched: it cannot be placed: "
        "no machine has metadata region=mars (2 machines checked)"
    ) in result.err


def test_destroy_of_a_missing_unit_is_not_an_error(env: dict[str, str]) -> None:
    result = fleetctl("destroy", "ghost.service", env=env)
    assert result.code == 0
    assert "does not exist" in result.err


# -- endpoints, environment, exit codes -------------------------------------------------------------


def test_endpoint_from_the_environment_and_flag_precedence(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = fleetctl_process("list-units", env={"FLEETCTL_ENDPOINT": api.unix})
    assert (result.code, result.out) == (0, "UNIT\tMACHINE\tACTIVE\tSUB\n")
    # the command line wins over the environment
    result = fleetctl_process(
        "--endpoint", api.unix, "list-machines", env={"FLEETCTL_ENDPOINT": "unix:///nonexistent.sock"}
    )
    assert result.code == 0, result.err
    # Go-style single-dash long flags, and global flags after the command
    result = fleetctl("list-machines", f"-endpoint={api.unix}", "-no-legend")
    assert (result.code, result.out) == (0, "")


def test_unreachable_endpoint_says_what_to_do(tmp_path: Path) -> None:
    result = fleetctl_process("list-units", env={"FLEETCTL_ENDPOINT": f"unix://{tmp_path}/none.sock"})
    assert result.code == 1
    assert f"fleetd isn't reachable at unix://{tmp_path}/none.sock" in result.err
    assert "--endpoint" in result.err and "FLEETCTL_ENDPOINT" in result.err


def test_endpoint_list_is_tried_in_order(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    endpoints = f"unix://{tmp_path}/none.sock,http://127.0.0.1:1,{api.tcp}"
    result = fleetctl("list-machines", env={"FLEETCTL_ENDPOINT": endpoints, "FLEETCTL_API_TOKEN": TOKEN})
    assert result.code == 0, result.err


def test_tcp_endpoint_needs_the_token(api) -> None:  # type: ignore[no-untyped-def]
    result = fleetctl("list-units", "--endpoint", api.tcp)
    assert result.code == 1
    assert "bearer token" in result.err and "--api-token" in result.err
    assert fleetctl("list-units", "--endpoint", api.tcp, "--api-token", TOKEN).code == 0
    assert fleetctl("list-units", env={"FLEETCTL_ENDPOINT": api.tcp, "FLEETCTL_API_TOKEN": TOKEN}).code == 0


def test_api_token_from_a_file(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert fleetctl("list-units", "--endpoint", api.tcp, "--api-token-file", str(tmp_path / "token")).code == 0
    env = {"FLEETCTL_ENDPOINT": api.tcp, "FLEETCTL_API_TOKEN_FILE": str(tmp_path / "token")}
    assert fleetctl("list-units", env=env).code == 0
    (tmp_path / "token").write_text("wrong\n")
    result = fleetctl("list-units", env=env)
    assert result.code == 1 and "the API token was refused: check --api-token-file" in result.err, result.err
    result = fleetctl("list-units", env={**env, "FLEETCTL_API_TOKEN_FILE": str(tmp_path / "none")})
    assert result.code == 1
    assert (
        result.err
        == f"Error: cannot read the API token from --api-token-file {tmp_path / 'none'}: No such file or directory\n"
    )


class Spy:
    """A TCP listener that records the requests it gets and answers each with a 401."""

    def __init__(self, host: str, port: int) -> None:
        self.server = socket.create_server((host, port))
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        body = b'{"error":{"code":401,"message":"missing or wrong bearer token"}}'
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data.decode("latin-1"))
                conn.sendall(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.server.close()


def test_token_is_withheld_from_a_learnt_plain_http_address(fleet: Fleet, tmp_path: Path) -> None:
    first = fleet.add_api(M1, host="127.0.0.1")
    spy = Spy("127.0.0.2", first.port)  # what M2's address (learnt from the cluster) receives
    try:
        fleet.add_machine(M1, "127.0.0.1")
        fleet.add_machine(M2, "127.0.0.2")
        write_units(tmp_path, {"hello.service": HELLO})
        env = {"FLEETCTL_ENDPOINT": first.tcp, "FLEETCTL_API_TOKEN": TOKEN}
        assert fleetctl("submit", "hello.service", env=env, cwd=tmp_path).code == 0
        fleet.place(M2, "hello.service")
        for command in (["journal", "hello"], ["status", "hello"]):
            result = fleetctl(*command, env=env)
            assert result.code == 1
            assert "fleetctl did not send its API token to http://127.0.0.2:" in result.err, result.err
        assert len(spy.requests) == 2
        assert all("authorization" not in r.lower() and TOKEN not in r for r in spy.requests), spy.requests
        # the same address named by the user: the token goes there
        named = {**env, "FLEETCTL_ENDPOINT": f"{first.tcp},http://127.0.0.2:{first.port}"}
        result = fleetctl("journal", "hello", env=named)
        assert result.code == 1 and "the API token was refused" in result.err, result.err
        assert f"Authorization: Bearer {TOKEN}" in spy.requests[-1]
    finally:
        spy.close()


def test_https_endpoint_with_client_certificate_and_token(fleet: Fleet, tmp_path: Path) -> None:
    from fleetd.api import make_ssl_context
    from fleetlab.etcd import make_test_pki

    pki = make_test_pki(tmp_path / "pki")
    api = fleet.add_api(M1, context=make_ssl_context(pki.cert_file, pki.key_file, pki.ca_file))
    fleet.add_machine(M1, "127.0.0.1")
    tls = {
        "FLEETCTL_ENDPOINT": api.tcp,
        "FLEETCTL_CA_FILE": pki.ca_file,
        "FLEETCTL_CERT_FILE": pki.client_cert_file,
        "FLEETCTL_KEY_FILE": pki.client_key_file,
        "FLEETCTL_API_TOKEN": TOKEN,
    }
    write_units(tmp_path, {"hello.service": HELLO})
    assert fleetctl("submit", "hello", env=tls, cwd=tmp_path).code == 0
    fleet.place(M1, "hello.service")
    assert fleetctl("list-machines", "--no-legend", env=tls).out == "113f16a7...\t127.0.0.1\t-\n"
    # the machine's own API is asked over https with the same files and token
    result = fleetctl("journal", "-n", "1", "hello", env=tls)
    assert (result.code, result.out) == (0, "hello.service line 0 on 113f\n"), result.err
    # without the client certificate the TLS handshake fails: said, not a traceback
    result = fleetctl("list-units", env={k: v for k, v in tls.items() if "CERT" not in k and "KEY_FILE" not in k})
    assert result.code == 1 and result.err.startswith("Error: ") and "--cert-file" in result.err, result.err
    result = fleetctl("list-units", env={**tls, "FLEETCTL_CA_FILE": str(tmp_path / "missing.pem")})
    assert result.code == 1 and "cannot load the TLS files" in result.err


def test_usage_errors_exit_2(api) -> None:  # type: ignore[no-untyped-def]
    env = env_for(api.unix)
    for argv, expected in [
        (["list-units", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], 'unknown command "frobnicate"'),
        (["start"], "the following arguments are required"),
        (["journal"], "the following arguments are required"),
        (["--driver=zk", "list-units"], 'invalid value "zk" for --driver'),
        (["start", "--block-attempts=x", "a.service"], 'invalid value "x" for --block-attempts'),
        (["list-units", "--no-legend=maybe"], 'invalid boolean value "maybe"'),
    ]:
        result = fleetctl_process(*argv, env=env)
        assert result.code == 2, (argv, result)
        assert expected in result.err, (argv, result.err)
        assert "fleetctl help" in result.err


def test_help_and_version(api) -> None:  # type: ignore[no-untyped-def]
    from fleetd import __version__

    for argv in ([], ["help"], ["-h"], ["--help"]):
        result = fleetctl_process(*argv)
        assert result.code == 0
        assert "list-unit-files" in result.out and __version__ in result.out
        assert "FLEETCTL_" in result.out
    assert fleetctl_process("--version").out == f"fleetctl version {__version__}\n"
    assert fleetctl_process("version").out == f"fleetctl version {__version__}\n"
    result = fleetctl_process("help", "journal")
    assert result.code == 0 and "--lines" in result.out
    assert fleetctl_process("start", "--help").code == 0


def test_etcd_driver(fleet: Fleet, etcd: EtcdCluster, key_prefix: str, env: dict[str, str], tmp_path: Path) -> None:
    fleet.add_machine(M1, "10.0.0.1")
    write_units(tmp_path, {"hello.service": HELLO})
    etcd_env = {
        "FLEETCTL_DRIVER": "etcd",
        "FLEETCTL_ENDPOINT": ",".join(etcd.endpoints),
        "FLEETCTL_ETCD_KEY_PREFIX": key_prefix,
    }
    result = fleetctl_process("submit", "hello.service", env=etcd_env, cwd=tmp_path)
    assert (result.code, result.out) == (0, "Unit hello.service inactive\n"), result.err
    fleet.publish(state("hello.service", M1, hash_=fleet.units()["hello.service"].hash))
    result = fleetctl_process("list-units", env=etcd_env)
    assert result.code == 0, result.err
    assert result.out == "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../10.0.0.1\tactive\trunning\n"
    # the same answer through the API
    assert fleetctl("list-units", env=env).out == result.out
    assert fleetctl_process("list-unit-files", env=etcd_env).out == fleetctl("list-unit-files", env=env).out
    assert fleetctl_process("cat", "hello", env=etcd_env).out == HELLO
    result = fleetctl_process("destroy", "hello", "--no-block", env=etcd_env)
    assert result.out == "Destroyed hello.service\n"
    bad = fleetctl_process(
        "list-units", env={**etcd_env, "FLEETCTL_ENDPOINT": "http://127.0.0.1:1", "FLEETCTL_REQUEST_TIMEOUT": "0.5"}
    )
    assert bad.code == 1 and "etcd isn't reachable at http://127.0.0.1:1" in bad.err


# -- journal and status from the unit's machine ---------------------------------------------------


def test_journal_and_status_come_from_the_units_machine(fleet: Fleet, tmp_path: Path) -> None:
    # three machines, each with its own API on its own loopback address and the same port
    first = fleet.add_api(M1, host="127.0.0.1")
    port = first.port
    others = [fleet.add_api(mid, host=f"127.0.0.{i}", port=port) for i, mid in ((2, M2), (3, "33cc" * 8))]
    for api in [first, *others]:
        fleet.add_machine(api.machine_id, api.host)
    write_units(tmp_path, {"hello.service": HELLO, "global.service": GLOBAL})
    tcp = {"FLEETCTL_ENDPOINT": first.tcp, "FLEETCTL_API_TOKEN": TOKEN}
    assert fleetctl("submit", "hello.service", "global.service", env=tcp, cwd=tmp_path).code == 0
    fleet.place(M2, "hello.service")
    fleet.publish(*(state("global.service", api.machine_id) for api in [first, *others]))

    # the unit's machine is at an address learnt from the cluster, over plain http: the
    # token is not sent there, and the error says why and what to do
    result = fleetctl("journal", "hello", "-n", "3", env=tcp)
    assert result.code == 1 and others[0].journal.calls == []
    assert (
        f"fleetd on 22aa33bb.../127.0.0.2: missing or wrong bearer token (send Authorization: Bearer <token>); "
        f"fleetctl did not send its API token to {others[0].tcp}: that address was learnt from the cluster"
    ) in result.err
    assert f"--endpoint <your endpoint>,{others[0].tcp}" in result.err
    # ... named by the user, it gets the token
    tcp["FLEETCTL_ENDPOINT"] = ",".join(api.tcp for api in [first, *others])
    result = fleetctl("journal", "hello", "-n", "3", env=tcp)
    assert result.code == 0, result.err
    assert result.out == "".join(f"hello.service line {i} on 22aa\n" for i in range(3))
    assert others[0].journal.calls[-1] == ("hello.service", 3, False, "short")
    result = fleetctl("journal", "--lines=2", "--output=cat", "--sudo", "hello.service", env=tcp)
    assert result.code == 0 and others[0].journal.calls[-1] == ("hello.service", 2, False, "cat")
    # through the unix socket of another machine: sent on to the unit's machine at its IP
    # and fleetd's TCP port 54728, where nothing listens in this test
    result = fleetctl("journal", "hello", env={"FLEETCTL_ENDPOINT": first.unix, "FLEETCTL_API_TOKEN": TOKEN})
    assert result.code == 1
    assert (
        f"cannot reach the fleetd of machine 22aa33bb.../127.0.0.2: tried {first.unix} (another machine's fleetd); "
        "http://127.0.0.2:54728 (Connection refused)" in result.err
    )
    # ... while the unix socket of the unit's own machine answers itself
    result = fleetctl("journal", "hello", env={"FLEETCTL_ENDPOINT": others[0].unix})
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 10
    # a global unit: every machine, each line labelled
    result = fleetctl("journal", "global", "-n", "2", env=tcp)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"{api.machine_id[:8]}: global.service line {i} on {api.machine_id[:4]}"
        for api in sorted([first, *others], key=lambda a: a.machine_id)
        for i in range(2)
    ]
    # status: one block, or one per machine for a global unit
    result = fleetctl("status", "hello", env=tcp)
    assert result.out == f"* hello.service - on {M2[:8]}\n   Active: active (running)\n"
    result = fleetctl("status", "global.service", env=tcp)
    assert result.out.count("Machine ") == 3 and "127.0.0.3" in result.out
    # a unit not placed anywhere
    fleet.run(fleet.registry.destroy_unit("hello.service"))  # type: ignore[union-attr]
    write_units(tmp_path, {"idle.service": HELLO2})
    assert fleetctl("submit", "idle.service", env=tcp, cwd=tmp_path).code == 0
    result = fleetctl("journal", "idle", env=tcp)
    assert result.code == 1 and "does not appear to be running" in result.err


def test_status_exits_with_systemctls_code(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fleet ran systemctl status over SSH and exited with its code: 3 for an inactive unit.
    # Here the unit's fleetd says it in X-Fleet-Exit-Code (its status source: a StatusText).
    import fleetctl_support

    from fleetd.systemd.journal import StatusText

    codes = {"up.service": 0, "down.service": 3, "gone.service": 4}

    def coded_status(machine_id: str):  # type: ignore[no-untyped-def]
        async def status(unit: str) -> str:
            return StatusText(f"* {unit} on {machine_id[:8]}\n", codes[unit])

        return status

    monkeypatch.setattr(fleetctl_support, "fake_status", coded_status)
    api = fleet.add_api(M1)
    fleet.add_machine(M1, api.host)
    write_units(tmp_path, dict.fromkeys(codes, HELLO))
    env = {"FLEETCTL_ENDPOINT": api.unix}
    assert fleetctl("submit", *codes, env=env, cwd=tmp_path).code == 0
    for name in codes:
        fleet.place(M1, name)
    result = fleetctl("status", "up.service", env=env)
    assert (result.code, result.out) == (0, f"* up.service on {M1[:8]}\n")
    result = fleetctl("status", "down.service", env=env)
    assert (result.code, result.out, result.err) == (3, f"* down.service on {M1[:8]}\n", "")
    assert fleetctl("status", "gone.service", env=env).code == 4
    # several units: every one shown, the exit status the first failure's (fleet's rule)
    result = fleetctl("status", "up.service", "gone.service", "down.service", env=env)
    assert result.code == 4
    assert result.out == "".join(f"* {n}.service on {M1[:8]}\n" for n in ("up", "gone", "down")).replace("\n*", "\n\n*")
    # a fleetctl error before the remote failure: 1, as fleet's "Unit ... does not exist."
    result = fleetctl("status", "nothere.service", "down.service", env=env)
    assert result.code == 1 and "Unit nothere.service does not exist." in result.err


def test_journal_exits_with_journalctls_code_when_it_fails(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fleet ran journalctl over SSH and exited with its code; here the unit's fleetd sends
    # journalctl's code in X-Fleet-Exit-Code with the error, and fleetctl exits with it
    import fleetctl_support

    from fleetd.systemd.journal import JournalError

    class FailingJournal(fleetctl_support.FakeJournal):
        def __call__(self, unit: str, lines: int, follow: bool, output: str):  # type: ignore[no-untyped-def]
            if unit == "broken.service":
                raise JournalError("journalctl exited with 7: No journal files were opened", 7)
            return super().__call__(unit, lines, follow, output)

    monkeypatch.setattr(fleetctl_support, "FakeJournal", FailingJournal)
    api = fleet.add_api(M1)
    fleet.add_machine(M1, api.host)
    write_units(tmp_path, {"broken.service": HELLO, "fine.service": HELLO2})
    env = {"FLEETCTL_ENDPOINT": api.unix}
    assert fleetctl("submit", "broken.service", "fine.service", env=env, cwd=tmp_path).code == 0
    fleet.place(M1, "broken.service")
    fleet.place(M1, "fine.service")
    result = fleetctl("journal", "broken.service", env=env)
    assert result.code == 7 and "No journal files were opened" in result.err
    result = fleetctl("journal", "-n", "2", "fine.service", env=env)
    assert (result.code, result.out) == (0, "fine.service line 0 on 113f\nfine.service line 1 on 113f\n")


def test_journal_follow_of_a_global_unit_follows_every_machine(fleet: Fleet, tmp_path: Path) -> None:
    first = fleet.add_api(M1, host="127.0.0.1")
    second = fleet.add_api(M2, host="127.0.0.2", port=first.port)
    for api in (first, second):
        fleet.add_machine(api.machine_id, api.host)
    write_units(tmp_path, {"global.service": GLOBAL})
    both = f"{first.tcp},{second.tcp}"  # the token goes only to addresses named (or over TLS)
    env = {"FLEETCTL_ENDPOINT": both, "FLEETCTL_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    assert (
        fleetctl(
            "submit", "global.service", env={k: v for k, v in env.items() if k.startswith("FLEETCTL")}, cwd=tmp_path
        ).code
        == 0
    )
    fleet.publish(state("global.service", M1), state("global.service", M2))
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetctl.main", "journal", "-f", "-n", "1", "global.service"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 15
        assert process.stdout is not None
        while time.monotonic() < deadline and not {"113f16a7: tick", "22aa33bb: tick"} <= seen:
            line = process.stdout.readline()
            if not line:
                break
            seen.add(" ".join(line.split()[:2]))
        assert {"113f16a7: tick", "22aa33bb: tick"} <= seen, seen
    finally:
        process.terminate()
        process.wait(10)


class Lines:
    """A process's stdout lines, collected by a thread, awaited with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self._queue.put(line.rstrip("\n")) for line in stream], daemon=True).start()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15) -> int:
        """Index of the first line (old or new) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for index, line in enumerate(self.seen):
                if predicate(line):
                    return index
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such line within {timeout} s; seen: {self.seen[-20:]}")
            with contextlib.suppress(queue.Empty):
                self.seen.append(self._queue.get(timeout=min(remaining, 0.5)))


def _follow(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleetctl.main", "journal", "-f", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )


def test_journal_follow_stays_with_a_unit_that_moves(fleet: Fleet, tmp_path: Path) -> None:
    first = fleet.add_api(M1, host="127.0.0.1")
    second = fleet.add_api(M2, host="127.0.0.2", port=first.port)
    for api in (first, second):
        fleet.add_machine(api.machine_id, api.host)
    write_units(tmp_path, {"hello.service": HELLO})
    env = {"FLEETCTL_ENDPOINT": f"{first.tcp},{second.tcp}", "FLEETCTL_API_TOKEN": TOKEN}
    assert fleetctl("submit", "hello.service", env=env, cwd=tmp_path).code == 0
    fleet.place(M1, "hello.service")
    process = _follow(env, "-n", "1", "hello.service")
    try:
        lines = Lines(process)
        lines.wait_for(lambda line: line.startswith("tick") and line.endswith("on 113f"))
        # the engine moves it: one transaction takes it from M1 and gives it to M2
        unit = fleet.run(fleet.registry.get_unit("hello.service"))  # type: ignore[union-attr]
        placed = ScheduledUnit("hello.service", unit.file, DesiredState.LAUNCHED)
        assert fleet.leadership is not None
        fleet.run(fleet.registry.apply_schedule(fleet.leadership, [(M2, placed)], [(M1, "hello.service")]))  # type: ignore[union-attr]
        marker = lines.wait_for(lambda line: line == "-- hello.service moved to 22aa33bb.../127.0.0.2 --")
        moved = lines.wait_for(lambda line: line.endswith("on 22aa"))
        assert moved > marker
        after = lines.seen[marker + 1 :]
        assert not any(line.endswith("on 113f") for line in after[1:]), after  # the old stream was stopped
        # destroyed: the stream ends, and so does fleetctl, with status 0
        assert fleetctl("destroy", "hello.service", env=env).code == 0
        lines.wait_for(lambda line: line == "-- hello.service was destroyed --")
        assert process.wait(15) == 0
    finally:
        process.kill()
        process.wait(10)


def test_journal_follow_of_a_global_unit_takes_in_machines_that_join(fleet: Fleet, tmp_path: Path) -> None:
    first = fleet.add_api(M1, host="127.0.0.1")
    second = fleet.add_api(M2, host="127.0.0.2", port=first.port)
    for api in (first, second):
        fleet.add_machine(api.machine_id, api.host)
    write_units(tmp_path, {"global.service": GLOBAL})
    env = {"FLEETCTL_ENDPOINT": f"{first.tcp},{second.tcp}", "FLEETCTL_API_TOKEN": TOKEN}
    assert fleetctl("submit", "global.service", env=env, cwd=tmp_path).code == 0
    fleet.publish(state("global.service", M1))
    process = _follow(env, "-n", "1", "global.service")
    try:
        lines = Lines(process)
        lines.wait_for(lambda line: line.startswith("113f16a7: tick"))
        fleet.publish(state("global.service", M2))
        marker = lines.wait_for(lambda line: line == "-- global.service now runs on 22aa33bb.../127.0.0.2 too --")
        assert lines.wait_for(lambda line: line.startswith("22aa33bb: tick")) > marker
        lines.wait_for(lambda line: line.startswith("113f16a7: tick") and lines.seen.index(line) > marker)
    finally:
        process.kill()
        process.wait(10)


# -- ssh ----------------------------------------------------------------------------------------


FAKE_SSH = """\
import os, socket, sys, threading

args = sys.argv[1:]
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if "-N" not in args:  # a login or a command: show the argv, one per line
    for arg in args:
        print(arg)
    sys.exit(0)
# -N -L local:remote: forward a local unix socket (or 127.0.0.1:port) to a unix path or host:port
spec = args[args.index("-L") + 1]
if spec.startswith("/"):
    local, _, remote = spec.partition(":")
else:
    local_host, local_port, remote = spec.split(":", 2)


def connect():
    if remote.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(remote)
        return sock
    host, _, port = remote.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)))


def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


if spec.startswith("/"):
    server = socket.socket(socket.AF_UNIX)
    server.bind(local)
else:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((local_host, int(local_port)))
server.listen(16)
while True:
    client, _ = server.accept()
    upstream = connect()
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
"""


@pytest.fixture
def fake_ssh(tmp_path: Path) -> dict[str, str]:
    """An ``ssh`` on PATH that prints its argv, or for ``-N -L`` really forwards."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ssh"
    script.write_text(f"#!{sys.executable}\n{FAKE_SSH}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_SSH_LOG": str(tmp_path / "ssh.log"),
    }


def test_ssh_runs_the_system_client(
    fleet: Fleet, env: dict[str, str], fake_ssh: dict[str, str], tmp_path: Path
) -> None:
    fleet.add_machine(M1, "10.1.0.1")
    fleet.add_machine(M2, "10.1.0.2")
    write_units(tmp_path, {"hello.service": HELLO})
    assert fleetctl("submit", "hello", env=env, cwd=tmp_path).code == 0
    fleet.place(M2, "hello.service")
    environment = {**env, **fake_ssh}
    known = f"UserKnownHostsFile={tmp_path}/.fleetctl/known_hosts"

    result = fleetctl_process("ssh", "113f", env=environment)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "-p",
        "22",
        "-l",
        "core",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "StrictHostKeyChecking=ask",
        "-o",
        known,
        "--",
        "10.1.0.1",
    ]
    assert (tmp_path / ".fleetctl").is_dir()
    result = fleetctl_process(
        "--ssh-username=admin",
        "--tunnel",
        "bastion:2222",
        "--strict-host-key-checking=false",
        "ssh",
        "-A",
        "--ssh-port",
        "2200",
        "hello.service",
        "ls",
        "-l",
        env=environment,
    )
    assert result.out.splitlines() == [
        "-A",
        "-p",
        "2200",
        "-l",
        "admin",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-J",
        "admin@bastion:2222",
        "--",
        "10.1.0.2",
        "ls",
        "-l",
    ]
    # the API itself went through the tunnel: ssh -N -L <local socket>:<fleetd's socket>
    log = (tmp_path / "ssh.log").read_text().splitlines()
    assert any(
        line.startswith("-l admin") and " -p 2222 -N " in line and f":{env['FLEETCTL_ENDPOINT'][7:]} -- bastion" in line
        for line in log
    ), log
    result = fleetctl_process("ssh", "--unit", "hello", "--", "uptime", "-p", env=environment)
    assert result.out.splitlines()[-3:] == ["10.1.0.2", "uptime", "-p"]
    result = fleetctl_process("ssh", "--machine", M2[:6], env={**environment, "FLEETCTL_SSH_TIMEOUT": "2.5"})
    assert "ConnectTimeout=3" in result.out and result.out.splitlines()[-1] == "10.1.0.2"
    result = fleetctl_process("ssh", "nothing", env=environment)
    assert result.code == 1 and "could not find a matching unit or machine for nothing" in result.err
    result = fleetctl_process("ssh", "--machine", "a", "--unit", "b", env=environment)
    assert result.code == 2


def test_etcd_driver_through_a_tunnel(
    fleet: Fleet, etcd: EtcdCluster, key_prefix: str, fake_ssh: dict[str, str], tmp_path: Path
) -> None:
    fleet.add_machine(M1, "10.0.0.1")
    environment = {
        **fake_ssh,
        "FLEETCTL_DRIVER": "etcd",
        "FLEETCTL_ENDPOINT": etcd.endpoints[0],
        "FLEETCTL_ETCD_KEY_PREFIX": key_prefix,
        "FLEETCTL_TUNNEL": "bastion",
    }
    result = fleetctl_process("list-machines", "--no-legend", env=environment)
    assert (result.code, result.out) == (0, "113f16a7...\t10.0.0.1\t-\n"), result.err
    host_port = etcd.endpoints[0].split("//")[1]
    log = (tmp_path / "ssh.log").read_text()
    assert f":{host_port} -- bastion" in log and "-L 127.0.0.1:" in log


# -- fast start ---------------------------------------------------------------------------------


def test_list_units_does_not_load_the_daemons_libraries(api) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys\n"
        "from fleetctl.main import main\n"
        "rc = main(['list-units'])\n"
        "libs = {'aiohttp', 'aetcd', 'grpc', 'dbus_fast', 'click', 'tabulate'}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in libs\n"
        "               or m.startswith('fleetd.api') or m.startswith('fleetd.registry'))\n"
        "print('HEAVY', heavy, rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FLEETCTL_ENDPOINT": api.unix, "PYTHONPATH": str(ROOT)},
    )
    assert done.stdout.splitlines()[-1] == "HEAVY [] 0", done.stdout + done.stderr
