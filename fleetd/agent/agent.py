"""The agent loop: register this machine, follow its schedule, drive the unit manager.

An agent watches only its own schedule prefix and the small set of global units, never
the whole tree (fleet's agents all woke on every change). It holds one lease that carries
its machine entry and every unit state it publishes, so when the machine dies all of it
vanishes together and the engine sees the deletes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from fleetd.agent.actions import Executor
from fleetd.agent.manager import UnitManager
from fleetd.agent.plan import AgentTask, Current, Desired, Load, Unload, agent_plan
from fleetd.agent.states import StatePublisher
from fleetd.agent.wanted import Wanted, apply_event
from fleetd.aio import Supervisor, cancel_and_wait, settle
from fleetd.history import HistoryRecorder
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit
from fleetd.registry.registry import MachineIdInUse, Registry, Resync
from fleetd.settings import Settings

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class AgentStatus:
    """What the API reports about this agent (e.g. why it is not part of the cluster)."""

    registered: bool = False
    error: str | None = None
    lease: int = 0


@dataclass
class Agent:
    registry: Registry
    manager: UnitManager
    machine: MachineState
    settings: Settings = field(default_factory=Settings)
    status: AgentStatus = field(default_factory=AgentStatus)
    # Runs the agent's long-lived tasks (the daemon runs the engine under it too).
    supervisor: Supervisor = field(default_factory=Supervisor)
    # Where the lease id is kept across restarts, so a restarted fleetd adopts its own
    # registration (and its running units) instead of waiting for it to expire.
    lease_file: str | None = None
    # where this machine's history goes (started, stopped, failed); None records nothing
    history: HistoryRecorder | None = None

    def __post_init__(self) -> None:
        self.wanted = Wanted()
        self._dirty = asyncio.Event()
        # units whose desired state changed since the last pass; None means "all of them"
        self._dirty_names: set[str] | None = None
        self.states = StatePublisher(
            self.registry, self.manager, self.machine.id, self.settings, self._lease, self._unit_errors
        )
        self.executor = Executor(self.manager, on_change=self.states.touch, machine_id=self.machine.id)
        self._lease_lost = asyncio.Event()
        self.states.on_lease_lost = self._on_lease_lost
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.static_metadata = dict(self.machine.metadata)
        self._dynamic: dict[str, str] = {}
        self.manager.subscribe(self.states.changed)
        if self.history is not None:
            self.executor.record = self.states.record = self.history.record

    @property
    def machine_id(self) -> str:
        return self.machine.id

    def _lease(self) -> int | None:
        return self.status.lease if self.status.registered else None

    def _unit_errors(self) -> dict[str, tuple[str, str]]:
        return {name: (f.message, f.hash) for name, f in self.executor.failures.items()}

    def stop(self) -> None:
        self._stopping.set()

    # -- lease and registration ------------------------------------------------------------

    async def _register(self) -> int:
        """Get a lease and publish the machine entry, retrying while the id is taken."""
        registry = self.registry
        ttl = max(1, round(self.settings.agent_ttl))
        while True:
            lease = await self._previous_lease() or await registry.grant_lease(ttl)
            try:
                await registry.register_machine(self.machine, lease)
            except MachineIdInUse as exc:
                await registry.revoke_lease(lease)
                self.status.error = str(exc)
                log.error("%s", exc)
                await asyncio.sleep(min(2.0, self.settings.agent_ttl / 3))
                continue
            self.status = AgentStatus(registered=True, lease=lease)
            self._save_lease(lease)
            self.states.republish(await self.manager.units())
            return lease

    async def _previous_lease(self) -> int | None:
        """The lease of this machine's previous fleetd, if it is still alive and ours."""
        if not self.lease_file:
            return None
        try:
            with open(self.lease_file, encoding="ascii") as handle:
                lease = int(handle.read().strip(), 16)
        except (OSError, ValueError):
            return None
        if await self.registry.machine_lease(self.machine_id) != lease:
            return None
        if await self.registry.keepalive(lease) <= 0:
            return None
        log.info("adopting the registration of this machine's previous fleetd (lease %x)", lease)
        return lease

    def _save_lease(self, lease: int) -> None:
        if not self.lease_file:
            return
        try:
            os.makedirs(os.path.dirname(self.lease_file) or ".", exist_ok=True)
            with open(self.lease_file, "w", encoding="ascii") as handle:
                handle.write(f"{lease:x}\n")
        except OSError as exc:
            log.warning("cannot save the lease id to %s: %s", self.lease_file, exc)

    async def update_identity(self, public_ip: str, static_metadata: Mapping[str, str]) -> None:
        """New configuration (SIGHUP): publish the new IP and metadata under the same lease."""
        self.static_metadata = dict(static_metadata)
        self.machine = replace(self.machine, public_ip=public_ip, metadata={**self.static_metadata, **self._dynamic})
        if self.status.registered:
            await self.registry.register_machine(self.machine, self.status.lease)

    async def _keepalive(self) -> None:
        """Keep the lease alive, and make sure it still carries this machine.

        A keepalive answer alone is not trusted: after an etcd leader was stopped and
        resumed, a machine's lease expired while keepalives kept succeeding, and the
        machine stayed out of the cluster. So every ``agent_ttl`` the agent also reads its
        own machine entry, and at once when a write met an expired lease; each call is
        bounded, so a hung one costs one interval, not the lease.
        """
        interval = self.settings.keepalive_interval(self.settings.agent_ttl)
        verify_every = max(1, round(self.settings.agent_ttl / interval))
        beats = 0
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._lease_lost.wait()
            except TimeoutError:
                pass
            beats += 1
            lease = self.status.lease
            try:
                async with asyncio.timeout(max(interval, 1.0)):
                    alive = await self.registry.keepalive(lease) > 0
                    if alive and (self._lease_lost.is_set() or beats % verify_every == 0):
                        alive = await self.registry.machine_lease(self.machine_id) == lease
            except Exception as exc:  # noqa: BLE001 - etcd away: keep units running, keep trying
                log.info("agent keepalive failed (%s); retrying", exc or type(exc).__name__)
                continue
            self._lease_lost.clear()
            if not alive:
                log.warning("agent lease %x lost (its machine entry is gone); registering again", lease)
                self.status.registered = False
                await self._register()

    def _on_lease_lost(self) -> None:
        """A write met an expired lease: check the registration now, not at the next beat."""
        self._lease_lost.set()

    # -- following the schedule ------------------------------------------------------------

    async def _load(self) -> tuple[int, int]:
        schedule, rev_schedule = await self.registry.machine_schedule(self.machine_id)
        globals_, rev_globals = await self.registry.global_units()
        self.wanted.schedule = schedule
        self.wanted.globals = globals_
        self._dirty_names = None
        self._dirty.set()
        return rev_schedule, rev_globals

    async def _follow_schedule(self, revision: int) -> None:
        async for batch in self.registry.watch_machine_schedule(self.machine_id, revision):
            for event in batch:
                apply_event(self.wanted.schedule, event)
                self._mark(event.name)
            self._dirty.set()

    async def _follow_globals(self, revision: int) -> None:
        async for batch in self.registry.watch_global_units(revision):
            for event in batch:
                apply_event(self.wanted.globals, event)
            self._dirty_names = None  # a global unit can change what else may run here
            self._dirty.set()

    def _mark(self, name: str) -> None:
        if self._dirty_names is not None:
            self._dirty_names.add(name)

    def desired(self, names: set[str] | None = None) -> dict[str, Desired]:
        """What should be on this machine (all of it, or just ``names``)."""
        return self.wanted.desired(self.machine, names)

    def _file_of(self, name: str) -> ScheduledUnit | StoredUnit:
        return self.wanted.file_of(name)

    @property
    def schedule(self) -> dict[str, ScheduledUnit]:
        return self.wanted.schedule

    @property
    def globals(self) -> dict[str, StoredUnit]:
        return self.wanted.globals

    # -- acting ------------------------------------------------------------------------------

    async def reconcile(self, names: set[str] | None = None) -> list[AgentTask]:
        """Bring systemd in line with the desired state, for ``names`` only or for all.

        Passing only the units that changed keeps a burst of placements linear: each
        event costs work for its own unit, not for every unit on the machine.
        """
        local = await self.manager.units()
        desired = self.desired(names)
        if names is not None:
            local = {name: local[name] for name in names if name in local}
        current = {
            name: Current(loaded=True, active=unit.state.is_active, hash=unit.hash) for name, unit in local.items()
        }
        if names is None:  # units that left this machine: their old failures are moot
            self.executor.forget([n for n in self.executor.failures if n not in desired])
        else:
            self.executor.forget([n for n in names if n in self.executor.failures and n not in desired])
        hashes = {name: want.hash for name, want in desired.items()}
        hashes.update({name: unit.hash for name, unit in local.items() if name not in hashes})
        tasks = [t for t in agent_plan(desired, current) if not self.executor.held_back(t.unit, hashes[t.unit])]
        await self._apply(tasks, hashes)
        return tasks

    async def _apply(self, tasks: list[AgentTask], hashes: Mapping[str, str]) -> None:
        """Carry out a plan: each kind of task as one batch, in fleet's order (unload,
        load, stop, start), unit by unit when a batch fails (:mod:`fleetd.agent.actions`),
        logging every task with its reason as fleet's reconciler did."""
        _log_tasks(tasks)
        files = {t.unit: self._file_of(t.unit).file for t in tasks if isinstance(t, Load)}
        await self.executor.apply(tasks, files, hashes)
        unloaded = [t.unit for t in tasks if isinstance(t, Unload) and t.unit not in self.executor.failures]
        if unloaded:
            await self.states.unpublish(unloaded)
        for name in {t.unit for t in tasks}:  # systemd may have refused a job: show it
            self.states.touch(name)

    async def _loop(self) -> None:
        delay = RECONCILE_RETRY_MIN
        last_error = ""
        while True:
            wait = self.settings.agent_reconcile_interval
            retry_at = self.executor.next_retry()
            if retry_at is not None:  # a held-back unit is due: come back for it
                wait = max(0.0, min(wait, retry_at - time.monotonic() + 0.01))
            try:
                async with asyncio.timeout(wait):
                    await self._dirty.wait()
            except TimeoutError:
                self._dirty_names = None  # the periodic pass looks at everything
            # one pass for a whole burst of placements: one daemon-reload, not one per slice
            await settle(self._dirty, self.settings.debounce, SETTLE_LIMIT)
            names, self._dirty_names = self._dirty_names, set()
            try:
                await self.reconcile(names)
                delay, last_error = RECONCILE_RETRY_MIN, ""
            except Exception as exc:  # the service manager is away: back off (logged below)
                error = f"{type(exc).__name__}: {exc}"
                if error != last_error:  # the traceback once, not on every retry
                    log.warning("agent reconcile failed; retrying with backoff", exc_info=True)
                    last_error = error
                self._dirty_names = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONCILE_RETRY_MAX)
                self._dirty.set()
            self.ready.set()

    async def _retry(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` until it succeeds: etcd may be away, units keep running meanwhile."""
        delay = 0.2
        while True:
            try:
                return await action()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; retried with backoff
                log.warning("agent: %s failed (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _follow_metadata(self) -> None:
        """Merge metadata set through the API into the machine entry, now and on change.

        Never gives up: a failure (etcd away, a refused watch) is logged and the follow
        starts over with backoff, so metadata changes keep reaching the engine."""

        async def follow() -> None:
            async for dynamic in self.registry.follow_dynamic_metadata(self.machine_id):
                await self._set_dynamic_metadata(dynamic)
            raise ConnectionError("the watch on dynamic metadata ended")

        await self._retry("following dynamic metadata", follow)

    async def _set_dynamic_metadata(self, dynamic: Mapping[str, str]) -> None:
        self._dynamic = dict(dynamic)
        merged = {**self.static_metadata, **dynamic}
        if merged == dict(self.machine.metadata):
            return
        self.machine = replace(self.machine, metadata=merged)
        if self.status.registered:
            await self._retry(
                "publishing new metadata", lambda: self.registry.register_machine(self.machine, self.status.lease)
            )

    async def run(self) -> None:
        """Run until stopped. etcd trouble never stops local units; watches resume, and a
        compacted watch leads to a fresh load. Each long-lived task runs under the
        supervisor, which restarts it with backoff when it fails (see :meth:`health_error`)."""
        try:
            await self._retry("registering the machine", self._register)
            self.supervisor.start("agent.keepalive", self._keepalive)
            self.supervisor.start("agent.states", self.states.run)
            self.supervisor.start("agent.metadata", self._follow_metadata)
            self.supervisor.start("agent.schedule", self._follow_and_act)
            await self._stopping.wait()
        finally:
            await self.supervisor.stop()

    async def _follow_and_act(self) -> None:
        """Load the schedule, then follow it and act on it until something fails: a
        compacted watch reloads at once, any other failure goes to the supervisor."""
        while True:
            rev_schedule, rev_globals = await self._load()
            tasks = [
                asyncio.create_task(self._follow_schedule(rev_schedule + 1), name="schedule watch"),
                asyncio.create_task(self._follow_globals(rev_globals + 1), name="global units watch"),
                asyncio.create_task(self._loop(), name="reconcile loop"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(tasks)
            task = next(iter(done))
            exc = task.exception()
            if isinstance(exc, Resync):
                log.warning("agent watch compacted; reloading")
                continue
            if exc is not None:
                raise exc
            raise RuntimeError(f"the agent's {task.get_name()} ended")

    def health_error(self) -> str | None:
        """Why this node is not healthy, for the API's 503 and ``/metrics``: its registration
        was refused (and why), or a supervised task waits to restart; None when all is well."""
        if not self.status.registered and self.status.error:  # refused (e.g. machine id in use)
            return self.status.error
        # Still registering (at start, or after a lost lease) is not a reason to refuse:
        # a socket-activated fleetd must answer the very request that started it.
        return self.supervisor.problem()

    async def leave(self, unload_units: bool = True) -> None:
        """Graceful exit: optionally unload every local unit, then drop the lease.

        The lease goes even when unloading fails (systemd gone at shutdown, say): leaving
        the cluster at once lets the engine move the units now, not a TTL later.
        """
        try:
            if unload_units:
                local = await self.manager.units()
                if local:
                    await self.manager.unload(list(local))
        finally:
            if self.status.lease:
                await self.registry.revoke_lease(self.status.lease)
                self.status.registered = False
            if self.lease_file:
                with contextlib.suppress(OSError):
                    os.unlink(self.lease_file)


LOGGED_TASKS = 50
# Longest the agent waits for a burst of schedule events to end before it acts (seconds).
SETTLE_LIMIT = 0.5
# Backoff of whole reconcile passes that fail (the service manager unreachable).
RECONCILE_RETRY_MIN = 0.5
RECONCILE_RETRY_MAX = 10.0


def _log_tasks(tasks: list[AgentTask]) -> None:
    """One line per task with its reason; a burst logs the first few and a count."""
    for task in tasks[:LOGGED_TASKS]:
        log.info("agent: %s %s: %s", task.verb, task.unit, task.reason)
    if len(tasks) > LOGGED_TASKS:
        log.info("agent: ... and %d more tasks", len(tasks) - LOGGED_TASKS)
