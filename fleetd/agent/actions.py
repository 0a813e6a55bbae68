"""Carrying out the agent's plan so that one bad unit never holds up the others.

Each kind of task (unload, load, stop, start) goes to the service manager as one batch,
which is what keeps a burst of a thousand units fast. When a batch fails as a whole (a
unit file that cannot be written, a name systemd rejects), the same tasks are retried one
unit at a time: the culprit fails alone and the rest go through. A failed unit is held
back with a growing delay (so a poisoned unit costs one attempt a while, not a traceback
every half second), its error is kept to be published with its state, and it is tried
again at once when its unit file changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from fleetd.agent.manager import UnitManager
from fleetd.agent.plan import AgentTask, Load, Start, Stop, Unload
from fleetd.metrics import Metrics
from fleetd.model.history import EventKind, HistoryEvent
from fleetd.model.unitfile import UnitFile

log = logging.getLogger(__name__)

# Retry delays of a failed unit: from MIN_RETRY doubling up to MAX_RETRY seconds.
MIN_RETRY = 1.0
MAX_RETRY = 60.0
ORDER: tuple[type[AgentTask], ...] = (Unload, Load, Stop, Start)
# what a done task is in the history (loading and unloading are not decisions of note)
HISTORY_KINDS: dict[type[AgentTask], EventKind] = {Start: EventKind.STARTED, Stop: EventKind.STOPPED}


@dataclass
class Failure:
    """Why fleet could not act on a unit here, and when to try again."""

    verb: str
    error: str
    hash: str
    attempts: int
    retry_at: float

    @property
    def message(self) -> str:
        return f"{self.verb} failed: {self.error}"


class Executor:
    def __init__(
        self,
        manager: UnitManager,
        on_change: Callable[[str], None] = lambda name: None,
        clock: Callable[[], float] = time.monotonic,
        machine_id: str = "",
    ) -> None:
        """``on_change(name)`` is called when a unit's failure appears or clears (its
        published state must change; its failure goes into the history from there).
        ``record`` (set by the agent) takes the history events of what was done:
        started, stopped."""
        self.manager = manager
        self.on_change = on_change
        self.machine_id = machine_id
        self.record: Callable[[list[HistoryEvent]], None] | None = None
        self.clock = clock
        self.min_retry = MIN_RETRY
        self.max_retry = MAX_RETRY
        self.failures: dict[str, Failure] = {}
        self.metrics = Metrics()  # the daemon sets its own: systemd calls are timed there

    def held_back(self, name: str, hash_: str) -> bool:
        """Whether to leave this unit alone for now: it failed, its retry time has not
        come, and its unit file is the one that failed."""
        failure = self.failures.get(name)
        return failure is not None and failure.hash == hash_ and self.clock() < failure.retry_at

    def next_retry(self) -> float | None:
        """The clock time of the earliest retry due, if any unit is held back."""
        return min((f.retry_at for f in self.failures.values()), default=None)

    def forget(self, names: Sequence[str]) -> None:
        """Units that left this machine: their failures no longer matter."""
        for name in names:
            if self.failures.pop(name, None) is not None:
                self.on_change(name)

    async def apply(self, tasks: Sequence[AgentTask], files: Mapping[str, UnitFile], hashes: Mapping[str, str]) -> None:
        """Run ``tasks`` in fleet's order. ``files``: the unit files to load; ``hashes``:
        each unit's desired hash (what a failure is remembered against)."""
        failed: set[str] = set()
        reasons = {(type(t), t.unit): t.reason for t in tasks}
        for kind in ORDER:
            names = [t.unit for t in tasks if isinstance(t, kind) and t.unit not in failed]
            if not names:
                continue
            call = self._call(kind, files)
            try:
                with self.metrics.systemd_batch(kind.verb):
                    await call(names)
                done = names
            except Exception as exc:  # noqa: BLE001 - one bad unit may fail a batch: isolate it
                if len(names) == 1:
                    done = []
                    self._failed(kind, names[0], exc, hashes)
                    failed.add(names[0])
                else:
                    log.info(
                        "agent: a %s batch of %d units failed (%s); retrying unit by unit", kind.verb, len(names), exc
                    )
                    done = []
                    for name in names:
                        try:
                            with self.metrics.systemd_batch(kind.verb):
                                await call([name])
                            done.append(name)
                        except Exception as one:  # noqa: BLE001 - recorded against that unit
                            self._failed(kind, name, one, hashes)
                            failed.add(name)
            if self.record is not None and kind in HISTORY_KINDS and done:
                refused = self.manager.failures()  # a job systemd refused is a failure, not a start
                now, event = time.time(), HISTORY_KINDS[kind]
                self.record(
                    [
                        HistoryEvent(now, event, n, self.machine_id, reasons.get((kind, n), ""))
                        for n in done
                        if n not in refused
                    ]
                )
            for name in done:
                if kind is not Unload and name in self.failures:
                    del self.failures[name]
                    log.info("agent: %s %s succeeded after earlier failures", kind.verb, name)
                    self.on_change(name)

    def _call(self, kind: type[AgentTask], files: Mapping[str, UnitFile]) -> Callable[[list[str]], Awaitable[None]]:
        manager = self.manager
        if kind is Load:
            return lambda names: manager.load({name: files[name] for name in names})
        return {Unload: manager.unload, Stop: manager.stop, Start: manager.start}[kind]

    def _failed(self, kind: type[AgentTask], name: str, exc: Exception, hashes: Mapping[str, str]) -> None:
        previous = self.failures.get(name)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.min_retry * 2 ** (attempts - 1), self.max_retry)
        error = str(exc) or type(exc).__name__
        failure = Failure(kind.verb, error, hashes.get(name, ""), attempts, self.clock() + delay)
        self.failures[name] = failure
        if previous is None or previous.error != error:
            log.warning("agent: %s %s failed: %s (retry in %.0f s)", kind.verb, name, error, delay)
        else:
            log.debug("agent: %s %s failed again (%d times): %s", kind.verb, name, attempts, error)
        self.on_change(name)
