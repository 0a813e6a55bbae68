"""What the adapter knows about its units' states, learnt from systemd's signals.

Kept apart from the manager because the rules here are about *trusting* information, not
about talking to systemd: a signal is the newest word on a unit, a query answer may be
older than a signal that arrived while it was in flight, and ``UnitRemoved`` means "no
longer in memory", which systemd itself reports as inactive/dead once it loads the unit
again. :class:`UnitStates` applies those rules; :class:`JobResults` remembers how jobs
ended so a caller that waits after the ``JobRemoved`` signal still gets its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping

from dbus_fast import Variant

from fleetd.model.state import StateCallback, SystemdState
from fleetd.systemd.bus import unit_object_path

log = logging.getLogger(__name__)

_RECENT_JOBS = 4096  # finished jobs remembered, for waiters that come after the signal


def unloaded_state(prev: SystemdState | None) -> SystemdState:
    """A unit systemd no longer has in memory: what systemd shows when it loads it again."""
    return SystemdState(prev.load if prev else "loaded", "inactive", "dead")


class UnitStates:
    """The managed units (name -> hash of its file) and their cached systemd states.

    Only managed units have a state here, and subscribers hear only about them. ``stats``
    counts where applied states came from: ``"signal"`` updates vs ``"query"`` answers.
    """

    def __init__(self) -> None:
        self.managed: dict[str, str] = {}
        self.stats: Counter[str] = Counter()
        self._paths: dict[str, str] = {}  # unit object path -> name (managed only)
        self._states: dict[str, SystemdState] = {}
        self._callbacks: list[StateCallback] = []
        self._seq = 0  # counts state updates that came from signals
        self._signalled: dict[str, int] = {}  # name -> _seq of its last signal update

    # -- the managed set ---------------------------------------------------------------------

    def add(self, name: str, digest: str) -> None:
        self.managed[name] = digest
        self._paths[unit_object_path(name)] = name

    def forget(self, name: str) -> None:
        self.managed.pop(name, None)
        self._paths.pop(unit_object_path(name), None)
        self._states.pop(name, None)
        self._signalled.pop(name, None)

    def name_at(self, path: str) -> str | None:
        """The managed unit whose D-Bus object is at ``path``, if any."""
        return self._paths.get(path)

    # -- states ------------------------------------------------------------------------------

    def subscribe(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)

    def get(self, name: str) -> SystemdState | None:
        return self._states.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._states

    def _set(self, name: str, state: SystemdState) -> None:
        if name not in self.managed or self._states.get(name) == state:
            return
        self._states[name] = state
        for callback in list(self._callbacks):
            try:
                callback(name, state)
            except Exception:  # a subscriber's bug must not stop the others
                log.exception("unit state callback failed for %s", name)

    def signalled(self, name: str, state: SystemdState) -> None:
        """A state a signal told us: the newest there is."""
        self.stats["signal"] += 1
        self._seq += 1
        self._signalled[name] = self._seq
        self._set(name, state)

    def mark(self) -> int:
        """A point in the signal sequence; pass it to :meth:`answered` for a query sent now."""
        return self._seq

    def answered(self, names: Iterable[str], found: Mapping[str, SystemdState], since: int) -> None:
        """Apply a query answer for ``names`` (``found``: those systemd has in memory),
        sent at :meth:`mark` ``since``.

        A unit that got a signal while the query was out keeps the signalled Active/Sub
        state (it may be newer than the answer); signals never carry LoadState, so that
        is taken from the answer.
        """
        for name in names:
            if name not in self.managed:
                continue
            prev = self._states.get(name)
            state = found.get(name)
            if state is None:
                state = unloaded_state(prev)
            if self._signalled.get(name, -1) > since and prev is not None:
                state = SystemdState(state.load, prev.active, prev.sub)
            self.stats["query"] += 1
            self._set(name, state)

    def properties_changed(self, name: str, changed: Mapping[str, Variant], invalidated: Iterable[str]) -> bool | None:
        """Apply a unit's ``PropertiesChanged``; returns the query it calls for, if any
        (``True``: a loading query, ``False``: a probe, ``None``: none)."""
        active = changed.get("ActiveState")
        sub = changed.get("SubState")
        prev = self._states.get(name)
        if active is None and sub is None:
            if {"ActiveState", "SubState", "LoadState"} & set(invalidated):
                return False
            return None
        query: bool | None = None
        if prev is None or active is None or sub is None:
            query = prev is None  # half a picture: fill it in (and LoadState, if new)
        self.signalled(
            name,
            SystemdState(
                prev.load if prev else "loaded",
                active.value if active is not None else (prev.active if prev else "unknown"),
                sub.value if sub is not None else (prev.sub if prev else "unknown"),
            ),
        )
        return query

    def removed(self, name: str) -> None:
        """``UnitRemoved``: garbage-collected, which only ever happens to an inactive unit."""
        self.signalled(name, unloaded_state(self._states.get(name)))


class JobResults:
    """How systemd jobs ended (``JobRemoved``), for callers waiting on them."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._recent: OrderedDict[str, str] = OrderedDict()

    def finished(self, path: str, result: str) -> None:
        self._recent[path] = result
        while len(self._recent) > _RECENT_JOBS:
            self._recent.popitem(last=False)
        for fut in self._waiters.pop(path, []):
            if not fut.done():
                fut.set_result(result)

    def release(self, result: str) -> None:
        """End every wait with ``result`` (the bus is gone: no signal will come)."""
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(result)

    async def wait(self, paths: Iterable[str], timeout: float) -> dict[str, str]:
        """Wait (at most ``timeout`` s) for jobs to finish; their results by job path."""
        loop = asyncio.get_running_loop()
        results: dict[str, str] = {}
        futs: dict[str, asyncio.Future[str]] = {}
        for path in paths:
            if path in self._recent:
                results[path] = self._recent[path]
            else:
                fut = loop.create_future()
                self._waiters.setdefault(path, []).append(fut)
                futs[path] = fut
        if futs:
            done, pending = await asyncio.wait(futs.values(), timeout=timeout)
            for path, fut in futs.items():
                if fut in done:
                    results[path] = fut.result()
                else:
                    fut.cancel()
                    with contextlib.suppress(ValueError, KeyError):
                        self._waiters[path].remove(fut)
                        if not self._waiters[path]:
                            del self._waiters[path]
            if pending:
                log.warning("%d job(s) still running after %.0fs", len(pending), timeout)
        return results


__all__ = ["JobResults", "UnitStates", "unloaded_state"]
