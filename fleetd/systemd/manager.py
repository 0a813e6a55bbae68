"""The agent's unit manager on a real machine: unit files + systemd over D-Bus.

How units get onto the machine
    ``load`` writes each unit file into ``units_directory`` (default ``/run/fleet/units``,
    a runtime directory: a rebooted machine starts clean, as fleet's did), links the
    changed ones as *runtime* units (``LinkUnitFiles(runtime=True, force=True)``, one call
    for the batch), runtime-enables those with an ``[Install]`` section
    (``EnableUnitFiles(runtime=True)``, one call), then does ONE ``Reload`` for the whole
    batch. ``unload`` stops the units (and waits for the stop jobs, bounded), disables
    them, resets their failed state, removes the files and links, then one ``Reload``.
    ``start``/``stop`` enqueue jobs with mode ``replace`` and return without waiting for
    them: the outcome arrives as state changes.

How states are known
    By signals, not by polling. After ``Subscribe`` systemd sends ``PropertiesChanged``
    (ActiveState/SubState) for every unit object, and ``UnitNew``/``UnitRemoved``/
    ``JobRemoved``/``Reloading`` on the manager. The cache of managed units' states is
    updated from those signals; a batch query (``ListUnitsByNames`` after a reload or a
    reconnect, which also yields LoadState; the non-loading ``ListUnitsByPatterns`` when a
    signal only says "something happened to this unit") fills what signals do not carry.
    ``units()`` answers from the cache. Callbacks registered with ``subscribe`` run on
    every change of a managed unit's state.

    A stopped unit that nothing references is unloaded by systemd (``UnitRemoved``); it is
    then reported as inactive/dead with its last known LoadState, which is what systemd
    reports when it loads it again. Queries never race signals: a queried state is only
    applied to a unit that received no signal while the query was in flight.

What is managed
    Exactly the files in ``units_directory``, so a restarted fleetd re-discovers its units
    (and their states, from systemd) without touching them: that is how the agent adopts
    running units instead of restarting them.

``root`` lets the adapter drive a systemd in another mount namespace (a test host): files
are written under ``root`` + path, while systemd is told the path as it sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dbus_fast import Message, Variant

from fleetd.model.state import LocalUnit, StateCallback, SystemdState
from fleetd.model.errors import UnitFileError
from fleetd.model.names import validate_unit_name
from fleetd.model.unitfile import UnitFile, parse_unit_file
from fleetd.systemd.bus import (
    DBUS,
    MANAGER,
    PROPERTIES,
    SYSTEMD,
    UNIT,
    SystemdBus,
    SystemdCallError,
    SystemdError,
    SystemdUnavailable,
    default_bus_address,
    unit_object_path,
)

log = logging.getLogger(__name__)

DEFAULT_UNITS_DIRECTORY = "/run/fleet/units"
#: State of a managed unit systemd has not told us about yet (only if a query failed).
UNKNOWN = SystemdState("unknown", "unknown", "unknown")
_QUERY_CHUNK = 512  # names per ListUnitsBy* call
_RECENT_JOBS = 4096  # finished jobs remembered, for waiters that come after the signal


def _runtime_dir(user: bool) -> str:
    if user:
        return os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return "/run"


def _has_install(text: str) -> bool:
    try:
        return "Install" in parse_unit_file(text).sections()
    except UnitFileError:
        return "[Install]" in text


def file_hash(text: str) -> str:
    """The fleet hash of a unit file's text (canonical form; raw SHA-1 if it does not parse)."""
    try:
        return parse_unit_file(text).hash()
    except UnitFileError:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()


