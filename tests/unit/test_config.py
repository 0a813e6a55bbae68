"""fleetd configuration: file < environment < flags, durations, lists, metadata, errors."""

from __future__ import annotations

import logging

import pytest

from fleetd.config import (
    IGNORED_OPTIONS,
    Config,
    ConfigError,
    load_config,
    log_level,
    malformed_metadata,
    parse_config_file,
    parse_duration,
    parse_metadata,
    split_flags,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("2", 2.0), ("1.5", 1.5), ("1h", 3600.0), ("1m0.5s", 60.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["ten", "", "5x", "s30", "1m 30s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_metadata_and_bad_pairs() -> None:
    assert parse_metadata("region=us-west, disk=ssd") == {"region": "us-west", "disk": "ssd"}
    for bad in ("region", "=x", "k=", "a=b=c"):
        # skipped, as fleet skipped it; the valid pairs are kept
        assert parse_metadata(f"az=1,{bad},disk=ssd") == {"az": "1", "disk": "ssd"}
        assert malformed_metadata(f"az=1,{bad},disk=ssd") == [bad]


def test_malformed_metadata_is_a_warning_naming_the_pair_in_every_source() -> None:
    files = {"/etc/fleet/fleet.conf": "public_ip=1.1.1.1\nmetadata=region=eu,oops\n"}
    config, warnings = load_config([], {}, files.get)
    assert config.metadata == {"region": "eu"}
    assert warnings == ['/etc/fleet/fleet.conf:2: metadata: malformed pair "oops" skipped (use key=value,key2=value2)']
    config, warnings = load_config([], {"FLEET_METADATA": "region,disk=ssd"}, lambda path: None)
    assert config.metadata == {"disk": "ssd"}
    assert warnings == ['FLEET_METADATA: metadata: malformed pair "region" skipped (use key=value,key2=value2)']
    config, warnings = load_config(["--metadata", "a=b=c,x=y"], {}, lambda path: None)
    assert config.metadata == {"x": "y"}
    assert warnings == ['--metadata: metadata: malformed pair "a=b=c" skipped (use key=value,key2=value2)']


@pytest.mark.parametrize("name", ["enable_grpc", "disable_watches"])
def test_fleets_options_without_effect_are_accepted_with_a_warning_everywhere(name: str) -> None:
    flag = "--" + name.replace("_", "-")
    variable = "FLEET_" + name.upper()
    config, warnings = load_config([], {variable: "true"}, lambda path: None)
    assert config == Config()
    assert warnings == [f"{variable}: {name} has no effect in fleet-py ({IGNORED_OPTIONS[name]}); ignored"]
    config, warnings = load_config([flag, "--disable-engine"], {}, lambda path: None)
    assert config == Config(disable_engine=True)
    assert warnings == [f"{flag}: {name} has no effect in fleet-py ({IGNORED_OPTIONS[name]}); ignored"]
    config, warnings = load_config([], {}, {"/etc/fleet/fleet.conf": f"{name}=true\n"}.get)
    assert config == Config()
    assert warnings == [f"/etc/fleet/fleet.conf:1: {name} has no effect in fleet-py ({IGNORED_OPTIONS[name]}); ignored"]
    assert "etcd" in IGNORED_OPTIONS[name]  # the reason says why


def test_verbosity_one_means_debug() -> None:
    for argv, environ, text in (
        ([], {}, "verbosity=1\n"),
        ([], {"FLEET_VERBOSITY": "1"}, ""),
        (["--verbosity=1"], {}, ""),
    ):
        config, _ = load_config(argv, environ, {"/etc/fleet/fleet.conf": text}.get)
        assert config.verbosity == 1
        assert log_level(config) == logging.DEBUG
    assert log_level(Config()) == logging.INFO


def test_file_parsing_quotes_comments_lists_and_warnings() -> None:
    text = """
# fleet.conf
etcd_servers=["http://10.0.0.1:2379","http://10.0.0.2:2379"]
metadata="region=eu,disk=ssd"
agent_ttl=5s
; comment
systemd_user=true
bogus_option=1
"""
    config, warnings = parse_config_file(text, "fleet.conf")
    assert config.etcd_servers == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert config.metadata == {"region": "eu", "disk": "ssd"}
    assert config.agent_ttl == 5.0
    assert config.systemd_user is True
    assert warnings == ["fleet.conf:8: unknown option 'bogus_option' ignored"]


def test_file_errors_name_file_line_and_option() -> None:
    with pytest.raises(ConfigError, match=r"fleet.conf:2: agent_ttl: invalid duration"):
        parse_config_file("public_ip=1.2.3.4\nagent_ttl=ten\n", "fleet.conf")
    with pytest.raises(ConfigError, match=r"fleet.conf:1: expected option=value"):
        parse_config_file("just words\n", "fleet.conf")


def test_precedence_file_then_env_then_flags() -> None:
    files = {"/etc/fleet/fleet.conf": "agent_ttl=20s\npublic_ip=1.1.1.1\nverbosity=1\n"}
    config, _ = load_config(
        ["--agent-ttl=3s"],
        {"FLEET_AGENT_TTL": "7s", "FLEET_PUBLIC_IP": "2.2.2.2"},
        files.get,
    )
    assert config.agent_ttl == 3.0  # flag beats env beats file
    assert config.public_ip == "2.2.2.2"  # env beats file
    assert config.verbosity == 1  # file beats default
    assert Config().agent_ttl == 10.0  # our default, shorter than fleet's 30 s


def test_missing_default_file_is_fine_missing_explicit_file_is_not() -> None:
    config, _ = load_config([], {}, lambda path: None)
    assert config == Config()
    with pytest.raises(ConfigError, match="not found"):
        load_config(["--config", "/nope/fleet.conf"], {}, lambda path: None)


def test_flags() -> None:
    flags, rest = split_flags(["--disable-engine", "--metadata", "a=b", "--agent_ttl=4s"])
    assert flags == {"disable_engine": "true", "metadata": "a=b", "agent_ttl": "4s"}
    assert rest == []
    with pytest.raises(ConfigError, match="--frobnicate: unknown option"):
        load_config(["--frobnicate=1"], {}, lambda path: None)
    with pytest.raises(ConfigError, match="FLEET_AGENT_TTL: agent_ttl: must be positive"):
        load_config([], {"FLEET_AGENT_TTL": "0"}, lambda path: None)


# -- hardening: secrets from files or the environment, api_require_token, clear errors --------


def _files(mapping: dict[str, str]):  # type: ignore[no-untyped-def]
    """A read_file over a dict: missing -> None (as fleetd's own reader does)."""
    return mapping.get


def test_api_require_token_from_file_environment_and_flag() -> None:
    assert Config().api_require_token is False
    conf = {"/etc/fleet/fleet.conf": "api_require_token=true\n"}
    assert load_config([], {}, _files(conf))[0].api_require_token is True
    assert load_config([], {"FLEET_API_REQUIRE_TOKEN": "1"}, _files({}))[0].api_require_token is True
    assert load_config(["--api-require-token"], {}, _files({}))[0].api_require_token is True
    assert load_config(["--api-require-token=false"], {}, _files(conf))[0].api_require_token is False
    with pytest.raises(ConfigError, match="FLEET_API_REQUIRE_TOKEN: api_require_token"):
        load_config([], {"FLEET_API_REQUIRE_TOKEN": "perhaps"}, _files({}))


def test_secrets_from_files_lose_one_trailing_newline() -> None:
    files = {"/run/token": "s3cret\n", "/run/pw": "pass word\r\n", "/run/two": "x\n\n"}
    config, warnings = load_config(
        ["--etcd-password-file", "/run/pw"], {"FLEET_API_TOKEN_FILE": "/run/token"}, _files(files)
    )
    assert (config.api_token, config.etcd_password) == ("s3cret", "pass word")
    assert (config.api_token_file, config.etcd_password_file) == ("/run/token", "/run/pw")
    assert warnings == []
    # only one newline goes: the rest is the secret as written
    assert load_config(["--api-token-file=/run/two"], {}, _files(files))[0].api_token == "x\n"


def test_secrets_from_the_environment() -> None:
    config, warnings = load_config([], {"FLEET_API_TOKEN": "tok", "FLEET_ETCD_PASSWORD": "pw"}, _files({}))
    assert (config.api_token, config.etcd_password) == ("tok", "pw")
    assert warnings == []


def test_secret_and_its_file_later_source_wins() -> None:
    files = {"/etc/fleet/fleet.conf": "api_token_file=/run/token\netcd_password=inline\n", "/run/token": "from-file"}
    config, _ = load_config([], {"FLEET_API_TOKEN": "from-env"}, _files(files))
    assert (config.api_token, config.api_token_file) == ("from-env", "")  # env beats the file's token_file
    files["/run/pw"] = "pw-from-file"
    config, _ = load_config(["--etcd-password-file=/run/pw"], {}, _files(files))
    assert config.etcd_password == "pw-from-file"  # the flag's file beats the file's inline password
    config, _ = load_config([], {}, _files(files))
    assert (config.api_token, config.etcd_password) == ("from-file", "inline")


@pytest.mark.parametrize(
    ("argv", "environ", "conf", "message"),
    [
        ([], {}, "api_token=a\napi_token_file=/run/token\n", "fleet.conf: both api_token and api_token_file"),
        (
            [],
            {"FLEET_API_TOKEN": "a", "FLEET_API_TOKEN_FILE": "/x"},
            "",
            "both FLEET_API_TOKEN and FLEET_API_TOKEN_FILE",
        ),
        (["--etcd-password=a", "--etcd-password-file=/x"], {}, "", "both --etcd-password and --etcd-password-file"),
    ],
)
def test_secret_and_its_file_in_one_source_is_an_error(
    argv: list[str], environ: dict[str, str], conf: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(argv, environ, _files({"/etc/fleet/fleet.conf": conf, "/run/token": "t"}))
    assert "keep only" in caught.value.hint


def test_secret_files_missing_empty_or_unreadable_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"^api_token_file: /run/none: no such file$"):
        load_config(["--api-token-file=/run/none"], {}, _files({}))
    with pytest.raises(ConfigError, match=r"^etcd_password_file: /run/empty is empty$"):
        load_config(["--etcd-password-file=/run/empty"], {}, _files({"/run/empty": "\n"}))

    def denied(path: str) -> str | None:
        if path == "/run/token":
            raise PermissionError(13, "Permission denied", path)
        return None

    with pytest.raises(ConfigError, match=r"^api_token_file: cannot read /run/token: Permission denied$") as caught:
        load_config(["--api-token-file=/run/token"], {}, denied)
    assert "mode" in caught.value.hint


def test_unreadable_or_binary_configuration_file_is_a_one_line_error() -> None:
    def directory(path: str) -> str | None:
        raise IsADirectoryError(21, "Is a directory", path)

    with pytest.raises(
        ConfigError, match=r"^/etc/fleet/fleet.conf: cannot read the configuration file: Is a directory$"
    ):
        load_config([], {}, directory)

    def binary(path: str) -> str | None:
        return b"\xff\xfe".decode("utf-8")

    with pytest.raises(ConfigError, match="cannot read the configuration file: not UTF-8 text"):
        load_config(["--config=/tmp/x.conf"], {}, binary)


def test_secrets_on_the_command_line_are_warned_about_and_never_in_repr() -> None:
    config, warnings = load_config(["--api-token=Zq7tok", "--etcd-password", "Zq7pw"], {}, _files({}))
    assert (config.api_token, config.etcd_password) == ("Zq7tok", "Zq7pw")
    assert len(warnings) == 2 and all("can be read by every user" in w for w in warnings)
    assert "use api_token_file or FLEET_API_TOKEN" in warnings[0]
    assert "Zq7" not in repr(config)


def test_unknown_flag_error_has_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(["--frobnicate=1"], {}, _files({}))
    assert caught.value.hint == "fleetd --help lists the options"
