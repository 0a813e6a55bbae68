"""The systemd adapter checks the unit contract again (docs/units.md): a unit from etcd
that breaks it (written by an old client) is logged once and left out, never raised into
the batch; no unit name reaches a command line where it could be read as an option.

The manager runs against a temporary directory with its D-Bus calls replaced by a
recorder, so these tests need neither systemd nor a bus."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetd.model.errors import UnitNameError
from fleetd.model.unitfile import UnitFile, UnitOption, parse_unit_file
from fleetd.systemd.files import UnitFiles, refusal
from fleetd.systemd.journal import journal_command, read_journal, status_command, unit_status_text
from fleetd.systemd.manager import SystemdManager

GOOD = parse_unit_file("[Service]\nExecStart=/bin/sleep 1000\nUser=nobody\n")
# what an old client could have stored: written out, User=nobody joins ExecStart
JOINED = UnitFile((UnitOption("Service", "ExecStart", "/bin/sleep 1000 \\"), UnitOption("Service", "User", "nobody")))
SURROGATE = UnitFile((UnitOption("Unit", "Description", "\ud800"),))
LONG = "x" * 243 + ".service"  # 251 characters: ".<name>.tmp" would be 256 bytes

BAD_NAMES = [LONG, "-Hroot@somehost.service", ".hidden.service", "dbus.service", "systemd-journald.service", "a/b"]


class Recorder:
    """Stands in for the manager's D-Bus side: records every call, answers nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def each(self, method: str, names: Sequence[str], *args: Any, **kw: Any) -> dict[str, Any]:
        self.calls.append((method, list(names)))
        return dict.fromkeys(names, ("/job",))

    async def files(self, method: str, signature: str, items: list[str], *flags: bool) -> None:
        self.calls.append((method, list(items)))

    async def query(self, names: Sequence[str], *, load: bool) -> None:
        self.calls.append(("query", list(names)))

    async def reload(self) -> None:
        self.calls.append(("Reload", []))

    async def wait(self, jobs: Sequence[Any], timeout: float) -> None:
        return None

    def names(self, method: str) -> list[str]:
        return [name for m, names in self.calls if m == method for name in names]


@pytest.fixture
def manager(tmp_path: Path) -> tuple[SystemdManager, Recorder]:
    mgr = SystemdManager("/run/fleet/units", "unix:path=/nonexistent", root=tmp_path)
    rec = Recorder()
    mgr._calls = rec  # type: ignore[assignment]
    mgr._queries.query = rec.query  # type: ignore[method-assign]
    mgr._reload = rec.reload  # type: ignore[method-assign]
    mgr._jobs.wait = rec.wait  # type: ignore[method-assign]
    return mgr, rec


def written(mgr: SystemdManager) -> list[str]:
    directory = mgr.local_units_directory
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("name", BAD_NAMES)
def test_refusal_of_bad_names(name: str) -> None:
    assert refusal(name) is not None
    assert refusal(name, GOOD) is not None


def test_refusal_of_bad_files() -> None:
    assert refusal("web.service", GOOD) is None
    assert "ends with a backslash" in (refusal("web.service", JOINED) or "")
    assert "not valid UTF-8" in (refusal("web.service", SURROGATE) or "")


