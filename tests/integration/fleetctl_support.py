"""Support for the fleetctl integration tests (no tests here): fleetd's real API served
in-process on a unix socket and TCP, over a real etcd, in a background event loop; and
ways to run fleetctl against it (in-process, and as a subprocess for exit codes)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetctl.main import run
from fleetd.api import Node, TcpListener, UnixListener, make_app, start_api
from fleetd.api.listeners import ApiServer
from fleetd.model.state import MachineState, ScheduledUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.registry.registry import Leadership, Registry
from fleetlab.etcd import EtcdCluster

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"


class Loop:
    """An asyncio loop in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class FakeJournal:
    """Numbered lines of a unit's journal (then with follow a tick every 50 ms)."""

    def __init__(self, machine_id: str) -> None:
        self.machine_id = machine_id
        self.calls: list[tuple[str, int, bool, str]] = []

    async def __call__(self, unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        self.calls.append((unit, lines, follow, output))
        if unit == "missing.service":
            raise LookupError(f"no journal entries for {unit}")
        for index in range(lines):
            yield f"{unit} line {index} on {self.machine_id[:4]}"
        count = 0
        while follow:
            await asyncio.sleep(0.05)
            count += 1
            yield f"tick {count} on {self.machine_id[:4]}"


async def finite_journal(unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
    """A journal that always ends (a few of the asked lines, then with follow two more), so
    a generated ``follow=true`` cannot hang a fuzzing run; ``missing.service`` has none."""
    if unit == "missing.service":
        raise LookupError(f"no journal entries for {unit}")
    for index in range(min(lines, 3)):
        yield f"{unit} line {index}"
    if follow:
        for tick in range(2):
            yield f"tick {tick}"


async def finite_status(unit: str) -> str:
    """``systemctl status`` text; ``missing.service`` is not loaded."""
    if unit == "missing.service":
        raise LookupError(f"unit {unit} is not loaded here")
    return f"* {unit} - hello\n   Active: active (running)\n"


def fake_status(machine_id: str) -> Any:
    async def status(unit: str) -> str:
        return f"* {unit} - on {machine_id[:8]}\n   Active: active (running)\n"

    return status


@dataclass
class Api:
    """One fleetd API (a machine's) over the shared registry."""

    machine_id: str
    socket: str
    host: str
    port: int
    server: ApiServer
    journal: FakeJournal

    tls: bool = False

    @property
    def tcp(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def unix(self) -> str:
        return f"unix://{self.socket}"


@dataclass
class Fleet:
    """A registry under a private prefix and fleetd APIs serving it."""

    loop: Loop
    etcd: EtcdCluster
    prefix: str
    tmp: Path
    registry: Registry | None = None
    apis: list[Api] = field(default_factory=list)
    lease: int = 0
    leadership: Leadership | None = None

    def start(self) -> Fleet:
        async def open_registry() -> Registry:  # built inside the loop that will use it
            return connect(EtcdConfig(endpoints=tuple(self.etcd.endpoints), request_timeout=5), self.prefix)

        self.registry = self.loop.run(open_registry())
        return self

    def add_api(
        self, machine_id: str, host: str = "127.0.0.1", port: int = 0, token: str | None = TOKEN, context: Any = None
    ) -> Api:
        assert self.registry is not None
        path = str(self.tmp / f"fleet-{len(self.apis)}.sock")
        journal = FakeJournal(machine_id)
        node = Node(machine_id, journal_source=journal, status_source=fake_status(machine_id))

        async def serve() -> ApiServer:
            app = make_app(self.registry, node)  # type: ignore[arg-type]
            return await start_api(app, [UnixListener(path, mode=0o600), TcpListener(host, port, context, token=token)])

        server = self.loop.run(serve())
        api = Api(machine_id, path, host, server.tcp_port(), server, journal, tls=context is not None)
        self.apis.append(api)
        return api

    # -- writing the cluster directly ------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run(coro)

    def _lease(self) -> int:
        assert self.registry is not None
        if not self.lease:
            self.lease = self.run(self.registry.grant_lease(120))
        return self.lease

    def add_machine(self, machine_id: str, ip: str = "", metadata: dict[str, str] | None = None) -> None:
        assert self.registry is not None
        lease = self.run(self.registry.grant_lease(120))
        self.run(self.registry.register_machine(MachineState(machine_id, ip, dict(metadata or {})), lease))

    def publish(self, *states: UnitState) -> None:
        assert self.registry is not None
        for item in states:
            self.run(self.registry.publish_states(item.machine_id, self._lease(), [item]))

    def place(
        self, machine_id: str, name: str, desired: str = "launched", reason: dict[str, str | None] | None = None
    ) -> None:
        assert self.registry is not None
        registry = self.registry
        if self.leadership is None:
            self.leadership = self.run(registry.acquire_leadership("test-engine", self._lease()))
        assert self.leadership is not None
        unit = self.run(registry.get_unit(name))
        assert unit is not None, name
        self.run(
            registry.apply_schedule(
                self.leadership, [(machine_id, ScheduledUnit(name, unit.file, DesiredState(desired)))], [], reason
            )
        )

    def set_reasons(self, reasons: dict[str, str | None]) -> None:
        assert self.registry is not None
        if self.leadership is None:
            self.leadership = self.run(self.registry.acquire_leadership("test-engine", self._lease()))
        assert self.leadership is not None
        self.run(self.registry.apply_schedule(self.leadership, [], [], reasons))

    def units(self) -> dict[str, Any]:
        assert self.registry is not None
        return {u.name: u for u in self.run(self.registry.units())}

    def close(self) -> None:
        for api in self.apis:
            with contextlib.suppress(Exception):
                self.loop.run(api.server.close())
        if self.registry is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self.registry.close())


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    loop = Loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def fleet(loop: Loop, etcd: EtcdCluster, key_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(loop, etcd, key_prefix, tmp_path).start()
    try:
        yield fleet
    finally:
        fleet.close()


# -- running fleetctl -------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


def fleetctl(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
    """fleetctl in this process (fast); ``env`` replaces FLEETCTL_* variables."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("FLEETCTL_")}
    saved_cwd = os.getcwd()
    for key in saved:
        del os.environ[key]
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    try:
        if cwd is not None:
            os.chdir(cwd)
        code = run(list(argv), out, err)
    finally:
        os.chdir(saved_cwd)
        for key in [k for k in os.environ if k.startswith("FLEETCTL_")]:
            del os.environ[key]
        os.environ.update(saved)
    return Result(code, out.getvalue(), err.getvalue())


def fleetctl_process(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> Result:
    """fleetctl as its own process (``python -m fleetctl.main``)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    environment.update(env or {})
    environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "fleetctl.main", *argv],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def write_units(directory: Path, units: dict[str, str]) -> list[str]:
    paths = []
    for name, text in units.items():
        path = directory / name
        path.write_text(text)
        paths.append(str(path))
    return paths


def state(
    name: str, machine: str, active: str = "active", sub: str = "running", load: str = "loaded", hash_: str = ""
) -> UnitState:
    return UnitState(name, machine, hash_, load, active, sub)


def canonical(text: str) -> str:
    return parse_unit_file(text).serialize()


def names_of(lines: Iterable[str]) -> list[str]:
    return [line.split()[0] for line in lines if line.strip()]
