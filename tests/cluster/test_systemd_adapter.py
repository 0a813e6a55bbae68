"""The systemd adapter (fleetd.systemd) against a real systemd in a namespaced test host.

One host is shared by the module; every test uses unit names of its own. The adapter
connects from outside the host: to its bus through /proc/PID/root, writing files under
``root=/proc/PID/root`` while telling systemd the paths it sees inside. States are awaited
through the adapter's subscribe callback with a deadline, never with fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fleetd.agent.manager import SystemdState
from fleetd.model.unitfile import UnitFile, parse_unit_file
from fleetd.systemd import (
    SystemdManager,
    SystemdUnavailable,
    default_bus_address,
    read_journal,
    unit_object_path,
    unit_status_text,
)
from fleetlab.hosts import Host, HostLab
from fleetlab.wait import wait_until_async

pytestmark = pytest.mark.cluster

UNITS_DIR = "/run/fleet/units"
TIMEOUT = 20.0
LOADED = SystemdState("loaded", "inactive", "dead")
RUNNING = SystemdState("loaded", "active", "running")
FAILED = SystemdState("loaded", "failed", "failed")


def unit(text: str) -> UnitFile:
    return parse_unit_file(text)


SLEEPER = unit("[Unit]\nDescription=sleeps\n\n[Service]\nExecStart=/bin/sleep infinity\n")


class Recorder:
    """A subscribe callback that keeps every state it is given and wakes waiters."""

    def __init__(self) -> None:
        self.latest: dict[str, SystemdState] = {}
        self.history: list[tuple[str, SystemdState]] = []
        self._changed = asyncio.Event()

    def __call__(self, name: str, state: SystemdState) -> None:
        self.latest[name] = state
        self.history.append((name, state))
        self._changed.set()

    async def wait_for(self, pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout}s waiting for {what}; latest: {self.latest}")
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def wait_state(self, names: str | list[str], state: SystemdState, timeout: float = TIMEOUT) -> None:
        names = [names] if isinstance(names, str) else names
        await self.wait_for(
            lambda: all(self.latest.get(n) == state for n in names),
            f"{len(names)} unit(s) {names[:3]} to be {state}",
            timeout,
        )


async def in_host(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking host helper (nsenter ...) without stalling the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def host(lab: HostLab) -> Host:
    h = lab.start_host("sd1", network=False)
    h.wait_running(60)
    return h


Factory = Callable[..., Awaitable[tuple[SystemdManager, Recorder]]]


@pytest.fixture
async def managers(host: Host) -> AsyncIterator[Factory]:
    """Connect SystemdManagers to the host (a recorder subscribed before connect)."""
    made: list[SystemdManager] = []

    async def make(**kwargs: Any) -> tuple[SystemdManager, Recorder]:
        mgr = SystemdManager(UNITS_DIR, bus_address=host.dbus_address, root=host.root_path, **kwargs)
        rec = Recorder()
        mgr.subscribe(rec)
        await mgr.connect()
        made.append(mgr)
        return mgr, rec

    yield make
    for mgr in made:
        await mgr.close()


def names_of(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}-{tag}-{i:02d}.service" for i in range(n)]


# ---------------------------------------------------------------------------- lifecycle


async def test_load_start_stop_unload(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    [name] = names_of("life", 1)
    local_file = host.root_path / UNITS_DIR.lstrip("/") / name
    link = host.root_path / "run/systemd/system" / name

    await mgr.load({name: SLEEPER})
    assert local_file.read_text() == SLEEPER.serialize()
    assert os.readlink(link) == f"{UNITS_DIR}/{name}"  # linked as systemd sees the path
    await rec.wait_state(name, LOADED)
    assert (await in_host(host.systemctl, "is-enabled", name, check=False)).stdout.strip() == "linked-runtime"
    listed = await mgr.units()
    assert listed[name].hash == SLEEPER.hash()
    assert listed[name].state == LOADED

    signals_before = mgr.stats["signal"]
    await mgr.start([name])
    await rec.wait_state(name, RUNNING)
    assert await in_host(host.unit_property, name, "ActiveState") == "active"
    assert await in_host(host.unit_property, name, "SubState") == "running"
    assert mgr.stats["signal"] > signals_before  # the change came by PropertiesChanged
    assert mgr.calls["Get"] == mgr.calls["GetAll"] == 0  # no per-unit property polling
    assert (await mgr.units())[name].state == RUNNING

    await mgr.stop([name])
    await rec.wait_state(name, LOADED)
    assert await in_host(host.unit_property, name, "ActiveState") == "inactive"

    reloads = mgr.calls["Reload"]
    await mgr.unload([name])
    assert mgr.calls["Reload"] == reloads + 1
    assert not local_file.exists()
    assert not os.path.lexists(link)
    assert await in_host(host.unit_property, name, "LoadState") == "not-found"
    assert name not in await mgr.units()


async def test_batch_of_twenty_is_one_reload_and_calls_are_bounded(host: Host, managers: Factory) -> None:
    mgr, rec = await managers(max_in_flight=4)
    names = names_of("batch", 20)
    calls_before = dict(mgr.calls)

    await mgr.load(dict.fromkeys(names, SLEEPER))
    assert mgr.calls["Reload"] - calls_before.get("Reload", 0) == 1
    assert mgr.calls["LinkUnitFiles"] - calls_before.get("LinkUnitFiles", 0) == 1
    assert mgr.calls["EnableUnitFiles"] == calls_before.get("EnableUnitFiles", 0)  # no [Install]

    await mgr.start(names)
    await rec.wait_state(names, RUNNING)
    assert 1 < mgr.bus.peak_in_flight <= 4
    out = await in_host(
        host.systemctl, "list-units", "--no-legend", "--plain", "--state=running", f"{names[0][: -len('00.service')]}*"
    )
    assert len(out.stdout.split("\n")) - 1 == 20, out.stdout

    # loading the same files again changes nothing, so it costs no call at all
    calls_mid = sum(mgr.calls.values())
    await mgr.load(dict.fromkeys(names, SLEEPER))
    assert sum(mgr.calls.values()) == calls_mid

    reloads = mgr.calls["Reload"]
    await mgr.unload(names)
    assert mgr.calls["Reload"] == reloads + 1
    assert not any((host.root_path / UNITS_DIR.lstrip("/") / n).exists() for n in names)
    out = await in_host(
        host.systemctl, "list-units", "--all", "--no-legend", "--plain", f"{names[0][: -len('00.service')]}*"
    )
    assert out.stdout.strip() == ""
    assert set(names).isdisjoint(await mgr.units())


async def test_changed_file_is_rewritten_and_reloaded(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    [name] = names_of("change", 1)
    await mgr.load({name: SLEEPER})
    new = unit("[Unit]\nDescription=changed\n\n[Service]\nExecStart=/bin/sleep 1000\n")
    reloads = mgr.calls["Reload"]
    await mgr.load({name: new})
    assert mgr.calls["Reload"] == reloads + 1
    assert (await mgr.units())[name].hash == new.hash()
    assert await in_host(host.unit_property, name, "Description") == "changed"
    await mgr.unload([name])


async def test_install_section_is_runtime_enabled(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    plain, installed = names_of("inst", 2)
    file = unit("[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n")
    wants = host.root_path / "run/systemd/system/multi-user.target.wants" / installed

    await mgr.load({plain: SLEEPER, installed: file})
    assert mgr.calls["EnableUnitFiles"] == 1
    assert (await in_host(host.systemctl, "is-enabled", installed)).stdout.strip() == "enabled-runtime"
    assert (await in_host(host.systemctl, "is-enabled", plain, check=False)).stdout.strip() == "linked-runtime"
    assert os.readlink(wants) == f"{UNITS_DIR}/{installed}"

    await mgr.unload([plain, installed])
    assert not os.path.lexists(wants)
    for name in (plain, installed):
        out = await in_host(host.systemctl, "is-enabled", name, check=False)
        assert out.returncode != 0 and "enabled" not in out.stdout


async def test_failing_unit_reports_failed_and_unload_resets_it(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    [name] = names_of("fail", 1)
    await mgr.load({name: unit("[Service]\nExecStart=/bin/false\n")})
    await mgr.start([name])
    await rec.wait_state(name, FAILED)
    assert (await mgr.units())[name].state == FAILED
    assert (await in_host(host.systemctl, "is-failed", name, check=False)).stdout.strip() == "failed"

    await mgr.unload([name])
    out = await in_host(host.systemctl, "is-failed", name, check=False)
    assert out.stdout.strip() != "failed"  # reset-failed: nothing lingers
    assert await in_host(host.unit_property, name, "LoadState") == "not-found"


async def test_unit_systemd_refuses_is_reported_not_raised(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    bad, good = names_of("bad", 2)
    # no ExecStart=: systemd loads it as bad-setting and refuses to start it
    await mgr.load({bad: unit("[Service]\nUser=root\n"), good: SLEEPER})
    await rec.wait_for(lambda: rec.latest.get(bad, LOADED).load == "bad-setting", "LoadState bad-setting")
    await mgr.start([bad, good])  # one refusal does not stop the batch, nor raise
    await rec.wait_state(good, RUNNING)
    assert bad in mgr.errors and good not in mgr.errors
    assert (await mgr.units())[bad].state.load == "bad-setting"
    await mgr.unload([bad, good])
    assert bad not in mgr.errors


async def test_restarted_fleetd_adopts_running_units(host: Host, managers: Factory) -> None:
    first, rec1 = await managers()
    names = names_of("adopt", 3)
    files = {
        names[0]: SLEEPER,
        names[1]: unit("[Service]\nExecStart=/bin/sleep 3600\n\n[Install]\nWantedBy=multi-user.target\n"),
        names[2]: SLEEPER,
    }
    await first.load(files)
    await first.start(names[:2])  # the third stays loaded, inactive
    await rec1.wait_state(names[:2], RUNNING)
    pids = {n: await in_host(host.unit_property, n, "MainPID") for n in names[:2]}
    assert all(int(p) > 0 for p in pids.values())
    await first.close()  # fleetd goes away; the units keep running

    second, rec2 = await managers()
    listed = await second.units()
    assert set(names) <= set(listed)
    for n in names:
        assert listed[n].hash == files[n].hash()
    assert listed[names[0]].state == listed[names[1]].state == RUNNING
    assert listed[names[2]].state == LOADED
    # the states were learnt at connect and announced to subscribers; nothing was started
    assert all(rec2.latest.get(n) == listed[n].state for n in names)
    assert second.calls["StartUnit"] == second.calls["Reload"] == 0
    for n in names[:2]:
        assert await in_host(host.unit_property, n, "MainPID") == pids[n]

    # and the new instance follows them by signal
    await in_host(host.systemctl, "stop", names[0])
    await rec2.wait_state(names[0], LOADED)
    await second.unload(names)


async def test_restart_finishes_what_a_crash_left_half_done(host: Host, managers: Factory) -> None:
    first, _ = await managers()
    kept, gone = names_of("crash", 2)
    await first.load({kept: SLEEPER, gone: SLEEPER})
    await first.close()
    # as if fleetd died mid-load (file written, not linked) and mid-unload (file removed)
    runtime = host.root_path / "run/systemd/system"
    (runtime / kept).unlink()
    (host.root_path / UNITS_DIR.lstrip("/") / gone).unlink()

    second, rec = await managers()
    assert os.readlink(runtime / kept) == f"{UNITS_DIR}/{kept}"
    assert not os.path.lexists(runtime / gone)
    assert second.calls["Reload"] == 1
    assert set(await second.units()) >= {kept} and gone not in await second.units()
    await rec.wait_state(kept, LOADED)
    await second.unload([kept])


async def test_reconnects_and_catches_up(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    a, b = names_of("recon", 2)
    await mgr.load({a: SLEEPER, b: SLEEPER})
    await mgr.start([a, b])
    await rec.wait_state([a, b], RUNNING)

    # the bus goes away and stays away while a unit changes state behind our back
    good = mgr.bus.address
    mgr.bus.address = "unix:path=/nonexistent/fleet-test-bus"
    connects = mgr.bus.connects
    mgr.bus.drop()
    await wait_until_async(lambda: not mgr.connected, TIMEOUT, "the adapter to notice the lost bus", 0.01)
    await in_host(host.systemctl, "stop", a)
    mgr.bus.address = good
    await wait_until_async(lambda: mgr.bus.connects == connects + 1 and mgr.connected, TIMEOUT, "reconnect", 0.01)
    await rec.wait_state(a, LOADED)  # missed signal, caught up by the refresh

    # subscribed again: changes arrive by signal, and calls work
    await in_host(host.systemctl, "stop", b)
    await rec.wait_state(b, LOADED)
    await mgr.start([a])
    await rec.wait_state(a, RUNNING)
    await mgr.unload([a, b])


async def test_survives_a_restart_of_the_bus_daemon(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    [name] = names_of("dbus", 1)
    await mgr.load({name: SLEEPER})
    await mgr.start([name])
    await rec.wait_state(name, RUNNING)
    connects = mgr.bus.connects
    await in_host(host.systemctl, "restart", "dbus.service")
    await wait_until_async(
        lambda: mgr.bus.connects > connects and mgr.connected, TIMEOUT, "reconnect to the new dbus-daemon", 0.01
    )
    await in_host(host.systemctl, "stop", name)
    await rec.wait_state(name, LOADED)
    await mgr.start([name])
    await rec.wait_state(name, RUNNING)
    await mgr.unload([name])


async def test_calls_retry_across_a_dropped_connection(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    [name] = names_of("retry", 1)
    await mgr.load({name: SLEEPER})
    mgr.bus.drop()  # the next call waits for the reconnect, then goes through
    await mgr.start([name])
    await rec.wait_state(name, RUNNING)
    await mgr.unload([name])


# ------------------------------------------------------------------------------ journal


async def test_journal_reads_and_follows_a_unit(host: Host, managers: Factory) -> None:
    mgr, rec = await managers()
    [name] = names_of("journal", 1)
    marker = f"hello-{uuid.uuid4().hex[:8]}"
    await mgr.load(
        {
            name: unit(
                f"[Service]\nExecStart=/bin/sh -c 'echo {marker}-1; echo {marker}-2; sleep 0.1; "
                f"echo {marker}-3; exec sleep infinity'\n"
            )
        }
    )
    directory = host.root_path / "run/log/journal"

    # systemd 252's own `journalctl -f` drops lines of such a burst; read_journal must not
    follow = read_journal(name, lines=5, follow=True, directory=directory, output="cat")
    await mgr.start([name])
    seen: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            async for line in follow:
                seen.append(line)
                if line == f"{marker}-3":
                    break
    except TimeoutError:
        pytest.fail(
            f"journal -f never showed {marker}: saw {seen}; state {mgr.state(name)}; journal: {host.journal(name)}"
        )
    finally:
        await follow.aclose()  # ends journalctl
    assert [line for line in seen if marker in line] == [f"{marker}-{i}" for i in (1, 2, 3)]

    lines = [line async for line in read_journal(name, lines=10, directory=directory)]
    assert any(marker in line for line in lines), lines
    json_lines = [line async for line in read_journal(name, lines=1, output="json", directory=directory)]
    assert len(json_lines) == 1 and json_lines[0].startswith("{")
    assert [line async for line in read_journal("nothing-here.service", directory=directory)] == []

    status = await unit_status_text(name, prefix=["nsenter", "-t", str(host.pid), "-m", "-p"])
    assert name in status and "active (running)" in status and marker in status
    await mgr.unload([name])
    status = await unit_status_text(name, prefix=["nsenter", "-t", str(host.pid), "-m", "-p"])
    assert name in status  # "could not be found": still text, not an error


# -------------------------------------------------------------------------- pure pieces


def test_unit_object_paths_follow_systemds_escaping() -> None:
    assert unit_object_path("x.service") == "/org/freedesktop/systemd1/unit/x_2eservice"
    assert unit_object_path("web@1.service") == "/org/freedesktop/systemd1/unit/web_401_2eservice"
    assert unit_object_path("1st.service") == "/org/freedesktop/systemd1/unit/_31st_2eservice"


def test_bus_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert default_bus_address() == "unix:path=/run/dbus/system_bus_socket"
    assert default_bus_address(user=True) == f"unix:path=/run/user/{os.getuid()}/bus"
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/tmp/session")
    assert default_bus_address(user=True) == "unix:path=/tmp/session"
    mgr = SystemdManager(user=True)
    assert mgr.bus_address == "unix:path=/tmp/session"
    assert mgr.runtime_unit_dir == f"/run/user/{os.getuid()}/systemd/user"
    assert SystemdManager().units_directory == "/run/fleet/units"
    assert Path(SystemdManager(root="/x").local_units_directory) == Path("/x/run/fleet/units")


async def test_connect_fails_clearly_without_a_bus(tmp_path: Path) -> None:
    mgr = SystemdManager(str(tmp_path / "units"), bus_address=f"unix:path={tmp_path}/no-bus")
    with pytest.raises(SystemdUnavailable, match="cannot connect"):
        await mgr.connect()
    await mgr.close()
