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

The manager only sequences the operations; it composes the parts that hold the rules:

- ``states.py``: :class:`UnitStates` (the managed set, its state cache, and when to trust
  a signal over a query answer) and :class:`JobResults` (how stop jobs ended);
- ``batching.py``: :class:`StateQueries` (coalesced ``ListUnitsBy*`` queries) and
  :class:`UnitCalls` (per-unit calls in parallel, ``*UnitFiles`` calls as one batch);
- ``files.py``: :class:`UnitFiles` (unit files and runtime links on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dbus_fast import Message, Variant

from fleetd.model.state import LocalUnit, StateCallback, SystemdState
from fleetd.model.unitfile import UnitFile
from fleetd.systemd.batching import StateQueries, UnitCalls
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
)
from fleetd.systemd.files import UnitFiles, file_hash, refusal, runtime_dir
from fleetd.systemd.states import JobResults, UnitStates

log = logging.getLogger(__name__)

DEFAULT_UNITS_DIRECTORY = "/run/fleet/units"
#: State of a managed unit systemd has not told us about yet (only if a query failed).
UNKNOWN = SystemdState("unknown", "unknown", "unknown")


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
            units_directory = f"{runtime_dir(True)}/fleet/units" if user else DEFAULT_UNITS_DIRECTORY
        if not os.path.isabs(units_directory):
            raise ValueError(f"units_directory must be absolute: {units_directory!r}")
        self.units_directory = os.path.normpath(units_directory)
        self.root = Path(root)
        self.bus_address = bus_address or default_bus_address(user)
        #: systemd's runtime unit directory, where runtime links and .wants/ go
        self.runtime_unit_dir = f"{runtime_dir(True)}/systemd/user" if user else "/run/systemd/system"
        self._files = UnitFiles(self.units_directory, self.runtime_unit_dir, self.root)
        self.reload_timeout = reload_timeout
        self.stop_timeout = stop_timeout
        self.errors: dict[str, str] = {}
        self._bus = SystemdBus(
            self.bus_address,
            on_signal=self._on_signal,
            on_connected=self._after_connect,
            on_disconnected=self._after_disconnect,
            max_in_flight=max_in_flight,
            call_timeout=call_timeout,
            reconnect_wait=reconnect_wait,
        )
        self._states = UnitStates()
        self._managed = self._states.managed  # name -> hash of its file
        self._jobs = JobResults()
        self._queries = StateQueries(self._bus, self._states)
        self._calls = UnitCalls(self._bus, self.errors)
        self._unreloaded: set[str] = set()  # written/linked, no successful Reload since
        self._reloading = False
        self._own_reloads = 0  # Reloading(false) signals still expected for our Reload calls
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- paths -------------------------------------------------------------------------------

    def unit_path(self, name: str) -> str:
        """Where the file of unit ``name`` is, as systemd sees it."""
        return self._files.unit_path(name)

    @property
    def local_units_directory(self) -> Path:
        return self._files.local_units_directory

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def calls(self) -> Counter[str]:
        """D-Bus calls made so far, by method name."""
        return self._bus.calls

    @property
    def stats(self) -> Counter[str]:
        """Where states came from: "signal" updates vs "query" answers applied."""
        return self._states.stats

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
        found = await asyncio.to_thread(self._files.discover)
        for name, digest in found.items():
            self._states.add(name, digest)
        try:
            await self._bus.connect()
            await self._repair()
        except BaseException:
            await self._bus.close()
            raise

    async def _repair(self) -> None:
        unlinked, dangling = await asyncio.to_thread(self._files.scan_links, self._managed)
        if dangling:
            log.warning(
                "removing %d stale link(s) to removed unit files: %s",
                len(dangling),
                ", ".join(p.name for p in dangling),
            )
            for link in dangling:
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
        if unlinked:
            log.warning(
                "re-linking %d unit(s) found without their link: %s", len(unlinked), ", ".join(sorted(unlinked))
            )
            self._unreloaded.update(unlinked)
            await self.load(unlinked)  # links, enables, and does the one reload
        elif dangling:
            await self._reload()

    async def close(self) -> None:
        """Disconnect; the units keep running (a new instance adopts them)."""
        self._closed = self._queries.closed = True
        tasks = [*self._background, *([self._queries.task] if self._queries.task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._queries.release_waiters()
        self._jobs.release("closed")
        await self._bus.close()

    async def __aenter__(self) -> SystemdManager:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _after_connect(self) -> None:
        self._reloading = False
        if self._managed:
            await self._queries.query(list(self._managed), load=True)

    def _after_disconnect(self) -> None:
        # jobs may finish while we cannot hear it; stop waiting for them
        self._jobs.release("disconnected")
        self._reloading = False
        self._own_reloads = 0

    # -- managed set and state cache ------------------------------------------------------------

    def _forget(self, name: str) -> None:
        self._states.forget(name)
        self._unreloaded.discard(name)
        self.errors.pop(name, None)

    def subscribe(self, callback: StateCallback) -> None:
        self._states.subscribe(callback)

    def state(self, name: str) -> SystemdState | None:
        """The cached state of a managed unit (None if unknown or not managed)."""
        return self._states.get(name)

    async def units(self) -> dict[str, LocalUnit]:
        missing = [name for name in self._managed if name not in self._states]
        if missing and self._bus.connected:
            with contextlib.suppress(SystemdError):
                await self._queries.query(missing, load=True)
        return {
            name: LocalUnit(name, digest, self._states.get(name) or UNKNOWN) for name, digest in self._managed.items()
        }

    # -- signals --------------------------------------------------------------------------------

    def _on_signal(self, msg: Message) -> None:
        member, body = msg.member, msg.body
        if msg.interface == PROPERTIES:
            name = self._states.name_at(msg.path or "")
            if name is None or len(body) < 2 or body[0] != UNIT:
                return
            changed: dict[str, Variant] = body[1]
            invalidated = body[2] if len(body) > 2 else []
            load = self._states.properties_changed(name, changed, invalidated)
            if load is not None:
                self._queries.request([name], load=load)
        elif msg.interface == MANAGER:
            if member == "JobRemoved" and len(body) >= 4:
                _job_id, job_path, unit, result = body[:4]
                self._jobs.finished(job_path, result)
                if unit in self._managed:
                    self._queries.request([unit], load=False)
            elif member == "UnitNew" and body:
                if body[0] in self._managed and not self._reloading:
                    self._queries.request([body[0]], load=False)
            elif member == "UnitRemoved" and body:
                if body[0] in self._managed and not self._reloading:
                    self._states.removed(body[0])
            elif member == "Reloading" and body:
                self._reloading = bool(body[0])
                if self._reloading:
                    return
                if self._own_reloads > 0:
                    # ours: load() queries the units whose files changed; nothing else did
                    self._own_reloads -= 1
                elif self._managed:
                    # someone else's daemon-reload: re-read our units (LoadState may differ)
                    self._queries.request(list(self._managed), load=True)
        elif (
            msg.interface == DBUS and member == "NameOwnerChanged" and len(body) >= 3 and body[0] == SYSTEMD and body[2]
        ):  # systemd (re-)appeared on the bus
            self._spawn(self._resubscribe())

    async def _resubscribe(self) -> None:
        try:
            await self._bus.subscribe()
            await self._queries.query(list(self._managed), load=True)
        except SystemdError as exc:
            log.warning("re-subscribing to systemd failed: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reload ---------------------------------------------------------------------------------------

    async def _reload(self) -> None:
        self._own_reloads += 1
        try:
            await self._bus.call("Reload", timeout=self.reload_timeout)
        except BaseException:
            self._own_reloads = 0  # cannot tell whether it happened; treat reloads as foreign
            raise

    # -- UnitManager ----------------------------------------------------------------------------------

    async def load(self, units: Mapping[str, UnitFile]) -> None:
        """Write the unit files and make systemd see them: link, enable, ONE reload.
        A unit that breaks the unit contract (``files.refusal``) is logged once and left
        out (its reason kept in ``errors``, so the agent publishes it with the unit's
        state); the rest of the batch goes on."""
        accepted = self._files.acceptable(units)
        for name, file in units.items():
            if name not in accepted:
                self.errors[name] = f"refused here: {refusal(name, file)}"
        units = accepted
        if not units:
            return
        changed, disable = await asyncio.to_thread(self._files.write, units)
        for name, file in units.items():
            self._states.add(name, file.hash())
        # a batch that failed before its Reload is redone, even though its files are in place
        changed += [name for name in units if name in self._unreloaded and name not in changed]
        if not changed:
            return
        self._unreloaded.update(changed)
        install = [name for name in changed if "Install" in units[name].sections()]
        await self._calls.files("DisableUnitFiles", "asb", disable, True)
        await self._calls.files("LinkUnitFiles", "asbb", [self.unit_path(n) for n in changed], True, True)
        await self._calls.files("EnableUnitFiles", "asbb", install, True, True)
        await self._reload()
        self._unreloaded.difference_update(changed)
        await self._queries.query(changed, load=True)

    async def unload(self, names: Sequence[str]) -> None:
        """Stop, disable, reset-failed, remove file and links; then ONE reload."""
        names = self._files.acceptable_names(list(dict.fromkeys(names)))
        if not names:
            return
        replies = await self._calls.each("StopUnit", names, "replace", quiet=True)
        await self._jobs.wait([r[0] for r in replies.values()], self.stop_timeout)
        exists = await asyncio.to_thread(self._files.existing, names)
        await self._calls.files("DisableUnitFiles", "asb", exists, True)
        await self._calls.each("ResetFailedUnit", names, signature="s", quiet=True)
        for name in names:
            self._forget(name)
        await asyncio.to_thread(self._files.remove, names)
        await self._reload()

    def failures(self) -> dict[str, str]:
        return dict(self.errors)

    def _managed_only(self, names: Sequence[str], verb: str) -> list[str]:
        """``names`` that are fleet's units here. A unit whose load was refused (or never
        happened) is not: starting or stopping it by name would act on the host's own
        unit of that name, if there is one."""
        kept: list[str] = []
        for name in self._files.acceptable_names(list(dict.fromkeys(names))):
            if name in self._managed:
                kept.append(name)
            else:
                self._files.refuse(name, "its unit file is not loaded by fleet here", f"not {verb}")
        return kept

    async def start(self, names: Sequence[str]) -> None:
        """Enqueue start jobs (mode ``replace``) for managed units; states follow by signal."""
        await self._calls.each("StartUnit", self._managed_only(names, "starting"), "replace")

    async def stop(self, names: Sequence[str]) -> None:
        """Enqueue stop jobs (mode ``replace``) for managed units; states follow by signal."""
        await self._calls.each("StopUnit", self._managed_only(names, "stopping"), "replace")


__all__ = [
    "DEFAULT_UNITS_DIRECTORY",
    "SystemdCallError",
    "SystemdError",
    "SystemdManager",
    "SystemdUnavailable",
    "UNKNOWN",
    "file_hash",
]
