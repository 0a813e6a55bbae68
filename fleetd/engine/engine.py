"""The engine loop: win leadership, keep a live snapshot from watches, plan, apply.

Thin on purpose: every decision is made by the pure scheduler over an in-memory snapshot.
The snapshot is loaded once from etcd, then kept current by watch events on units,
machines and the schedule, so a machine whose lease expires is noticed by its delete
event at once, not by polling. A timer replans every ``engine_reconcile_interval`` and
re-reads everything every ``engine_resync_interval`` as a safety net.

Every write is guarded by the leadership term (see ``Registry.apply_schedule``): an engine
that lost its lease while partitioned cannot change anything once another has taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fleetd.aio import cancel_and_wait, settle
from fleetd.engine.history import machine_events, schedule_events
from fleetd.engine.reconcile import ClusterView, schedule_changes
from fleetd.engine.updates import Updater
from fleetd.history import HistoryRecorder, prune_history
from fleetd.metrics import Metrics
from fleetd.registry.registry import Leadership, NotLeader, Registry, Resync
from fleetd.settings import Settings

log = logging.getLogger(__name__)

# Longest the engine waits for a burst of unit events to end before it plans anyway
# (seconds). fleetctl's thousand units reach etcd in ~16 transactions over a few hundred
# milliseconds; planning once for all of them means each agent gets its share at once.
SETTLE_LIMIT = 0.5


@dataclass
class EngineStats:
    """Counters for tests and benchmarks."""

    plans: int = 0
    writes: int = 0
    terms: int = 0
    last_plan_s: float = 0.0
    placed_total: int = 0
    # quiet windows waited before planning (more than plans: bursts were coalesced)
    settle_windows: int = 0


@dataclass
class Engine:
    registry: Registry
    machine_id: str
    settings: Settings = field(default_factory=Settings)
    stats: EngineStats = field(default_factory=EngineStats)
    # where the leader's decisions go (fleetd.history); None records nothing
    history: HistoryRecorder | None = None
    # the daemon's series (fleetd.metrics); by default the engine's own, unexported
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self.leading = asyncio.Event()
        self._dirty = asyncio.Event()
        self.view = ClusterView()
        self.reasons: dict[str, str] = {}
        self.leadership: Leadership | None = None
        self.updater: Updater | None = None  # the current term's (rolling updates)

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Campaign for leadership forever; lead while elected; stand by otherwise."""
        registry = self.registry
        while not self._stopping.is_set():
            lease = 0
            try:
                lease = await registry.grant_lease(max(1, round(self.settings.engine_ttl)))
                leadership = await registry.acquire_leadership(self.machine_id, lease)
                if leadership is None:
                    await registry.revoke_lease(lease)
                    lease = 0
                    await self._wait_for_vacancy()
                    continue
                self.stats.terms += 1
                self.leadership = leadership
                log.info("engine on %s is the leader (term %d)", self.machine_id, leadership.create_revision)
                await self._lead(leadership)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("engine on %s: stepping down after an error", self.machine_id, exc_info=True)
                await self._sleep(min(1.0, self.settings.engine_ttl / 4))
            finally:
                self.leading.clear()
                self.leadership = None
                if lease:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(registry.revoke_lease(lease))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait_for_vacancy(self) -> None:
        """Return when the leader is gone, when stopping, or after engine_ttl to re-check."""
        vacant = asyncio.ensure_future(self.registry.wait_leader_vacant())
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({vacant, stopper}, timeout=self.settings.engine_ttl, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([vacant, stopper])

    # -- leading -------------------------------------------------------------------------

    async def _lead(self, leadership: Leadership) -> None:
        tasks: list[asyncio.Task[None]] = []
        lost = asyncio.Event()
        try:
            revision = await self._load()
            self.leading.set()
            tasks.append(asyncio.create_task(self._keepalive(leadership.lease, lost)))
            registry = self.registry
            tasks.append(asyncio.create_task(self._follow(registry.watch_units(revision + 1), "apply_unit", lost)))
            tasks.append(
                asyncio.create_task(self._follow(registry.watch_machines(revision + 1), "apply_machine", lost))
            )
            tasks.append(
                asyncio.create_task(self._follow(registry.watch_placements(revision + 1), "apply_placement", lost))
            )
            tasks.append(asyncio.create_task(self._timer()))
            if self.history is not None:  # the leader keeps the history within its retention
                keep, age = self.settings.history_keep, self.settings.history_max_age
                tasks.append(asyncio.create_task(prune_history(self.registry, keep, age)))
            # rolling updates (fleetd/engine/updates.py); a refused step ends the term
            self.updater = Updater(registry, leadership, self.history)
            tasks.append(asyncio.create_task(self.updater.run(lost, self._dirty)))
            await self._plan_loop(leadership, lost)
        finally:
            await cancel_and_wait(tasks)

    async def _load(self) -> int:
        """Read units, machines and the schedule into a new view; returns the revision
        to watch after."""
        read = await self.registry.read_cluster()
        view = ClusterView()
        for unit in read.units:
            view.apply_unit(unit)
        for machine in read.machines:
            view.apply_machine(machine)
        for placement in read.placements:
            view.apply_placement(placement)
        self.reasons = await self.registry.unplaceable()
        self.view = view
        self._dirty.set()
        return read.revision

    async def _keepalive(self, lease: int, lost: asyncio.Event) -> None:
        interval = self.settings.keepalive_interval(self.settings.engine_ttl)
        while True:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(max(interval, 1.0)):  # a hung call costs one beat
                    ttl = await self.registry.keepalive(lease)
            except Exception:
                log.info("engine lease keepalive failed; retrying", exc_info=True)
                continue
            if ttl <= 0:
                log.warning("engine lease expired; stepping down")
                lost.set()
                self._dirty.set()
                return

    async def _follow(self, events: AsyncIterator[list[Any]], method: str, lost: asyncio.Event) -> None:
        """Feed one watch into the view. Any failure of the watch ends the term (the
        leader then re-reads everything): a view that silently stopped following would
        plan on stale data for good."""
        try:
            async for batch in events:
                apply = getattr(self.view, method)  # the view is replaced on a resync
                before = self._machine_ips() if method == "apply_machine" else None
                for event in batch:
                    apply(event)
                if before is not None and self.history is not None:
                    self.history.record(machine_events(before, self._machine_ips(), time.time()))
                self._dirty.set()
        except asyncio.CancelledError:
            raise
        except Resync:
            log.warning("engine watch (%s) compacted; reloading", method)
        except Exception:
            log.warning("engine watch (%s) failed; reloading", method, exc_info=True)
        lost.set()  # simplest correct recovery: re-run the term from a fresh read
        self._dirty.set()

    def _machine_ips(self) -> dict[str, str]:
        return {machine_id: m.public_ip for machine_id, m in self.view.machines.items()}

    async def _timer(self) -> None:
        """The safety net: a full re-read from etcd every ``engine_resync_interval``.

        Planning itself needs no timer: the scheduler is deterministic over the view, so
        re-planning an unchanged view would only burn CPU (fleet re-planned every 2 s).
        """
        last_resync = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.engine_reconcile_interval)
            if time.monotonic() - last_resync >= self.settings.engine_resync_interval:
                last_resync = time.monotonic()
                self.view.force_resync = True
                self._dirty.set()

    async def _plan_loop(self, leadership: Leadership, lost: asyncio.Event) -> None:
        while not self._stopping.is_set() and not lost.is_set():
            stop_wait = asyncio.ensure_future(self._stopping.wait())
            dirty_wait = asyncio.ensure_future(self._dirty.wait())
            try:
                await asyncio.wait({stop_wait, dirty_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
                dirty_wait.cancel()
            if self._stopping.is_set() or lost.is_set():
                return
            # let a burst of events land before planning: one pass for the whole burst
            self.stats.settle_windows += await settle(
                self._dirty, self.settings.debounce, SETTLE_LIMIT, lambda: self._stopping.is_set() or lost.is_set()
            )
            if self._stopping.is_set() or lost.is_set():
                return
            if self.view.force_resync:
                await self._load()
                self._dirty.clear()
            with self.metrics.engine_pass():
                await self._reconcile(leadership)

    async def _reconcile(self, leadership: Leadership) -> None:
        started = time.perf_counter()
        changes = schedule_changes(self.view, self.reasons)
        self.stats.plans += 1
        if changes.empty:
            self.stats.last_plan_s = time.perf_counter() - started
            return
        for line in changes.log_lines():
            log.info("%s", line)
        try:
            await self.registry.apply_schedule(leadership, changes.puts, changes.deletes, changes.reasons)
        except NotLeader:
            log.warning("engine on %s was deposed; its writes were refused", self.machine_id)
            raise
        if self.history is not None:
            self.history.record(schedule_events(changes.tasks, changes.reasons, time.time()))
        self.metrics.scheduled(changes.tasks)
        # reflect our own writes now instead of waiting for their watch events
        self.view.record_own_writes(changes)
        for name, reason in changes.reasons.items():
            if reason is None:
                self.reasons.pop(name, None)
            else:
                self.reasons[name] = reason
        self.stats.writes += len(changes.puts) + len(changes.deletes)
        self.stats.placed_total += len(changes.puts)
        self.stats.last_plan_s = time.perf_counter() - started
