"""What the engine records in the history: its decisions, as events (pure).

A pass of the scheduler yields tasks (Place, Unplace, each with its reason) and reasons
for units it cannot place; a change in the machine list is a machine joining or being
lost. Taking a unit off one machine and putting it on another in the same pass is one
``moved`` event whose reason says both why it left and why it went where it did, e.g.
``from 1a2b3c4d: machine 1a2b3c4d is gone; least loaded of 2 candidates``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetd.model.history import EventKind, HistoryEvent
from fleetd.model.state import short_id
from fleetd.scheduler.tasks import Place, Task, Unplace


def schedule_events(tasks: Sequence[Task], reasons: Mapping[str, str | None], now: float) -> list[HistoryEvent]:
    """The events of one applied scheduling pass: placed, moved, unplaced, unplaceable."""
    taken_off = {task.unit: task for task in tasks if isinstance(task, Unplace)}
    events: list[HistoryEvent] = []
    for task in tasks:
        if not isinstance(task, Place):
            continue
        old = taken_off.pop(task.unit, None)
        if old is None:
            events.append(HistoryEvent(now, EventKind.PLACED, task.unit, task.machine, task.reason))
        else:
            why = f"from {short_id(old.machine)}: {old.reason}; {task.reason}"
            events.append(HistoryEvent(now, EventKind.MOVED, task.unit, task.machine, why))
    for task in taken_off.values():
        events.append(HistoryEvent(now, EventKind.UNPLACED, task.unit, task.machine, task.reason))
    for name, reason in reasons.items():
        if reason:
            events.append(HistoryEvent(now, EventKind.UNPLACEABLE, name, "", reason))
    return events


def machine_events(before: Mapping[str, str], after: Mapping[str, str], now: float) -> list[HistoryEvent]:
    """Machines that joined or were lost between two views (machine id -> public IP)."""
    events = [
        HistoryEvent(
            now,
            EventKind.MACHINE_JOINED,
            "",
            machine,
            f"registered{f' from {after[machine]}' if after[machine] else ''}",
        )
        for machine in sorted(set(after) - set(before))
    ]
    events += [
        HistoryEvent(
            now,
            EventKind.MACHINE_LOST,
            "",
            machine,
            f"machine {short_id(machine)} lost (its registration ended: lease expired, or fleetd left)",
        )
        for machine in sorted(set(before) - set(after))
    ]
    return events


__all__ = ["machine_events", "schedule_events"]
