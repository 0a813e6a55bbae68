"""Few D-Bus calls for many units: coalesced state queries and concurrent per-unit calls.

A machine may run thousands of fleet units, and a burst of signals or a batch command
touches many of them at once. Calling systemd once per unit and per event would flood
the bus, so:

- :class:`StateQueries` collects the names that need a fresh state and sends them together
  (``ListUnitsByNames`` / ``ListUnitsByPatterns``, at most ``_QUERY_CHUNK`` names a call)
  once the current burst of signals has been handled; callers that need the answer wait
  for the query that covers their request.
- :class:`UnitCalls` sends per-unit calls concurrently (the bus bounds how many are in
  flight) and sends ``*UnitFiles`` calls as one batch, retrying one by one only to find
  which unit systemd refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from fleetd.model.state import SystemdState
from fleetd.systemd.bus import SystemdBus, SystemdCallError, SystemdError
from fleetd.systemd.states import UnitStates

log = logging.getLogger(__name__)

_QUERY_CHUNK = 512  # names per ListUnitsBy* call


class StateQueries:
    """State queries for managed units, coalesced and applied to ``states``.

    A *loading* query (``ListUnitsByNames``) makes systemd load units that are not in
    memory, so their LoadState is known; a *probe* (``ListUnitsByPatterns``) only sees
    units in memory and never loads one (no UnitNew/UnitRemoved churn). A name pending
    for both is sent once, loading.
    """

    def __init__(self, bus: SystemdBus, states: UnitStates) -> None:
        self._bus = bus
        self._states = states
        self._pending_load: set[str] = set()
        self._pending_probe: set[str] = set()
        self._requested = 0
        self._done = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        #: set when the adapter closes: no new worker starts, pending waits are released
        self.closed = False

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The worker sending queries, if one was started."""
        return self._task

    def request(self, names: Iterable[str], *, load: bool) -> int:
        """Queue a state query for ``names``; all queued names go out together, soon."""
        (self._pending_load if load else self._pending_probe).update(names)
        self._requested += 1
        if not self.closed and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._worker())
        return self._requested

    async def query(self, names: Sequence[str], *, load: bool) -> None:
        """Query ``names`` (coalesced with other pending queries) and wait for the answer."""
        generation = self.request(names, load=load)
        if self._done >= generation:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((generation, fut))
        await fut

    def release_waiters(self, upto: int | None = None) -> None:
        """Wake those waiting for requests up to ``upto`` (all of them if None)."""
        keep = []
        for generation, fut in self._waiters:
            if upto is None or generation <= upto:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((generation, fut))
        self._waiters = keep

    async def _worker(self) -> None:
        managed = self._states.managed
        try:
            while self._pending_load or self._pending_probe:
                await asyncio.sleep(0)  # let signals of the same burst join this query
                generation = self._requested
                load = self._pending_load & managed.keys()
                probe = (self._pending_probe & managed.keys()) - load
                self._pending_load, self._pending_probe = set(), set()
                try:
                    chunks = [(sorted(load)[i : i + _QUERY_CHUNK], True) for i in range(0, len(load), _QUERY_CHUNK)]
                    chunks += [(sorted(probe)[i : i + _QUERY_CHUNK], False) for i in range(0, len(probe), _QUERY_CHUNK)]
                    await asyncio.gather(*(self._send(c, loading) for c, loading in chunks))
                except SystemdError as exc:
                    log.warning("querying unit states failed: %s", exc)
                self._done = generation
                self.release_waiters(generation)
        finally:
            if self.closed:
                self.release_waiters()

    async def _send(self, names: list[str], loading: bool) -> None:
        since = self._states.mark()
        if loading:  # loads units that are not in memory, so LoadState is known
            rows = (await self._bus.call("ListUnitsByNames", "as", [names]))[0]
        else:  # only units in memory; never loads one (no UnitNew/UnitRemoved churn)
            rows = (await self._bus.call("ListUnitsByPatterns", "asas", [[], names]))[0]
        pairs: Iterable[tuple[str, Any]]
        if loading and len(rows) == len(names):
            pairs = zip(names, rows, strict=True)
        else:
            pairs = ((row[0], row) for row in rows)
        found = {name: SystemdState(row[2], row[3], row[4]) for name, row in pairs}
        self._states.answered(names, found, since)


class UnitCalls:
    """Calls that act on many units, with per-unit failures recorded in ``errors``
    (by unit name) instead of failing the whole batch."""

    def __init__(self, bus: SystemdBus, errors: dict[str, str]) -> None:
        self._bus = bus
        self.errors = errors

    async def each(
        self, method: str, names: Sequence[str], *args: Any, signature: str = "ss", quiet: bool = False
    ) -> dict[str, Any]:
        """Call ``method(name, *args)`` for every name concurrently (bounded by the bus).

        Returns the replies by name; per-unit D-Bus errors are logged and kept in
        ``errors``; a lost bus raises SystemdUnavailable after every call has ended.
        """

        async def one(name: str) -> Any:
            return await self._bus.call(method, signature, [name, *args])

        results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        replies: dict[str, Any] = {}
        unavailable: BaseException | None = None
        for name, result in zip(names, results, strict=True):
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

    async def files(self, method: str, signature: str, items: list[str], *flags: bool) -> None:
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
            await self.files(method, signature, [item], *flags)


__all__ = ["StateQueries", "UnitCalls"]
