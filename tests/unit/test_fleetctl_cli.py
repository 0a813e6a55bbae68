"""fleetctl's command line: flags, Go-style spellings, FLEETCTL_* environment, endpoints,
exit statuses of usage errors, and that it starts without the daemon's libraries."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from fleetctl.cli import COMMANDS, GLOBAL_FLAGS, command_help, config_from, main_help, normalise, parse
from fleetctl.config import AGENT_API_PORT, Config, parse_endpoint
from fleetctl.errors import UsageError
from fleetctl.main import run

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    inv = parse(["list-units"], environ={})
    config = inv.config
    assert config.endpoint == "unix:///var/run/fleet.sock" and not config.endpoint_given
    assert (config.driver, config.etcd_key_prefix) == ("api", "/_coreos.com/fleet/")
    assert (config.request_timeout, config.ssh_timeout, config.ssh_username) == (3.0, 10.0, "core")
    assert config.strict_host_key_checking is True and config.debug is False
    assert config.known_hosts_file == "~/.fleetctl/known_hosts"
    assert config.ca_file is None and config.api_token is None and config.tunnel is None
    args = inv.args
    assert (args.full, args.no_legend, args.fields, args.output) == (False, False, None, "table")
    assert args.default_fields == "unit,machine,active,sub"


def test_every_global_flag_has_an_environment_variable() -> None:
    environ = {
        "FLEETCTL_ENDPOINT": "http://10.0.0.1:4001",
        "FLEETCTL_DRIVER": "etcd",
        "FLEETCTL_ETCD_KEY_PREFIX": "/other/",
        "FLEETCTL_CA_FILE": "/ca.pem",
        "FLEETCTL_CERT_FILE": "/cert.pem",
        "FLEETCTL_KEY_FILE": "/key.pem",
        "FLEETCTL_API_TOKEN_FILE": "/token",
        "FLEETCTL_REQUEST_TIMEOUT": "7.5",
        "FLEETCTL_TUNNEL": "bastion:22",
        "FLEETCTL_SSH_USERNAME": "admin",
        "FLEETCTL_KNOWN_HOSTS_FILE": "/kh",
        "FLEETCTL_STRICT_HOST_KEY_CHECKING": "false",
        "FLEETCTL_SSH_TIMEOUT": "2",
        "FLEETCTL_DEBUG": "1",
    }
    # FLEETCTL_API_TOKEN too, but not with FLEETCTL_API_TOKEN_FILE (one of the two)
    assert {f.env for f in GLOBAL_FLAGS} == {*environ, "FLEETCTL_API_TOKEN"}
    config = parse(["list-units"], environ=environ).config
    assert config == Config(
        endpoint="http://10.0.0.1:4001",
        endpoint_given=True,
        driver="etcd",
        etcd_key_prefix="/other/",
        ca_file="/ca.pem",
        cert_file="/cert.pem",
        key_file="/key.pem",
        request_timeout=7.5,
        tunnel="bastion:22",
        ssh_username="admin",
        known_hosts_file="/kh",
        strict_host_key_checking=False,
        ssh_timeout=2.0,
        debug=True,
        api_token_file="/token",
    )


def test_command_line_wins_over_environment_and_after_the_command_over_before() -> None:
    environ = {"FLEETCTL_ENDPOINT": "unix:///env.sock", "FLEETCTL_DEBUG": "true"}
    config = parse(["--endpoint", "unix:///flag.sock", "--debug=false", "list-units"], environ=environ).config
    assert (config.endpoint, config.debug) == ("unix:///flag.sock", False)
    config = parse(["--endpoint=unix:///a.sock", "list-units", "--endpoint", "unix:///b.sock"], environ={}).config
    assert config.endpoint == "unix:///b.sock"


def test_go_style_flags() -> None:
    inv = parse(
        [
            "-endpoint=unix:///x.sock",
            "-strict-host-key-checking=false",
            "start",
            "-no-block",
            "-block-attempts",
            "3",
            "a",
        ],
        environ={},
    )
    assert inv.config.endpoint == "unix:///x.sock" and inv.config.strict_host_key_checking is False
    assert (inv.args.no_block, inv.args.block_attempts, inv.args.units) == (True, 3, ["a"])
    inv = parse(["list-units", "-l", "-fields=unit", "-no-legend=true"], environ={})
    assert (inv.args.full, inv.args.fields, inv.args.no_legend) == (True, "unit", True)
    inv = parse(["list-units", "--full=false", "--no-legend=0"], environ={})
    assert (inv.args.full, inv.args.no_legend) == (False, False)
    # a boolean flag never takes the next argument as its value
    inv = parse(["--debug", "list-machines"], environ={})
    assert inv.config.debug and inv.command is not None and inv.command.name == "list-machines"


def test_normalise_leaves_positional_arguments_and_everything_after_dashes() -> None:
    flags = {f.name: f for f in GLOBAL_FLAGS}
    assert normalise(["-debug", "x", "--", "-debug"], flags) == ["--debug", "x", "--", "-debug"]
    assert normalise(["-endpoint", "-weird-value"], flags) == ["--endpoint", "-weird-value"]


def test_command_flags() -> None:
    inv = parse(["journal", "-n", "5", "-f", "--output=cat", "--sudo", "hello"], environ={})
    args = inv.args
    assert (args.lines, args.follow, args.journal_output, args.sudo, args.unit) == (5, True, "cat", True, "hello")
    assert parse(["journal", "--lines=0", "x"], environ={}).args.lines == 0
    inv = parse(["ssh", "-A", "--ssh-port=2222", "--machine", "abc", "--", "ls", "-l"], environ={})
    assert (inv.args.forward_agent, inv.args.ssh_port, inv.args.machine, inv.args.args) == (
        True,
        2222,
        "abc",
        ["--", "ls", "-l"],
    )
    # after ssh's first argument, everything belongs to the remote command
    inv = parse(["ssh", "web", "ls", "-la", "--debug"], environ={})
    assert inv.args.args == ["web", "ls", "-la", "--debug"] and inv.config.debug is False
    inv = parse(["destroy", "--no-block", "a", "b"], environ={})
    assert (inv.args.no_block, inv.args.units) == (True, ["a", "b"])
    inv = parse(["submit", "--replace", "a"], environ={})
    assert inv.args.replace is True
    inv = parse(["restart", "--block-attempts=4", "a"], environ={})
    assert inv.args.block_attempts == 4


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["list-units", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["nope"], {}, 'unknown command "nope"'),
        (["submit"], {}, "the following arguments are required: UNIT"),
        (["journal", "a", "b"], {}, "unrecognized arguments: b"),
        (["--request-timeout=soon", "list-units"], {}, 'invalid value "soon" for --request-timeout'),
        (["start", "--block-attempts=-1", "a"], {}, "must not be negative"),
        (["list-units", "-o", "yaml"], {}, 'invalid value "yaml" for --output'),
        (["journal", "--output=fancy", "a"], {}, 'invalid value "fancy" for --output'),
        (["list-units"], {"FLEETCTL_DEBUG": "sometimes"}, "FLEETCTL_DEBUG"),
        (["list-units"], {"FLEETCTL_DRIVER": "zookeeper"}, "FLEETCTL_DRIVER"),
        (["list-units", "--endpoint"], {}, "expected one argument"),
        (["--full", "list-units"], {}, "unrecognized arguments: --full"),
    ],
)
def test_usage_errors(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv, environ=environ)


def test_usage_errors_exit_2_and_name_the_help(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("FLEETCTL_")]:
        monkeypatch.delenv(key)
    out, err = io.StringIO(), io.StringIO()
    assert run(["list-units", "--fields=unit,nope"], out, err) == 2
    assert 'invalid field "nope"' in err.getvalue() and "fleetctl help list-units" in err.getvalue()
    err = io.StringIO()
    assert run(["start", "--bogus", "x"], out, err) == 2
    assert run(["help", "bogus"], out, io.StringIO()) == 2
    assert out.getvalue() == ""


def test_help_texts() -> None:
    text = main_help()
    for command in COMMANDS:
        assert f"\t{command.name}\t" in text
    for flag in GLOBAL_FLAGS:
        assert f"--{flag.name}" in text
    assert "FLEETCTL_SOME_FLAG" in text
    journal = command_help(next(c for c in COMMANDS if c.name == "journal"))
    assert "-n, --lines=10" in journal and "-f, --follow=false" in journal
    for argv in (["start", "-h"], ["list-units", "--help"], ["ssh", "--help"], ["--help", "stop"]):
        out = io.StringIO()
        assert run(argv, out, io.StringIO()) == 0
        assert out.getvalue().startswith(f"NAME:\n\tfleetctl {argv[0] if argv[0] != '--help' else argv[1]} - ")


def test_endpoints() -> None:
    unix = parse_endpoint("unix:///var/run/fleet.sock")
    assert (unix.scheme, unix.path, unix.is_unix) == ("unix", "/var/run/fleet.sock", True)
    assert parse_endpoint("/tmp/f.sock").url == "unix:///tmp/f.sock"
    tcp = parse_endpoint("http://10.0.0.1:49153")
    assert (tcp.scheme, tcp.host, tcp.port, tcp.address) == ("http", "10.0.0.1", 49153, "10.0.0.1:49153")
    assert parse_endpoint("https://fleet.example").port == AGENT_API_PORT
    assert parse_endpoint("10.0.0.2:80").url == "http://10.0.0.2:80"
    v6 = parse_endpoint("http://[fd00::1]:54728")
    assert (v6.host, v6.address, v6.url) == ("fd00::1", "[fd00::1]:54728", "http://[fd00::1]:54728")
    # a machine's own API: the port of a TCP endpoint, else fleetd's 54728
    assert tcp.on_host("10.0.0.9").url == "http://10.0.0.9:49153"
    assert parse_endpoint("https://a:443").on_host("10.0.0.9").url == "https://10.0.0.9:443"
    assert unix.on_host("10.0.0.9").url == "http://10.0.0.9:54728"
    for bad in ("ftp://x", "unix://", "http://:80", "http://host:port"):
        with pytest.raises(UsageError):
            parse_endpoint(bad)


def test_endpoint_list_and_the_etcd_default() -> None:
    config = config_from({"endpoint": "unix:///a.sock, http://b:1 ,"}, {})
    assert config.endpoints() == ["unix:///a.sock", "http://b:1"]
    assert config_from({"driver": "etcd"}, {}).endpoints() == ["http://127.0.0.1:2379"]
    assert config_from({"driver": "etcd"}, {"FLEETCTL_ENDPOINT": "http://e:2379"}).endpoints() == ["http://e:2379"]


def test_importing_and_parsing_loads_none_of_the_daemons_libraries() -> None:
    code = (
        "import sys\n"
        "import fleetctl.main, fleetctl.cli, fleetctl.client\n"
        "import fleetctl.cmd_list, fleetctl.cmd_units, fleetctl.cmd_remote\n"
        "fleetctl.cli.parse(['list-units'], environ={})\n"
        "heavy = {'aiohttp', 'aetcd', 'grpc', 'dbus_fast', 'click', 'tabulate', 'asyncio'}\n"
        "ours = ('fleetd.api', 'fleetd.registry')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(ours)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_import_time_of_the_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import fleetctl.main"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "fleetctl.main" in modules
    assert not {m for m in modules if m.split(".")[0] in {"aiohttp", "aetcd", "grpc", "dbus_fast", "click"}}


# -- the API token: from a file, and never in clear text to a learnt address -----------------


def test_api_token_from_a_file_loses_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    config = parse(["--api-token-file", str(tmp_path / "token"), "list-units"], environ={}).config
    assert config.api_token is None and config.bearer_token() == "s3cret"
    config = parse(["list-units"], environ={"FLEETCTL_API_TOKEN_FILE": str(tmp_path / "token")}).config
    assert config.bearer_token() == "s3cret"
    assert "s3cret" not in repr(config)
    config = parse(["list-units"], environ={"FLEETCTL_API_TOKEN": "Zq7tok"}).config
    assert config.bearer_token() == "Zq7tok" and "Zq7tok" not in repr(config)


def test_api_token_and_its_file_the_command_line_wins(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    path = str(tmp_path / "token")
    config = parse(["--api-token", "from-flag", "list-units"], environ={"FLEETCTL_API_TOKEN_FILE": path}).config
    assert (config.api_token_file, config.bearer_token()) == (None, "from-flag")
    config = parse(["--api-token-file", path, "list-units"], environ={"FLEETCTL_API_TOKEN": "from-env"}).config
    assert (config.api_token, config.bearer_token()) == (None, "from-file")
    with pytest.raises(UsageError, match="both --api-token and --api-token-file given on the command line"):
        parse(["--api-token", "a", "--api-token-file", path, "list-units"], environ={})
    with pytest.raises(UsageError, match="both --api-token and --api-token-file given in the environment"):
        parse(["list-units"], environ={"FLEETCTL_API_TOKEN": "a", "FLEETCTL_API_TOKEN_FILE": path})


def test_unreadable_or_empty_token_file_is_an_error_when_the_token_is_needed(tmp_path: Path) -> None:
    from fleetctl.errors import FleetctlError

    config = parse(["--api-token-file", str(tmp_path / "none"), "list-units"], environ={}).config
    with pytest.raises(FleetctlError, match=r"cannot read the API token from --api-token-file .*none: No such file"):
        config.bearer_token()
    (tmp_path / "empty").write_text("\n")
    config = parse(["--api-token-file", str(tmp_path / "empty"), "list-units"], environ={}).config
    with pytest.raises(FleetctlError, match="is empty"):
        config.bearer_token()
    # on the unix socket no token is needed, so the file is not even read
    from fleetctl.client import ApiClient

    config = parse(["--api-token-file", str(tmp_path / "none"), "list-units"], environ={}).config
    assert ApiClient(config).transport.token is None
    result = run(
        ["--endpoint", "http://127.0.0.1:1", "--api-token-file", str(tmp_path / "none"), "list-units"],
        io.StringIO(),
        err := io.StringIO(),
    )
    assert result == 1 and err.getvalue().startswith("Error: cannot read the API token from --api-token-file")


@pytest.mark.parametrize(
    ("endpoint", "given", "allowed"),
    [
        ("https://10.0.0.2:54728", [], True),  # TLS: nobody on the way reads it
        ("unix:///var/run/fleet.sock", [], True),
        ("http://10.0.0.2:54728", [], False),  # learnt, plain http
        ("http://10.0.0.2:54728", ["http://10.0.0.1:54728"], False),
        ("http://10.0.0.2:54728", ["http://10.0.0.1:54728", "10.0.0.2"], True),  # the user named it
        ("http://10.0.0.2:54728", ["http://10.0.0.2:9999"], False),  # another port is another endpoint
        ("http://10.0.0.2:54728", ["https://10.0.0.2:54728"], False),  # given for TLS only
    ],
)
def test_token_rule(endpoint: str, given: list[str], allowed: bool) -> None:
    from fleetctl.transport import token_allowed

    assert token_allowed(parse_endpoint(endpoint), [parse_endpoint(g) for g in given]) is allowed


def test_node_transports_withhold_the_token_from_learnt_http_addresses() -> None:
    from fleetctl.client import ApiClient
    from fleetctl.transport import unauthorized_hint

    machine = {"id": "a" * 32, "primaryIP": "10.0.0.2", "metadata": {}}
    given = parse(["--endpoint", "http://10.0.0.1:54728", "--api-token", "tok", "list-units"], environ={}).config
    # first the fleetd fleetctl talks to (it relays to the unit's machine), then the machine
    relay, learnt = ApiClient(given).node_transports(machine)
    assert (relay.endpoint.url, relay.token) == ("http://10.0.0.1:54728", "tok")
    assert (learnt.endpoint.url, learnt.token, learnt.token_withheld) == ("http://10.0.0.2:54728", None, True)
    hint = unauthorized_hint(learnt)
    assert "did not send its API token to http://10.0.0.2:54728" in hint
    assert "--endpoint <your endpoint>,http://10.0.0.2:54728" in hint and "TLS" in hint
    # named by the user: sent
    both = parse(
        ["--endpoint", "http://10.0.0.1:54728,http://10.0.0.2:54728", "--api-token", "tok", "status", "x"], environ={}
    )
    _, named = ApiClient(both.config).node_transports(machine)
    assert (named.token, named.token_withheld) == ("tok", False)
    # https: sent, to the same port
    tls = parse(["--endpoint", "https://10.0.0.1:4443", "--api-token", "tok", "list-units"], environ={}).config
    _, secure = ApiClient(tls).node_transports(machine)
    assert (secure.endpoint.url, secure.token) == ("https://10.0.0.2:4443", "tok")
    # through the unix socket: the machine's port 54728 over http, no token
    local = parse(["--api-token", "tok", "list-units"], environ={}).config
    socket_transport, machine_transport = ApiClient(local).node_transports(machine)
    assert socket_transport.endpoint.is_unix and machine_transport.token is None and machine_transport.token_withheld
    # no token configured: nothing withheld, the usual hint
    plain = parse(["--endpoint", "http://10.0.0.1:54728", "list-units"], environ={}).config
    _, learnt = ApiClient(plain).node_transports(machine)
    assert not learnt.token_withheld and "pass the API token with --api-token-file" in unauthorized_hint(learnt)
    # the unit's machine is the one fleetctl talks to: asked once
    [only] = ApiClient(plain).node_transports({**machine, "primaryIP": "10.0.0.1"})
    assert only.endpoint.url == "http://10.0.0.1:54728"


@pytest.mark.parametrize("spelling", ["API", "api", "Api"])
def test_driver_names_in_any_case(spelling: str) -> None:
    # fleet's help spells it --driver=API; FLEETCTL_DRIVER too
    assert parse([f"--driver={spelling}", "list-units"], environ={}).config.driver == "api"
    assert parse(["list-units"], environ={"FLEETCTL_DRIVER": spelling}).config.driver == "api"
    assert parse(["--driver", "ETCD", "list-units"], environ={}).config.driver == "etcd"


def test_every_command_has_a_description() -> None:
    for command in COMMANDS:
        assert command.description, command.name
        assert "\nDESCRIPTION:\n\t" in command_help(command)
    stop = command_help(next(c for c in COMMANDS if c.name == "stop"))
    assert "Stop one or more units from running in the cluster, but allow them to be started again" in stop


def test_one_block_attempt_is_fleets_two_seconds() -> None:
    from fleetctl.waiting import ATTEMPT_SECONDS

    assert ATTEMPT_SECONDS == 2.0  # fleet's defaultSleepTime per attempt


def test_list_unit_files_accepts_tmachine_with_fleets_warning() -> None:
    from fleetctl.cmd_list import list_unit_files
    from fleetctl.context import Context

    class Cluster:
        def units(self) -> list[dict[str, object]]:
            return [{"name": "a.service", "desiredState": "launched", "currentState": "launched", "machineID": "m1"}]

        def machines(self) -> list[dict[str, object]]:
            return [{"id": "m1", "primaryIP": "10.0.0.1", "metadata": {}}]

    inv = parse(["list-unit-files", "--fields", "unit,dstate,state,tmachine"], environ={})
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(inv.config, out, err, _cluster=Cluster())  # type: ignore[arg-type]
    assert list_unit_files(ctx, inv.args) == 0
    assert err.getvalue() == 'WARNING: The "tmachine" field is deprecated. Use "target" instead\n'
    assert out.getvalue().splitlines() == [
        "UNIT\t\tDSTATE\t\tSTATE\t\tTMACHINE",
        "a.service\tlaunched\tlaunched\tm1.../10.0.0.1",
    ]


def test_the_etcd_driver_asks_the_local_fleetd_first_for_journal_and_status() -> None:
    from fleetctl.etcd_driver import EtcdClient

    config = parse(["--driver", "etcd", "list-units"], environ={}).config
    client = EtcdClient(config)
    try:
        local, direct = client.node_transports({"id": "a" * 32, "primaryIP": "10.0.0.2", "metadata": {}})
        assert (local.endpoint.url, direct.endpoint.url) == ("unix:///var/run/fleet.sock", "http://10.0.0.2:54728")
        [only] = client.node_transports({"id": "a" * 32, "primaryIP": "", "metadata": {}})
        assert only.endpoint.is_unix
    finally:
        client.close()
