"""fleetd refuses a wrong environment with one line and a hint, not a traceback.

fleetd runs as a subprocess against the session's real etcd, on a machine without a
reachable systemd (``DBUS_SYSTEM_BUS_ADDRESS`` points nowhere), so every run ends at the
latest at the D-Bus check: what it printed before is what a misconfigured machine shows.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlab.etcd import EtcdCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NO_BUS = "unix:path=/nonexistent/system_bus_socket"
DBUS_ERROR = f"fleetd: cannot talk to systemd over D-Bus at {NO_BUS}: No such file or directory"
DBUS_HINT = (
    "fleetd: hint: fleetd drives systemd over the D-Bus system bus: run it on a machine booted with systemd, "
    "with dbus running (systemctl status dbus.socket); DBUS_SYSTEM_BUS_ADDRESS says where the bus is"
)


@dataclass
class Run:
    code: int
    err: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.err)


@pytest.fixture
def conf(tmp_path: Path, etcd: EtcdCluster, key_prefix: str) -> Path:
    """A fleet.conf for this machine: the fixture's etcd, files under tmp_path."""
    (tmp_path / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    path = tmp_path / "fleet.conf"
    path.write_text(
        f"etcd_servers={','.join(etcd.endpoints)}\n"
        f"etcd_key_prefix={key_prefix}\n"
        f"machine_id_file={tmp_path / 'machine-id'}\n"
        f"units_directory={tmp_path / 'units'}/\n"
        f"api_listen=unix:{tmp_path / 'fleet.sock'}\n"
        "public_ip=127.0.0.1\n"
    )
    return path


def fleetd(*argv: str, env: dict[str, str] | None = None, pass_fd: socket.socket | None = None) -> Run:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "LISTEN_", "DBUS_"))}
    environment.update({"DBUS_SYSTEM_BUS_ADDRESS": NO_BUS, "PYTHONPATH": str(ROOT)})
    environment.update(env or {})
    command = [sys.executable, "-m", "fleetd.cli", *argv]
    kwargs: dict[str, object] = {}
    if pass_fd is not None:
        # socket activation: the socket as fd 3, LISTEN_PID the pid that exec keeps
        fd = pass_fd.fileno()
        kwargs = {"pass_fds": (fd, 3), "preexec_fn": lambda: os.dup2(fd, 3)}  # 3: kept after the dup2
        environment["LISTEN_FDS"] = "1"
        command = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60, **kwargs)  # type: ignore[call-overload]
    assert done.stdout == ""
    return Run(done.returncode, done.stderr.splitlines())


def test_no_system_bus_is_one_line_and_a_hint(conf: Path) -> None:
    run = fleetd("--config", str(conf))
    assert (run.code, run.err) == (1, [DBUS_ERROR, DBUS_HINT])
    # the same through FLEET_CONFIG; an unreachable etcd would not be the error (it is retried)
    run = fleetd(env={"FLEET_CONFIG": str(conf), "FLEET_ETCD_SERVERS": "http://127.0.0.1:1"})
    assert (run.code, run.err) == (1, [DBUS_ERROR, DBUS_HINT])


@pytest.mark.parametrize("debug", [["--debug"], ["-v"], ["--verbosity=1"]])
def test_debug_logging_shows_the_traceback(conf: Path, debug: list[str]) -> None:
    run = fleetd("--config", str(conf), *debug)
    assert run.code == 1
    assert "Traceback (most recent call last)" in run.text
    assert run.err[-2:] == [DBUS_ERROR, DBUS_HINT]


@pytest.mark.parametrize("where", ["file", "environment"])
def test_verbosity_1_turns_on_debug_logging(conf: Path, where: str) -> None:
    if where == "file":
        conf.write_text(conf.read_text() + "verbosity=1\n")
        run = fleetd("--config", str(conf))
    else:
        run = fleetd("--config", str(conf), env={"FLEET_VERBOSITY": "1"})
    assert run.code == 1
    assert any(line.startswith("DEBUG fleetd: configuration: Config(") for line in run.err), run.err
    assert "Traceback (most recent call last)" in run.text
    assert not any(line.startswith("DEBUG") for line in fleetd("--config", str(conf), "--verbosity=0").err)


