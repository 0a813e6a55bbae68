"""Unit arguments (names, paths, globs, templates), ssh command lines, progress display."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from fleetctl.arguments import (
    expand_file_globs,
    local_file_candidates,
    local_unit_path,
    match_names,
    template_path,
    unit_name,
)
from fleetctl.config import Config
from fleetctl.errors import FleetctlError
from fleetctl.tunnel import jump_spec, split_host_port, ssh_options
from fleetctl.waiting import Goal, Progress, _current_state, _reached


@pytest.mark.parametrize(
    ("arg", "name"),
    [
        ("hello", "hello.service"),
        ("hello.service", "hello.service"),
        ("units/hello", "hello.service"),
        ("/abs/path/db.socket", "db.socket"),
        ("web@1", "web@1.service"),
        ("web@.service", "web@.service"),
        ("./x/y.timer", "y.timer"),
        ("foo.bar", "foo.bar.service"),
        ("dir/", "dir.service"),
    ],
)
def test_unit_names_are_mangled_like_fleet(arg: str, name: str) -> None:
    assert unit_name(arg) == name


@pytest.mark.parametrize("arg", ["bad name", "@x.service", "x@1.device", "a/b c.service", "é.service"])
def test_invalid_names_name_the_argument(arg: str) -> None:
    with pytest.raises(FleetctlError, match="invalid unit name"):
        unit_name(arg)


def test_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "units").mkdir()
    for name in ("a.service", "b.service", "c.socket", "web@.service", "plain"):
        (tmp_path / "units" / name).write_text("[Service]\nExecStart=/bin/true\n")
    assert local_file_candidates("units/a") == ["units/a.service", "units/a"]
    assert local_file_candidates("units/a.service") == ["units/a.service"]
    assert local_unit_path("units/a") == "units/a.service"
    assert local_unit_path("units/plain") == "units/plain"  # no .service file: the file as named
    assert local_unit_path("units/none") is None
    assert template_path("units/web@1.service", "web@.service") == os.path.join("units", "web@.service")
    assert template_path("web@1", "web@.service") == "web@.service"
    # unexpanded globs matching local files become the files; others stay for the cluster
    assert expand_file_globs(["units/*.service", "units/[c]*", "x*", "units/a"]) == [
        "units/a.service",
        "units/b.service",
        "units/web@.service",
        "units/c.socket",
        "x*",
        "units/a",
    ]
    assert expand_file_globs(["units/?"]) == ["units/a.service", "units/b.service"]  # as units/?.service
    assert expand_file_globs(["units/zz?"]) == ["units/zz?"]


def test_globs_over_unit_names() -> None:
    names = ["web@1.service", "web@2.service", "web.service", "db.service", "web@1.socket"]
    assert match_names("web@*", names) == ["web@1.service", "web@1.socket", "web@2.service"]
    assert match_names("web@?", names) == ["web@1.service", "web@2.service"]
    assert match_names("units/web@*.service", names) == ["web@1.service", "web@2.service"]
    assert match_names("[dx]*", names) == ["db.service"]
    assert match_names("nothing*", names) == []


def test_ssh_options_from_the_global_flags() -> None:
    config = Config()
    known = os.path.expanduser("~/.fleetctl/known_hosts")
    assert ssh_options(config) == [
        "-l",
        "core",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "StrictHostKeyChecking=ask",
        "-o",
        f"UserKnownHostsFile={known}",
    ]
    config = Config(ssh_username="me", ssh_timeout=0, strict_host_key_checking=False)
    assert ssh_options(config) == ["-l", "me", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    assert ssh_options(Config(ssh_timeout=0.2))[2:4] == ["-o", "ConnectTimeout=1"]


def test_tunnel_specs() -> None:
    assert split_host_port("bastion") == ("bastion", None, None)
    assert split_host_port("bastion:2222") == ("bastion", None, 2222)
    assert split_host_port("ops@bastion:2222") == ("bastion", "ops", 2222)
    assert split_host_port("[fd00::1]:22") == ("fd00::1", None, 22)
    assert split_host_port("fd00::1") == ("fd00::1", None, None)
    assert jump_spec(Config(ssh_username="core"), "bastion:2222") == "core@bastion:2222"
    assert jump_spec(Config(), "ops@bastion") == "ops@bastion"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_updates_one_line_on_a_terminal_only() -> None:
    stream = Tty()
    progress = Progress(stream, enabled=stream.isatty())
    progress.show("1/3 done")
    progress.show("2/3 done")
    progress.clear()
    assert stream.getvalue() == "\r\033[K1/3 done\r\033[K2/3 done\r\033[K"
    plain = io.StringIO()
    quiet = Progress(plain, enabled=plain.isatty())
    quiet.show("1/3")
    quiet.clear()
    assert plain.getvalue() == ""


def test_when_a_goal_is_reached() -> None:
    """currentState is worked out from the states as the API does (active where it runs:
    launched; reported: loaded; else inactive); an unload looks only at where the unit is
    placed as last read."""
    unit = {"name": "a.service", "machineID": "m1"}
    active = {"machineID": "m1", "systemdActiveState": "active", "hash": "old"}
    stopped = {"machineID": "m1", "systemdActiveState": "inactive", "hash": "old"}
    launched = Goal("a.service", "launched")
    assert _current_state(unit, launched, [active]) == ("launched", "m1")
    assert _current_state(unit, launched, [stopped]) == ("loaded", "m1")
    assert _current_state(unit, launched, []) == ("inactive", "")
    # not yet seen placed when the unit was read: the machine reporting it is where it runs
    assert _current_state({"name": "a.service", "machineID": ""}, launched, [active]) == ("launched", "m1")
    # an unload: once unplaced the unit is inactive, even while its machine still reports it
    unload = Goal("a.service", "inactive")
    assert _current_state({"name": "a.service", "machineID": ""}, unload, [active]) == ("inactive", "")
    assert _current_state(unit, unload, [active]) == ("launched", "m1")
    assert _reached("launched", "m1", launched, [active])
    assert not _reached("launched", "m1", Goal("a.service", "loaded"), [active])
    assert _reached("inactive", "", unload, [])
    # after --replace: only once the unit's machine runs the new body
    new = {"machineID": "m1", "hash": "new"}
    assert not _reached("launched", "m1", Goal("a.service", "launched", "new"), [active])
    assert _reached("launched", "m1", Goal("a.service", "launched", "new"), [new])
    assert not _reached("launched", "m1", Goal("a.service", "launched", "new"), [{"machineID": "m2", "hash": "new"}])
