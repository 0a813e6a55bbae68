"""asyncio helpers shared by the daemon's loops: cancelling a loop's tasks, and supervising
long-lived tasks (not used by the pure layers)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task, then wait for each to finish, whatever it ends with.

    Loops own their helper tasks; stopping a loop must not leave any of them running nor
    let one task's failure hide the others' cleanup. The caller's own cancellation still
    reaches it: swallowing it here once left a standby engine campaigning for ever while
    fleetd stopped (its children are cancelled all the same).
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved: whatever it ended with is not an error of ours


# -- supervision --------------------------------------------------------------------------


@dataclass
class TaskHealth:
    """How one supervised task is doing, for the node's health and ``/metrics``."""

    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    # monotonic time the task is due back (while it waits out its backoff), else None
    restart_at: float | None = None


class Supervisor:
    """Runs long-lived coroutines and restarts one that fails or ends, with backoff.

    A loop task that died used to stay dead while the node kept reporting itself healthy
    (a keepalive that stopped meant a lease that expired with every unit on it). Here a
    failure is logged with its traceback once per distinct error, the task is restarted
    after a delay that doubles up to ``max_delay`` (and resets once it ran ``stable_after``
    seconds), and while it waits, :meth:`problem` names it, so the API answers 503 with
    the reason and ``/metrics`` shows it.
    """

    def __init__(self, min_delay: float = 0.2, max_delay: float = 10.0, stable_after: float = 30.0) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.tasks: dict[str, TaskHealth] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as task ``name`` until :meth:`stop`, restarting it as needed."""
        if name in self._running and not self._running[name].done():
            raise ValueError(f"task {name} is already supervised")
        self.tasks[name] = TaskHealth(name)
        self._running[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        health = self.tasks[name]
        delay = self.min_delay
        last_logged: str | None = None
        while True:
            started = time.monotonic()
            health.running, health.restart_at = True, None
            try:
                await factory()
                if self._stopping:  # it ended because it was told to stop
                    health.running = False
                    return
                error = "ended unexpectedly"
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping or task is None or task.cancelling() > 0:
                    health.running = False
                    raise
                # nobody cancelled this task: a library (grpc, when a channel is closed
                # under a call) raised it; ending here would leave the task dead unseen
                error = "cancelled by something other than stop() (a library's CancelledError)"
                log.error("task %s: %s; restarting it", name, error)
            except Exception as exc:  # whatever it was, the task comes back
                error = f"{type(exc).__name__}: {exc}"
                if error != last_logged:
                    log.error("task %s failed; restarting it", name, exc_info=True)
                    last_logged = error
            health.running = False
            health.restarts += 1
            health.last_error = error
            if time.monotonic() - started >= self.stable_after:
                delay = self.min_delay
            log.warning("task %s: %s; restart %d in %.1f s", name, error, health.restarts, delay)
            health.restart_at = time.monotonic() + delay
            try:
                await asyncio.sleep(delay)
            finally:
                health.restart_at = None
            delay = min(delay * 2, self.max_delay)

    def problem(self) -> str | None:
        """What is wrong now (tasks waiting to restart), for a 503; None when all run."""
        down = [h for h in self.tasks.values() if h.restart_at is not None]
        if not down:
            return None
        return "; ".join(f"task {h.name} is restarting after: {h.last_error}" for h in down)

    async def stop(self) -> None:
        """Cancel every task and wait for them (a task that ends by itself meanwhile is
        not restarted)."""
        self._stopping = True
        await cancel_and_wait(self._running.values())
        self._running.clear()


# -- coalescing bursts --------------------------------------------------------------------


async def settle(dirty: asyncio.Event, quiet: float, limit: float, stop: Callable[[], bool] = lambda: False) -> int:
    """Wait until ``dirty`` has stayed unset for ``quiet`` seconds (or ``limit`` seconds
    passed in all, or ``stop()``); clears it and returns how many windows it waited.

    A burst of watch events (a thousand units written in many etcd transactions) then
    becomes ONE planning pass instead of one per transaction: for the agent that is one
    daemon-reload for the whole burst, and each reload costs systemd time that grows with
    the units it has loaded. A lone event waits ``quiet`` once, as a fixed debounce did;
    ``limit`` bounds the wait while events never stop coming.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    windows = 0
    while True:
        dirty.clear()
        windows += 1
        remaining = deadline - loop.time()
        if remaining <= 0 or stop():
            return windows
        try:
            async with asyncio.timeout(min(quiet, remaining)):
                await dirty.wait()
        except TimeoutError:
            dirty.clear()
            return windows