def test_fleets_options_without_effect_are_warnings(conf: Path) -> None:
    run = fleetd("--config", str(conf), env={"FLEET_ENABLE_GRPC": "true", "FLEET_DISABLE_WATCHES": "1"})
    assert run.code == 1
    assert run.err[:2] == [
        "WARNING fleetd: FLEET_ENABLE_GRPC: enable_grpc has no effect in fleet-py (fleet's gRPC link between "
        "engine and agents; here they talk only through etcd); ignored",
        "WARNING fleetd: FLEET_DISABLE_WATCHES: disable_watches has no effect in fleet-py (fleetd always "
        "follows etcd v3 watches; there is no polling mode to switch to); ignored",
    ]
    assert run.err[2:] == [DBUS_ERROR, DBUS_HINT]


def test_bad_option_values_are_one_line(conf: Path) -> None:
    run = fleetd("--config", str(conf), "--agent-ttl=ten")
    assert (run.code, run.err) == (
        2,
        ['fleetd: --agent-ttl: agent_ttl: invalid duration "ten" (use e.g. 30s, 1m30s, 500ms)'],
    )
    # a malformed metadata pair is skipped with a warning (as fleet skipped it), not a refusal
    run = fleetd("--config", str(conf), env={"FLEET_METADATA": "region,disk=ssd"})
    assert run.code == 1 and run.err == [
        'WARNING fleetd: FLEET_METADATA: metadata: malformed pair "region" skipped (use key=value,key2=value2)',
        DBUS_ERROR,
        DBUS_HINT,
    ]
    run = fleetd("--config", str(conf), "--frobnicate=1")
    assert (run.code, run.err) == (
        2,
        ["fleetd: --frobnicate: unknown option", "fleetd: hint: fleetd --help lists the options"],
    )
    run = fleetd("--config", str(conf), "--etcd-servers=http://:2379")
    assert run.code == 1 and run.err[0] == "fleetd: etcd_servers: etcd endpoint 'http://:2379' has no host", run.err


def test_malformed_or_unreadable_configuration_file(conf: Path, tmp_path: Path) -> None:
    conf.write_text(conf.read_text() + "agent_ttl=10s\njust words\n")
    run = fleetd("--config", str(conf))
    assert (run.code, run.err) == (2, [f"fleetd: {conf}:8: expected option=value, got 'just words'"])
    run = fleetd("--config", str(tmp_path))  # a directory: unreadable even for root
    assert (run.code, run.err) == (2, [f"fleetd: {tmp_path}: cannot read the configuration file: Is a directory"])
    run = fleetd("--config", str(tmp_path / "missing.conf"))
    assert run.code == 2 and run.err[0] == f"fleetd: {tmp_path / 'missing.conf'}: configuration file not found"
    assert run.err[1].startswith("fleetd: hint: give an existing file with --config or FLEET_CONFIG")
    (tmp_path / "binary.conf").write_bytes(b"agent_ttl=\xff\xfe\n")
    run = fleetd("--config", str(tmp_path / "binary.conf"))
    assert (run.code, run.err) == (
        2,
        [f"fleetd: {tmp_path / 'binary.conf'}: cannot read the configuration file: not UTF-8 text"],
    )


def test_secret_files(conf: Path, tmp_path: Path) -> None:
    run = fleetd("--config", str(conf), "--api-token-file", str(tmp_path))
    assert (run.code, run.err) == (2, [f"fleetd: api_token_file: cannot read {tmp_path}: Is a directory"])
    run = fleetd("--config", str(conf), env={"FLEET_ETCD_PASSWORD_FILE": str(tmp_path / "none")})
    assert run.code == 2 and run.err[0] == f"fleetd: etcd_password_file: {tmp_path / 'none'}: no such file"
    # a readable token file: fleetd goes on (to the D-Bus error); a TLS file that is not
    (tmp_path / "token").write_text("s3cret\n")
    run = fleetd("--config", str(conf), "--api-token-file", str(tmp_path / "token"))
    assert (run.code, run.err) == (1, [DBUS_ERROR, DBUS_HINT])
    run = fleetd("--config", str(conf), "--etcd-cafile", str(tmp_path / "ca.pem"))
    assert (
        run.code == 1
        and run.err[0] == f"fleetd: etcd_cafile: cannot read {tmp_path / 'ca.pem'}: No such file or directory"
    )
    # a secret on the command line works, with a warning
    run = fleetd("--config", str(conf), "--api-token", "s3cret")
    assert run.code == 1 and run.err[-2:] == [DBUS_ERROR, DBUS_HINT]
    assert "--api-token on the command line can be read by every user" in run.err[0]
    assert "s3cret" not in run.text


