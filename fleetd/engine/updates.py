"""The engine leader's side of rolling updates: drive every update record to its end.

A client only writes an update's record (``updates/<name>``); the leader does the rest,
here: it looks at the records, reads the states of the instances being replaced, asks the
pure model (:func:`fleetd.model.update.next_step`) what to do, and writes that step with
:meth:`Registry.advance_update`: the record's next state and the units it replaces, in one
transaction fenced by the leadership and conditional on the record being as read. So:

- a step is written once: a deposed leader's write is refused (``NotLeader`` ends its
  term, as a refused schedule write does), and a second writer of the same step finds
  the record changed (``UpdateConflict``: it reads it again);
- a new leader resumes from the record alone. What it does not inherit is how long an
  instance has been seen healthy (that is observed, not stored): the clock starts again,
  which can only make the update more careful, never skip a check. The deadline is the
  record's (from each replace's time), so a leader change does not extend it.
- a record that cannot be read is reported once in the log and left alone.

The engine does not watch unit states (they are the busiest prefix); the updater reads
only the states of the instances it is waiting for, every ``UPDATE_POLL`` seconds while
an update runs, and looks for new records (their versions only) every ``IDLE_POLL``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from fleetd.history import HistoryRecorder
from fleetd.model.history import EventKind, HistoryEvent
from fleetd.model.state import UnitState
from fleetd.model.update import Phase, UpdateRecord, next_step, observe, replaced_events
from fleetd.registry.registry import Leadership, NotLeader, Registry, UnreadableRecord, UpdateConflict

log = logging.getLogger(__name__)

# seconds between looks while an update runs (health is judged at this grain), and while
# none does (how soon a new update starts: at 0.5 s the looks alone cost an idle leader
# 0.2 % of a core, measured with bench/agent_idle.py)
UPDATE_POLL = 0.2
IDLE_POLL = 2.0
# up to this many instances waited for are read one by one, more in one read of all states
FEW = 16


class Updater:
    """Drives the rolling updates for one leadership term (created by ``Engine._lead``)."""

    def __init__(
        self,
        registry: Registry,
        leadership: Leadership,
        history: HistoryRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.leadership = leadership
        self.history = history
        self.clock = clock  # wall time: the record's times are read by other machines
        # name -> (version, record) of every record seen; final ones are not read again
        self._known: dict[str, tuple[int, UpdateRecord | None]] = {}
        # name -> instance -> since when it has been seen active on the target body
        self._active_since: dict[str, dict[str, float]] = {}
        self.steps = 0  # written steps (for tests)

    @property
    def running(self) -> int:
        """Updates not yet ended, as of the last look (the metrics' gauge)."""
        return sum(1 for _, record in self._known.values() if record is not None and not record.state.final)

    async def run(self, lost: asyncio.Event, wake: asyncio.Event) -> None:
        """Until cancelled (the term ends). A write that finds the term over sets ``lost``
        and ``wake`` (the engine's plan loop then steps down, as for a refused schedule)."""
        while True:
            try:
                busy = await self.pass_once()
            except asyncio.CancelledError:
                raise
            except NotLeader:
                log.warning("engine on %s was deposed; its update step was refused", self.leadership.machine_id)
                lost.set()
                wake.set()
                return
            except Exception as exc:  # tried again: one failure must not end the updates
                log.warning("rolling updates: %s; trying again", exc, exc_info=True)
                busy = False
            await asyncio.sleep(UPDATE_POLL if busy else IDLE_POLL)

    async def _refresh(self) -> list[tuple[UpdateRecord, int]]:
        """The records that are not final, reading only those whose version changed."""
        versions = await self.registry.update_versions()
        for name in list(self._known):
            if name not in versions:
                del self._known[name]
                self._active_since.pop(name, None)
        for name, version in versions.items():
            known = self._known.get(name)
            if known is not None and known[0] == version:
                continue
            try:
                found = await self.registry.get_update(name)
            except UnreadableRecord as exc:
                log.warning("rolling update of %s: unreadable record, left alone: %s", name, exc)
                self._known[name] = (version, None)
                continue
            if found is not None:
                self._known[name] = (found[1], found[0])
        return [(record, version) for version, record in self._known.values() if record and not record.state.final]

    async def pass_once(self) -> bool:
        """Take every running update one step further if it can; True when one is running."""
        running = await self._refresh()
        for record, version in running:
            await self._advance(record, version)
        return bool(running)

    async def _advance(self, record: UpdateRecord, version: int) -> None:
        waiting = [name for name, p in record.instances.items() if p.phase is Phase.UPDATING]
        states: dict[str, list[UnitState]] = {name: [] for name in waiting}
        if len(waiting) <= FEW:  # a few reads of one unit each, else one read of them all
            for name in waiting:
                states[name] = await self.registry.unit_states(name)
        elif waiting:
            for state in await self.registry.unit_states():
                if state.name in states:
                    states[state.name].append(state)
        now = self.clock()
        seen = observe(record, states, self._active_since.get(record.name, {}), now)
        self._active_since[record.name] = seen
        step = next_step(record, seen, now, states)
        if step.record is None:
            return
        try:
            new_version, revisions = await self.registry.advance_update(
                self.leadership, step.record, version, step.replaces, step.origin
            )
        except UpdateConflict:
            self._known.pop(record.name, None)  # read it again next time
            return
        self.steps += 1
        self._known[record.name] = (new_version, step.record)
        if step.replaces:
            log.info(
                "rolling update of %s (%s): replaced %s", record.name, step.record.state, ", ".join(sorted(revisions))
            )
        if step.record.state.final:
            log.info("rolling update of %s: %s %s", record.name, step.record.state, step.record.reason)
        if self.history is not None:
            self.history.record(_ordered(step.events, replaced_events(revisions, step.origin, now)))


def _ordered(step_events: Sequence[HistoryEvent], replaced: list[HistoryEvent]) -> list[HistoryEvent]:
    """A step's events as they happened: started, then the replaces, then the end."""
    first = [e for e in step_events if e.event is EventKind.UPDATE_STARTED]
    last = [e for e in step_events if e.event is not EventKind.UPDATE_STARTED]
    return [*first, *replaced, *last]


__all__ = ["IDLE_POLL", "UPDATE_POLL", "Updater"]
