"""fleetd configuration: file < environment < flags, durations, lists, metadata, errors."""

from __future__ import annotations

import pytest

from fleetd.config import (
    Config,
    ConfigError,
    load_config,
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
        with pytest.raises(ValueError, match="invalid metadata pair"):
            parse_metadata(bad)


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