async def test_load_leaves_out_bad_units_and_goes_on_with_the_batch(
    manager: tuple[SystemdManager, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    mgr, rec = manager
    batch = dict.fromkeys(BAD_NAMES, GOOD) | {"web.service": GOOD, "joined.service": JOINED, "s.service": SURROGATE}
    with caplog.at_level(logging.WARNING, logger="fleetd.systemd"):
        await mgr.load(batch)  # does not raise
    assert written(mgr) == ["web.service"]  # no temporary file left either
    assert rec.names("LinkUnitFiles") == ["/run/fleet/units/web.service"]
    assert ("Reload", []) in rec.calls
    assert set((await mgr.units()).keys()) == {"web.service"}
    refused = [r for r in caplog.records if "refusing unit" in r.getMessage()]
    assert len(refused) == len(batch) - 1
    # the reasons are kept for the agent to publish with each unit's state
    failures = mgr.failures()
    assert set(failures) == set(batch) - {"web.service"}
    assert "backslash" in failures["joined.service"] and failures["joined.service"].startswith("refused here: ")
    # every reconcile pass asks again: the refusal is logged once
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fleetd.systemd"):
        await mgr.load(batch)
    assert not [r for r in caplog.records if "refusing unit" in r.getMessage()]


async def test_a_batch_of_only_bad_units_does_nothing(manager: tuple[SystemdManager, Recorder]) -> None:
    mgr, rec = manager
    await mgr.load({LONG: GOOD, "joined.service": JOINED})
    assert written(mgr) == [] and rec.calls == []


async def test_start_and_stop_touch_only_units_fleet_loaded_here(manager: tuple[SystemdManager, Recorder]) -> None:
    mgr, rec = manager
    await mgr.load({"web.service": GOOD, "joined.service": JOINED})
    # joined.service was refused: starting it by name would start a host unit of that name
    await mgr.start(["web.service", "joined.service", "dbus.service", "-Hroot@somehost.service", "sshd.service"])
    await mgr.stop(["web.service", "systemd-journald.service", "sshd.service"])
    assert rec.names("StartUnit") == ["web.service"]
    assert rec.names("StopUnit") == ["web.service"]


async def test_unload_leaves_out_bad_names(manager: tuple[SystemdManager, Recorder]) -> None:
    mgr, rec = manager
    await mgr.load({"web.service": GOOD})
    await mgr.unload(["-Hroot@somehost.service", "dbus.service", "web.service"])
    assert rec.names("StopUnit") == ["web.service"]
    assert rec.names("ResetFailedUnit") == ["web.service"]
    assert written(mgr) == []


def test_write_refuses_on_its_own(tmp_path: Path) -> None:
    files = UnitFiles("/run/fleet/units", "/run/systemd/system", tmp_path)
    changed, _ = files.write({LONG: GOOD, "joined.service": JOINED, "web.service": GOOD})
    assert changed == ["web.service"]
    assert sorted(p.name for p in files.local_units_directory.iterdir()) == ["web.service"]


def test_discover_ignores_files_whose_names_break_the_contract(tmp_path: Path) -> None:
    files = UnitFiles("/run/fleet/units", "/run/systemd/system", tmp_path)
    directory = files.local_units_directory
    directory.mkdir(parents=True)
    for name in ("web.service", "dbus.service", "systemd-x.service", LONG):
        (directory / name).write_text(GOOD.serialize())
    assert set(files.discover()) == {"web.service"}


# -- command lines ----------------------------------------------------------------------------


def test_systemctl_status_puts_the_name_after_double_dash() -> None:
    cmd = status_command("web@1.service", lines=5)
    assert cmd == ["systemctl", "status", "--no-pager", "--lines=5", "--", "web@1.service"]
    assert status_command("web.service", user=True)[:2] == ["systemctl", "--user"]


def test_journalctl_attaches_the_name_to_its_option() -> None:
    cmd = journal_command("web.service", 3, output="cat")
    assert "--unit=web.service" in cmd and "web.service" not in cmd
    assert "--user-unit=web.service" in journal_command("web.service", user=True)
    assert not any(arg.startswith("--unit") for arg in journal_command(None))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_command_lines_refuse_bad_names(name: str) -> None:
    with pytest.raises(UnitNameError):
        status_command(name)
    with pytest.raises(UnitNameError):
        journal_command(name)
    with pytest.raises(ValueError):  # the API answers a ValueError with 400
        status_command(name)


async def test_readers_refuse_bad_names_before_running_anything() -> None:
    with pytest.raises(UnitNameError):
        await unit_status_text("-Hroot@somehost.service")
    with pytest.raises(UnitNameError):
        await read_journal("-Hroot@somehost.service").__anext__()
    with pytest.raises(UnitNameError):
        await read_journal("-Hroot@somehost.service", follow=True).__anext__()