def test_tcp_api_without_a_token_warns_or_is_refused(conf: Path, tmp_path: Path) -> None:
    run = fleetd("--config", str(conf), "--api-listen", "127.0.0.1:0")
    assert run.code == 1 and run.err[-2:] == [DBUS_ERROR, DBUS_HINT]
    assert run.err[0] == (
        "WARNING fleetd: the API on TCP 127.0.0.1:0 accepts requests from anyone who can reach it (no api_token, "
        "no TLS): set api_token_file, and api_certfile/api_keyfile for TLS; api_require_token=true refuses to "
        "start like this"
    )
    # refused before anything else happens (no D-Bus error: never got there)
    run = fleetd("--config", str(conf), "--api-listen", "127.0.0.1:0", "--api-require-token")
    assert (run.code, run.err) == (
        1,
        [
            "fleetd: the API would listen on TCP (127.0.0.1:0) without a token, and api_require_token is set",
            "fleetd: hint: set api_token_file (or FLEET_API_TOKEN), or remove the TCP listener",
        ],
    )
    # with a token: no warning on loopback; the clear-text warning on another address
    token = {"FLEET_API_TOKEN": "s3cret", "FLEET_API_REQUIRE_TOKEN": "true"}
    run = fleetd("--config", str(conf), "--api-listen", "127.0.0.1:0", env=token)
    assert (run.code, run.err) == (1, [DBUS_ERROR, DBUS_HINT])
    run = fleetd("--config", str(conf), "--api-listen", "192.0.2.1:54728", env=token)
    assert run.code == 1 and run.err[0].startswith(
        "WARNING fleetd: the API on TCP 192.0.2.1:54728 takes its token in clear text (no TLS)"
    )
    # the unix socket alone: nothing to warn about
    assert fleetd("--config", str(conf)).err == [DBUS_ERROR, DBUS_HINT]


def test_socket_activated_tcp_socket_warns_and_is_refused_only_with_api_require_token(conf: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        run = fleetd("--config", str(conf), pass_fd=server)
        assert run.code == 1 and run.err[-2:] == [DBUS_ERROR, DBUS_HINT], run.err
        assert run.err[0].startswith(f"WARNING fleetd: the API on TCP 127.0.0.1:{port} accepts requests from anyone")
        run = fleetd("--config", str(conf), pass_fd=server, env={"FLEET_API_REQUIRE_TOKEN": "yes"})
        assert run.code == 1
        assert run.err[0] == (
            f"fleetd: the API would listen on TCP (127.0.0.1:{port}) without a token, and api_require_token is set"
        )
        run = fleetd("--config", str(conf), pass_fd=server, env={"FLEET_API_TOKEN": "s3cret"})
        assert (run.code, run.err) == (1, [DBUS_ERROR, DBUS_HINT])


async def test_sigusr1_logs_the_state_as_one_json_line_and_fleetd_keeps_running(
    conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """fleet dumped its state as JSON on SIGUSR1; its default action would end fleetd."""
    import asyncio
    import json
    import signal

    import fleetd.systemd.manager
    from fleetd.config import load_config
    from fleetd.server import Daemon
    from fleetlab.simulated import SimulatedManager

    class Manager(SimulatedManager):
        bus = None  # no D-Bus here: no D-Bus error counts either

        def __init__(self, **kwargs: object) -> None:
            super().__init__()

        async def connect(self) -> None:
            pass

        async def close(self) -> None:
            pass

    monkeypatch.setattr(fleetd.systemd.manager, "SystemdManager", Manager)
    config, _ = load_config(["--config", str(conf), "--metadata=role=web"], {}, _read)
    daemon = Daemon(config)
    caplog.set_level(logging.INFO, logger="fleetd")
    running = asyncio.create_task(daemon.run())
    try:
        for _ in range(100):
            if daemon.agent is not None and daemon.agent.status.registered:
                break
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(40):
            await asyncio.sleep(0.05)
            dumps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SIGUSR1: state ")]
            if dumps:
                break
        assert not running.done()
        assert len(dumps) == 1 and "\n" not in dumps[0]
        dump = json.loads(dumps[0].removeprefix("SIGUSR1: state "))
        assert dump["machine"] == "0123456789abcdef0123456789abcdef"
        assert dump["agent"]["registered"] is True and dump["agent"]["metadata"] == {"role": "web"}
        assert {"desired", "states", "failures", "global_units", "tasks", "engine"} <= set(dump)
        assert "engine" in dump["tasks"] and dump["tasks"]["engine"]["running"] is True
        assert set(dump["engine"]) == {"leader", "term", "units", "machines", "unplaceable"}
    finally:
        daemon.stopping.set()
        await asyncio.wait_for(running, 20)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