class SystemdManager:
    """:class:`fleetd.agent.manager.UnitManager` on systemd (system or user manager).

    ``units_directory``: where unit files go, as systemd sees it (default
    ``/run/fleet/units``; for ``user=True`` ``$XDG_RUNTIME_DIR/fleet/units``). It must be
    fleet's alone: every unit file in it is a unit fleet manages.
    ``bus_address``: D-Bus address (default: the system bus, or for ``user=True`` the
    session bus from ``$DBUS_SESSION_BUS_ADDRESS`` or ``/run/user/UID/bus``).
    ``root``: where that systemd's ``/`` is from here (default ``/``).
    ``max_in_flight``: most D-Bus calls outstanding at once. ``stop_timeout``: how long
    ``unload`` waits for stop jobs before removing the files anyway.

    ``calls`` counts D-Bus calls by method (``calls["Reload"]``); ``errors`` holds the
    last per-unit failure of start/stop/load, by unit name.
    """

    def __init__(
        self,
        units_directory: str | None = None,
        bus_address: str | None = None,
        user: bool = False,
        *,
        root: str | os.PathLike[str] = "/",
        max_in_flight: int = 64,
        call_timeout: float = 60.0,
        reload_timeout: float = 300.0,
        stop_timeout: float = 90.0,
        reconnect_wait: float = 15.0,
    ) -> None:
        self.user = user
        if units_directory is None:
            units_directory = (f"{_runtime_dir(True)}/fleet/units" if user
                               else DEFAULT_UNITS_DIRECTORY)
        if not os.path.isabs(units_directory):
            raise ValueError(f"units_directory must be absolute: {units_directory!r}")
        self.units_directory = os.path.normpath(units_directory)
        self.root = Path(root)
        self.bus_address = bus_address or default_bus_address(user)
        #: systemd's runtime unit directory, where runtime links and .wants/ go
        self.runtime_unit_dir = (f"{_runtime_dir(True)}/systemd/user" if user
                                 else "/run/systemd/system")
        self.reload_timeout = reload_timeout
        self.stop_timeout = stop_timeout
        self.errors: dict[str, str] = {}
        #: where states came from: "signal" updates vs "query" answers applied
        self.stats: Counter[str] = Counter()
        self._bus = SystemdBus(
            self.bus_address,
            on_signal=self._on_signal,
            on_connected=self._after_connect,
            on_disconnected=self._after_disconnect,
            max_in_flight=max_in_flight,
            call_timeout=call_timeout,
            reconnect_wait=reconnect_wait,
        )
        self._managed: dict[str, str] = {}  # name -> hash of its file
        self._paths: dict[str, str] = {}  # unit object path -> name (managed only)
        self._states: dict[str, SystemdState] = {}
        self._callbacks: list[StateCallback] = []
        self._seq = 0  # counts state updates that came from signals
        self._signalled: dict[str, int] = {}  # name -> _seq of its last signal update
        self._unreloaded: set[str] = set()  # written/linked, no successful Reload since
        self._reloading = False
        self._own_reloads = 0  # Reloading(false) signals still expected for our Reload calls
        self._job_waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._recent_jobs: OrderedDict[str, str] = OrderedDict()
        # coalesced state queries (see _request_query)
        self._pending_load: set[str] = set()
        self._pending_probe: set[str] = set()
        self._query_requested = 0
        self._query_done = 0
        self._query_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._query_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- paths -------------------------------------------------------------------------------

    def _local(self, path: str) -> Path:
        """A path as systemd sees it -> the same file from here."""
        return self.root / path.lstrip("/")

    def unit_path(self, name: str) -> str:
        """Where the file of unit ``name`` is, as systemd sees it."""
        return f"{self.units_directory}/{name}"

    @property
    def local_units_directory(self) -> Path:
        return self._local(self.units_directory)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def calls(self) -> Counter[str]:
        """D-Bus calls made so far, by method name."""
        return self._bus.calls

    @property
    def bus(self) -> SystemdBus:
        return self._bus

    @property
    def connected(self) -> bool:
        return self._bus.connected

    async def connect(self) -> None:
        """Find the units fleet manages here, connect, Subscribe and learn their states.

        Also finishes what a crash may have left half-done: a unit file without its
        runtime link is linked again, a link whose file is gone is removed (one Reload,
        only when something was repaired). Running units are left alone.
        """
        found = await asyncio.to_thread(self._discover)
        for name, digest in found.items():
            self._add_managed(name, digest)
        try:
            await self._bus.connect()
            await self._repair()
        except BaseException:
            await self._bus.close()
            raise

    def _scan_links(self) -> tuple[dict[str, UnitFile], list[Path]]:
        """(managed units whose runtime link is missing, links to our files that are gone)."""
        unlinked: dict[str, UnitFile] = {}
        for name in self._managed:
            if not self._link_ok(name):
                try:
                    unlinked[name] = parse_unit_file(
                        (self.local_units_directory / name).read_text(encoding="utf-8"))
                except (OSError, UnitFileError) as exc:
                    log.warning("cannot re-link %s: %s", name, exc)
        dangling: list[Path] = []
        links_root = self._local(self.runtime_unit_dir)
        prefix = self.units_directory + "/"
        try:
            dirs = [links_root] + [Path(d.path) for d in os.scandir(links_root)
                                   if d.is_dir(follow_symlinks=False)]
        except OSError:
            dirs = []
        for directory in dirs:
            with contextlib.suppress(OSError):
                for entry in os.scandir(directory):
                    if not entry.is_symlink():
                        continue
                    target = os.readlink(entry.path)
                    if target.startswith(prefix) and target[len(prefix):] not in self._managed:
                        dangling.append(Path(entry.path))
        return unlinked, dangling

    async def _repair(self) -> None:
        unlinked, dangling = await asyncio.to_thread(self._scan_links)
        if dangling:
            log.warning("removing %d stale link(s) to removed unit files: %s", len(dangling),
                        ", ".join(p.name for p in dangling))
            for link in dangling:
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
        if unlinked:
            log.warning("re-linking %d unit(s) found without their link: %s", len(unlinked),
                        ", ".join(sorted(unlinked)))
            self._unreloaded.update(unlinked)
            await self.load(unlinked)  # links, enables, and does the one reload
        elif dangling:
            await self._reload()

    async def close(self) -> None:
        """Disconnect; the units keep running (a new instance adopts them)."""
        self._closed = True
        for task in [*self._background, *([self._query_task] if self._query_task else [])]:
            task.cancel()
        for task in [*self._background, *([self._query_task] if self._query_task else [])]:
            with contextlib.suppress(BaseException):
                await task
        self._release_query_waiters()
        self._release_job_waiters("closed")
        await self._bus.close()

    async def __aenter__(self) -> SystemdManager:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _discover(self) -> dict[str, str]:
        found: dict[str, str] = {}
        directory = self.local_units_directory
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                validate_unit_name(entry.name)
                text = Path(entry.path).read_text(encoding="utf-8")
            except (ValueError, OSError) as exc:
                log.warning("ignoring %s in %s: %s", entry.name, directory, exc)
                continue
            found[entry.name] = file_hash(text)
        return found

    async def _after_connect(self) -> None:
        self._reloading = False
        if self._managed:
            await self._query(list(self._managed), load=True)

    def _after_disconnect(self) -> None:
        # jobs may finish while we cannot hear it; stop waiting for them
        self._release_job_waiters("disconnected")
        self._reloading = False
        self._own_reloads = 0

    # -- managed set and state cache ------------------------------------------------------------

    def _add_managed(self, name: str, digest: str) -> None:
        self._managed[name] = digest
        self._paths[unit_object_path(name)] = name

    def _forget(self, name: str) -> None:
        self._managed.pop(name, None)
        self._unreloaded.discard(name)
        self._paths.pop(unit_object_path(name), None)
        self._states.pop(name, None)
        self._signalled.pop(name, None)
        self.errors.pop(name, None)

    def subscribe(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)

    def _set_state(self, name: str, state: SystemdState) -> None:
        if name not in self._managed or self._states.get(name) == state:
            return
        self._states[name] = state
        for callback in list(self._callbacks):
            try:
                callback(name, state)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the others
                log.exception("unit state callback failed for %s", name)

    def _signalled_state(self, name: str, state: SystemdState) -> None:
        self.stats["signal"] += 1
        self._seq += 1
        self._signalled[name] = self._seq
        self._set_state(name, state)

    def state(self, name: str) -> SystemdState | None:
        """The cached state of a managed unit (None if unknown or not managed)."""
        return self._states.get(name)

    async def units(self) -> dict[str, LocalUnit]:
        missing = [name for name in self._managed if name not in self._states]
        if missing and self._bus.connected:
            with contextlib.suppress(SystemdError):
                await self._query(missing, load=True)
        return {
            name: LocalUnit(name, digest, self._states.get(name, UNKNOWN))
            for name, digest in self._managed.items()
        }

    # -- signals --------------------------------------------------------------------------------

    def _on_signal(self, msg: Message) -> None:
        member, body = msg.member, msg.body
        if msg.interface == PROPERTIES:
            name = self._paths.get(msg.path or "")
            if name is None or len(body) < 2 or body[0] != UNIT:
                return
            changed: dict[str, Variant] = body[1]
            invalidated = body[2] if len(body) > 2 else []
            active = changed.get("ActiveState")
            sub = changed.get("SubState")
            prev = self._states.get(name)
            if active is None and sub is None:
                if {"ActiveState", "SubState", "LoadState"} & set(invalidated):
                    self._request_query([name], load=False)
                return
            if prev is None or active is None or sub is None:
                self._request_query([name], load=prev is None)
            self._signalled_state(name, SystemdState(
                prev.load if prev else "loaded",
                active.value if active is not None else (prev.active if prev else "unknown"),
                sub.value if sub is not None else (prev.sub if prev else "unknown"),
            ))
        elif msg.interface == MANAGER:
            if member == "JobRemoved" and len(body) >= 4:
                _job_id, job_path, unit, result = body[:4]
                self._job_finished(job_path, result)
                if unit in self._managed:
                    self._request_query([unit], load=False)
            elif member == "UnitNew" and body:
                if body[0] in self._managed and not self._reloading:
                    self._request_query([body[0]], load=False)
            elif member == "UnitRemoved" and body:
                name = body[0]
                if name in self._managed and not self._reloading:
                    # garbage-collected: only ever happens to an inactive unit
                    prev = self._states.get(name)
                    self._signalled_state(
                        name, SystemdState(prev.load if prev else "loaded", "inactive", "dead"))
            elif member == "Reloading" and body:
                self._reloading = bool(body[0])
                if self._reloading:
                    return
                if self._own_reloads > 0:
                    # ours: load() queries the units whose files changed; nothing else did
                    self._own_reloads -= 1
                elif self._managed:
                    # someone else's daemon-reload: re-read our units (LoadState may differ)
                    self._request_query(list(self._managed), load=True)
        elif msg.interface == DBUS and member == "NameOwnerChanged" and len(body) >= 3:
            if body[0] == SYSTEMD and body[2]:  # systemd (re-)appeared on the bus
                self._spawn(self._resubscribe())

    async def _resubscribe(self) -> None:
        try:
            await self._bus.subscribe()
            await self._query(list(self._managed), load=True)
        except SystemdError as exc:
            log.warning("re-subscribing to systemd failed: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- jobs -----------------------------------------------------------------------------------

    def _job_finished(self, path: str, result: str) -> None:
        self._recent_jobs[path] = result
        while len(self._recent_jobs) > _RECENT_JOBS:
            self._recent_jobs.popitem(last=False)
        for fut in self._job_waiters.pop(path, []):
            if not fut.done():
                fut.set_result(result)

    def _release_job_waiters(self, result: str) -> None:
        waiters, self._job_waiters = self._job_waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(result)

    async def _wait_jobs(self, paths: Iterable[str], timeout: float) -> dict[str, str]:
        """Wait (at most ``timeout`` s) for jobs to finish; their results by job path."""
        loop = asyncio.get_running_loop()
        results: dict[str, str] = {}
        futs: dict[str, asyncio.Future[str]] = {}
        for path in paths:
            if path in self._recent_jobs:
                results[path] = self._recent_jobs[path]
            else:
                fut = loop.create_future()
                self._job_waiters.setdefault(path, []).append(fut)
                futs[path] = fut
        if futs:
            done, pending = await asyncio.wait(futs.values(), timeout=timeout)
            for path, fut in futs.items():
                if fut in done:
                    results[path] = fut.result()
                else:
                    fut.cancel()
                    with contextlib.suppress(ValueError, KeyError):
                        self._job_waiters[path].remove(fut)
                        if not self._job_waiters[path]:
                            del self._job_waiters[path]
            if pending:
                log.warning("%d job(s) still running after %.0fs", len(pending), timeout)
        return results

    # -- state queries ----------------------------------------------------------------------------

    def _request_query(self, names: Iterable[str], *, load: bool) -> int:
        """Queue a state query for ``names``; all queued names go out together, soon."""
        (self._pending_load if load else self._pending_probe).update(names)
        self._query_requested += 1
        if not self._closed and (self._query_task is None or self._query_task.done()):
            self._query_task = asyncio.ensure_future(self._query_worker())
        return self._query_requested

    async def _query(self, names: Sequence[str], *, load: bool) -> None:
        """Query ``names`` (coalesced with other pending queries) and wait for the answer."""
        generation = self._request_query(names, load=load)
        if self._query_done >= generation:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._query_waiters.append((generation, fut))
        await fut

    def _release_query_waiters(self, upto: int | None = None) -> None:
        keep = []
        for generation, fut in self._query_waiters:
            if upto is None or generation <= upto:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((generation, fut))
        self._query_waiters = keep

    async def _query_worker(self) -> None:
        try:
            while self._pending_load or self._pending_probe:
                await asyncio.sleep(0)  # let signals of the same burst join this query
                generation = self._query_requested
                load = self._pending_load & self._managed.keys()
                probe = (self._pending_probe & self._managed.keys()) - load
                self._pending_load, self._pending_probe = set(), set()
                try:
                    chunks = [(sorted(load)[i:i + _QUERY_CHUNK], True)
                              for i in range(0, len(load), _QUERY_CHUNK)]
                    chunks += [(sorted(probe)[i:i + _QUERY_CHUNK], False)
                               for i in range(0, len(probe), _QUERY_CHUNK)]
                    await asyncio.gather(*(self._query_now(c, loading) for c, loading in chunks))
                except SystemdError as exc:
                    log.warning("querying unit states failed: %s", exc)
                self._query_done = generation
                self._release_query_waiters(generation)
        finally:
            if self._closed:
                self._release_query_waiters()

    async def _query_now(self, names: list[str], loading: bool) -> None:
        start = self._seq
        if loading:  # loads units that are not in memory, so LoadState is known
            rows = (await self._bus.call("ListUnitsByNames", "as", [names]))[0]
        else:  # only units in memory; never loads one (no UnitNew/UnitRemoved churn)
            rows = (await self._bus.call("ListUnitsByPatterns", "asas", [[], names]))[0]
        found: dict[str, SystemdState] = {}
        pairs: Iterable[tuple[str, Any]]
        if loading and len(rows) == len(names):
            pairs = zip(names, rows)
        else:
            pairs = ((row[0], row) for row in rows)
        for name, row in pairs:
            found[name] = SystemdState(row[2], row[3], row[4])
        for name in names:
            if name not in self._managed:
                continue
            prev = self._states.get(name)
            state = found.get(name)
            if state is None:  # not in memory: what systemd shows when it loads it again
                state = SystemdState(prev.load if prev else "loaded", "inactive", "dead")
            if self._signalled.get(name, -1) > start and prev is not None:
                # a signal came while the query was out: it may be newer than the answer;
                # signals never carry LoadState, so take only that from the answer
                state = SystemdState(state.load, prev.active, prev.sub)
            self.stats["query"] += 1
            self._set_state(name, state)

    # -- files ------------------------------------------------------------------------------------

    def _link_ok(self, name: str) -> bool:
        try:
            return os.readlink(self._local(f"{self.runtime_unit_dir}/{name}")) == self.unit_path(name)
        except OSError:
            return False

    def _write_files(self, units: Mapping[str, UnitFile]) -> tuple[list[str], list[str]]:
        """Write changed files; (names that need link+reload, names to disable first)."""
        directory = self.local_units_directory
        directory.mkdir(parents=True, exist_ok=True)
        changed: list[str] = []
        disable: list[str] = []
        for name, file in units.items():
            text = file.serialize()
            target = directory / name
            try:
                old: str | None = target.read_text(encoding="utf-8")
            except FileNotFoundError:
                old = None
            if old == text and self._link_ok(name):
                continue
            if old != text:
                tmp = directory / f".{name}.tmp"
                tmp.write_text(text, encoding="utf-8")
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
                if old is not None and _has_install(old) and "Install" not in file.sections():
                    disable.append(name)
            changed.append(name)
        return changed, disable

    def _remove_files(self, names: Sequence[str]) -> None:
        links_root = self._local(self.runtime_unit_dir)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.local_units_directory / name).unlink()
            # DisableUnitFiles removed the links; clean up after a failed or partial one
            candidates = [links_root / name]
            with contextlib.suppress(OSError):
                candidates += [Path(d.path) / name for d in os.scandir(links_root)
                               if d.is_dir(follow_symlinks=False) and
                               d.name.endswith((".wants", ".requires", ".upholds"))]
            for link in candidates:
                with contextlib.suppress(OSError):
                    if os.readlink(link) == self.unit_path(name):
                        link.unlink()

    # -- batch calls --------------------------------------------------------------------------------

    async def _each(self, method: str, names: Sequence[str], *args: Any,
                    signature: str = "ss", quiet: bool = False) -> dict[str, Any]:
        """Call ``method(name, *args)`` for every name concurrently (bounded by the bus).

        Returns the replies by name; per-unit D-Bus errors are logged and kept in
        ``errors``; a lost bus raises SystemdUnavailable after every call has ended.
        """
        async def one(name: str) -> Any:
            return await self._bus.call(method, signature, [name, *args])

        results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        replies: dict[str, Any] = {}
        unavailable: BaseException | None = None
        for name, result in zip(names, results):
            if isinstance(result, SystemdCallError):
                if not quiet:
                    self.errors[name] = str(result)
                    log.warning("%s %s failed: %s", method, name, result.text or result.name)
            elif isinstance(result, BaseException):
                unavailable = unavailable or result
            else:
                self.errors.pop(name, None)
                replies[name] = result
        if unavailable is not None:
            raise unavailable
        return replies

    async def _file_call(self, method: str, signature: str, items: list[str],
                         *flags: bool) -> None:
        """A *UnitFiles call for a batch; on error, retry one by one to isolate the culprit."""
        if not items:
            return
        try:
            await self._bus.call(method, signature, [items, *flags])
            return
        except SystemdCallError as exc:
            if len(items) == 1:
                self.errors[os.path.basename(items[0])] = str(exc)
                log.warning("%s %s failed: %s", method, items[0], exc.text or exc.name)
                return
        for item in items:
            await self._file_call(method, signature, [item], *flags)

    async def _reload(self) -> None:
        self._own_reloads += 1
        try:
            await self._bus.call("Reload", timeout=self.reload_timeout)
        except BaseException:
            self._own_reloads = 0  # cannot tell whether it happened; treat reloads as foreign
            raise

    # -- UnitManager ----------------------------------------------------------------------------------

    async def load(self, units: Mapping[str, UnitFile]) -> None:
        """Write the unit files and make systemd see them: link, enable, ONE reload."""
        for name in units:
            validate_unit_name(name)
        if not units:
            return
        changed, disable = await asyncio.to_thread(self._write_files, units)
        for name, file in units.items():
            self._add_managed(name, file.hash())
        # a batch that failed before its Reload is redone, even though its files are in place
        changed += [name for name in units if name in self._unreloaded and name not in changed]
        if not changed:
            return
        self._unreloaded.update(changed)
        install = [name for name in changed if "Install" in units[name].sections()]
        await self._file_call("DisableUnitFiles", "asb", disable, True)
        await self._file_call("LinkUnitFiles", "asbb", [self.unit_path(n) for n in changed],
                              True, True)
        await self._file_call("EnableUnitFiles", "asbb", install, True, True)
        await self._reload()
        self._unreloaded.difference_update(changed)
        await self._query(changed, load=True)

    async def unload(self, names: Sequence[str]) -> None:
        """Stop, disable, reset-failed, remove file and links; then ONE reload."""
        names = list(dict.fromkeys(names))
        for name in names:
            validate_unit_name(name)
        if not names:
            return
        replies = await self._each("StopUnit", names, "replace", quiet=True)
        await self._wait_jobs([r[0] for r in replies.values()], self.stop_timeout)
        exists = await asyncio.to_thread(
            lambda: [n for n in names if (self.local_units_directory / n).exists()])
        await self._file_call("DisableUnitFiles", "asb", exists, True)
        await self._each("ResetFailedUnit", names, signature="s", quiet=True)
        for name in names:
            self._forget(name)
        await asyncio.to_thread(self._remove_files, names)
        await self._reload()

    async def start(self, names: Sequence[str]) -> None:
        """Enqueue start jobs (mode ``replace``); states follow by signal."""
        await self._each("StartUnit", list(dict.fromkeys(names)), "replace")

    async def stop(self, names: Sequence[str]) -> None:
        """Enqueue stop jobs (mode ``replace``); states follow by signal."""
        await self._each("StopUnit", list(dict.fromkeys(names)), "replace")


__all__ = [
    "DEFAULT_UNITS_DIRECTORY",
    "SystemdCallError",
    "SystemdError",
    "SystemdManager",
    "SystemdUnavailable",
    "UNKNOWN",
    "file_hash",
]
