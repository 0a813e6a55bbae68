"""Writing the history: a buffer that the engine and the agent record into without waiting.

A decision must never wait for (or fail because of) its history entry: :meth:`record`
only appends to a bounded buffer, and one task writes the buffer out in batches, within
``FLUSH_SECONDS`` of the decision (so an event is readable about a second after it),
retrying with backoff while etcd does not answer. When etcd stays away long enough for
the buffer to fill, the oldest entries are dropped and counted, since the decisions
themselves (and the log) still go on. The engine leader also prunes the history to its
retention (count and age).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable

from fleetd.model.history import HistoryEvent
from fleetd.registry.registry import Registry

log = logging.getLogger("fleetd.history")

FLUSH_SECONDS = 0.2
MAX_BUFFER = 10_000
MAX_BACKOFF = 10.0
PRUNE_SECONDS = 60.0
DEFAULT_KEEP = 10_000
DEFAULT_MAX_AGE = 7 * 24 * 3600.0


class HistoryRecorder:
    """Buffers events and writes them to the registry; see the module docstring."""

    def __init__(self, registry: Registry, limit: int = MAX_BUFFER) -> None:
        self.registry = registry
        self.buffer: deque[HistoryEvent] = deque()
        self.limit = limit
        self.dropped = 0
        self.written = 0
        self._wake = asyncio.Event()

    def record(self, events: Iterable[HistoryEvent]) -> None:
        for event in events:
            if len(self.buffer) >= self.limit:
                self.buffer.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("history: %d events dropped (etcd has not taken them for a while)", self.dropped)
            self.buffer.append(event)
        if self.buffer:
            self._wake.set()

    async def flush(self) -> None:
        """Write what is buffered now (the events stay buffered if the write fails)."""
        while self.buffer:
            batch = list(self.buffer)[:500]
            await self.registry.record_events(batch)
            for _ in batch:
                self.buffer.popleft()
            self.written += len(batch)

    async def run(self) -> None:
        backoff = FLUSH_SECONDS
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_SECONDS)  # gather what one decision produces
            self._wake.clear()
            try:
                await self.flush()
                backoff = FLUSH_SECONDS
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried; the decisions went on
                log.warning("history: cannot write %d events (%s); retrying in %.1f s", len(self.buffer), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                self._wake.set()


async def prune_history(registry: Registry, keep: int, max_age: float, every: float = PRUNE_SECONDS) -> None:
    """The leader's share: keep the history within ``keep`` events and ``max_age`` seconds."""
    while True:
        try:
            removed = await registry.prune_events(keep, time.time() - max_age)
            if removed:
                log.info("history: pruned %d events (keeping at most %d, %g days)", removed, keep, max_age / 86400)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - tried again next time
            log.warning("history: pruning failed: %s", exc)
        await asyncio.sleep(every)


__all__ = ["DEFAULT_KEEP", "DEFAULT_MAX_AGE", "HistoryRecorder", "prune_history"]
