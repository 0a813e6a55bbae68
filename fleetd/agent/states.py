"""Publishing unit states: from the service manager's signals to the registry, in batches.

systemd reports every state change of every unit; a burst of a thousand starts produces
thousands of changes. They are collected (the latest state per unit wins), and written
after a short debounce as a handful of batched writes on the agent's lease, so a dead
machine's states vanish with it. A failed write keeps the states pending and retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from fleetd.agent.manager import LocalUnit, SystemdState, UnitManager
from fleetd.aio import settle
from fleetd.model.history import EventKind, HistoryEvent
from fleetd.model.state import UnitState
from fleetd.registry.registry import LeaseNotFound, Registry
from fleetd.settings import Settings

log = logging.getLogger(__name__)

# How long to wait before retrying a failed write of states (the registry is away).
RETRY_DELAY = 0.5
# Longest a state change waits while changes keep coming (seconds): see StatePublisher.run.
PUBLISH_LIMIT = 0.25


class StatePublisher:
    def __init__(
        self,
        registry: Registry,
        manager: UnitManager,
        machine_id: str,
        settings: Settings,
        lease: Callable[[], int | None],
        errors: Callable[[], Mapping[str, tuple[str, str]]] = dict,
    ) -> None:
        """``lease()`` gives the agent's current lease, or None while it is not registered;
        ``errors()`` the units fleet could not act on here: name -> (error, unit hash)."""
        self.registry = registry
        self.manager = manager
        self.machine_id = machine_id
        self.settings = settings
        self._lease = lease
        self._errors = errors
        self.published: dict[str, UnitState] = {}
        # latest state by unit; None: "look at the unit again" (its error changed)
        self._pending: dict[str, SystemdState | None] = {}
        self._dirty = asyncio.Event()
        # called when a write meets an expired lease (the agent then registers again)
        self.on_lease_lost: Callable[[], None] = lambda: None
        # history: the agent sets it; a unit's failure (systemd's "failed", or an error
        # fleet met acting on it) is recorded once, when it appears or changes
        self.record: Callable[[list[HistoryEvent]], None] | None = None
        self._failure_seen: dict[str, str] = {}

    def changed(self, name: str, state: SystemdState) -> None:
        """The service manager's callback: remember the latest state, publish soon."""
        self._pending[name] = state
        self._dirty.set()

    def touch(self, name: str) -> None:
        """Publish this unit's record again if it changed (e.g. an error appeared or cleared)."""
        self._pending.setdefault(name, None)
        self._dirty.set()

    def republish(self, local: Mapping[str, LocalUnit]) -> None:
        """After a new registration: the new lease holds no states yet, so publish all."""
        self.published.clear()
        for name, unit in local.items():
            self._pending[name] = unit.state
        self._dirty.set()

    async def unpublish(self, names: Iterable[str]) -> None:
        """Units that left this machine: drop what is pending and what was published."""
        gone = []
        for name in names:
            self._pending.pop(name, None)
            if self.published.pop(name, None) is not None:
                gone.append(name)
        lease = self._lease()
        if gone and lease is not None:
            await self.registry.publish_states(self.machine_id, lease, [], gone)

    async def run(self) -> None:
        """Write state changes in batches, forever.

        A lone change is written after one quiet ``debounce``; while changes keep coming
        (a burst of starts: each unit goes activating, then active, over a second or two)
        they are written at most every ``PUBLISH_LIMIT``. Writing every ``debounce``
        instead cost ~75 etcd transactions for 200 units on a host, most holding two or
        three states, each a gRPC call here and a commit in etcd."""
        while True:
            await self._dirty.wait()
            await settle(self._dirty, self.settings.debounce, PUBLISH_LIMIT)
            pending, self._pending = self._pending, {}
            local = await self.manager.units()
            errors = {**{n: (e, "") for n, e in self.manager.failures().items()}, **self._errors()}
            changed: list[UnitState] = []
            gone: list[str] = []
            for name, state in pending.items():
                record = self._record(name, state, local, errors)
                if record is None:
                    if name in self.published:
                        gone.append(name)
                elif self.published.get(name) != record:
                    changed.append(record)
            self._record_failures(changed, gone)
            lease = self._lease()
            if not (changed or gone) or lease is None:
                if changed or gone:  # not registered: keep them for when it is
                    self._keep(changed, gone)
                continue
            try:
                await self.registry.publish_states(self.machine_id, lease, changed, gone)
            except LeaseNotFound:
                log.info("publishing unit states: the lease expired; waiting for a new registration")
                self.on_lease_lost()
                self._keep(changed, gone)
                await asyncio.sleep(RETRY_DELAY)
                self._dirty.set()
                continue
            except Exception as exc:  # noqa: BLE001 - registry away: retry these later
                log.info("publishing unit states failed (%s); will retry", exc or type(exc).__name__)
                self._keep(changed, gone)
                await asyncio.sleep(RETRY_DELAY)
                self._dirty.set()
                continue
            for record in changed:
                self.published[record.name] = record
            for name in gone:
                self.published.pop(name, None)

    def _record(
        self,
        name: str,
        state: SystemdState | None,
        local: Mapping[str, LocalUnit],
        errors: Mapping[str, tuple[str, str]],
    ) -> UnitState | None:
        """The record to publish for a unit; None when there is nothing to show (not
        loaded here, and no error). A unit that could not even be loaded is shown as
        systemd shows a unit with a bad file: load state "error"."""
        error, error_hash = errors.get(name, ("", ""))
        unit = local.get(name)
        if unit is None:
            if not error:
                return None
            return UnitState(name, self.machine_id, error_hash, "error", "inactive", "dead", error)
        now = state or unit.state
        return UnitState(name, self.machine_id, unit.hash, now.load, now.active, now.sub, error)

    def _record_failures(self, changed: list[UnitState], gone: list[str]) -> None:
        """History: each failure once, when it appears or its reason changes."""
        events = []
        for record in changed:
            if record.error:
                why = record.error
            elif record.active_state == "failed":
                why = f"systemd: failed ({record.sub_state})"
            else:
                self._failure_seen.pop(record.name, None)
                continue
            if self._failure_seen.get(record.name) != why:
                self._failure_seen[record.name] = why
                events.append(HistoryEvent(time.time(), EventKind.FAILED, record.name, self.machine_id, why))
        for name in gone:
            self._failure_seen.pop(name, None)
        if events and self.record is not None:
            self.record(events)

    def _keep(self, records: list[UnitState], gone: list[str]) -> None:
        for record in records:
            self._pending.setdefault(
                record.name, SystemdState(record.load_state, record.active_state, record.sub_state)
            )
        for name in gone:
            self._pending.setdefault(name, None)
