"""fleetd's entry point: what a refusal to start prints, and when a traceback is shown."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

import fleetd.server
from fleetd.cli import main
from fleetd.server import StartupError


class Failing:
    """A Daemon stand-in that fails in ``run`` (before or after it started)."""

    error: BaseException = RuntimeError("boom")
    started = False

    def __init__(self, config: Any, *, config_loader: Any = None) -> None:
        self.config = config

    async def run(self, reload_pending: Any = None) -> None:
        self.started = type(self).started
        raise type(self).error


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> type[Failing]:
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(fleetd.server, "Daemon", Failing)
    monkeypatch.setattr(Failing, "started", False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # main() sets it from the verbosity
    return Failing


ARGS = ["--config", "/dev/null"]


def test_startup_error_is_the_message_and_the_hint(failing: type[Failing], capsys: pytest.CaptureFixture[str]) -> None:
    failing.error = StartupError("no systemd here", hint="boot with systemd")
    assert main(ARGS) == 1
    assert capsys.readouterr().err == "fleetd: no systemd here\nfleetd: hint: boot with systemd\n"
    assert main([*ARGS, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("fleetd: no systemd here\nfleetd: hint: boot with systemd\n")


def test_unexpected_error_before_start_is_one_line(failing: type[Failing], capsys: pytest.CaptureFixture[str]) -> None:
    failing.error = RuntimeError("boom")
    assert main(ARGS) == 1
    assert capsys.readouterr().err == (
        "fleetd: cannot start: RuntimeError: boom\n"
        "fleetd: hint: run fleetd with --debug for the traceback (this is probably a bug: report it)\n"
    )
    assert main([*ARGS, "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("fleetd: cannot start: RuntimeError: boom\n")


def test_a_crash_after_start_is_logged_with_its_traceback(
    failing: type[Failing], caplog: pytest.LogCaptureFixture
) -> None:
    failing.error = RuntimeError("boom")
    failing.started = True
    assert main(ARGS) == 1
    [record] = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert record.getMessage() == "fleetd stopped by an unexpected error" and record.exc_info is not None


def test_configuration_errors_exit_2_without_starting(
    failing: type[Failing], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ARGS, "--agent-ttl=0"]) == 2
    assert capsys.readouterr().err == "fleetd: --agent-ttl: agent_ttl: must be positive\n"
