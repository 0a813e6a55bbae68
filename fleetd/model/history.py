"""The cluster's memory: what happened to units and machines, and why.

fleet forgot every decision as soon as it was made: where a unit ran an hour ago, why it
moved, when a machine was lost. Here the engine and the agents record each decision of
consequence as a :class:`HistoryEvent`; the registry keeps them (bounded by count and
age) in etcd, so they survive a change of engine leader, and ``GET /fleet/v1/events`` and
``fleetctl history`` show them.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from fleetd.model.submit import Action, Decision


class EventKind(StrEnum):
    PLACED = "placed"
    UNPLACED = "unplaced"
    MOVED = "moved"
    STARTED = "started"
    STOPPED = "stopped"
    FAILED = "failed"
    UNPLACEABLE = "unplaceable"
    REVISION_CHANGED = "revision-changed"
    MACHINE_LOST = "machine-lost"
    MACHINE_JOINED = "machine-joined"
    UPDATE_STARTED = "update-started"
    UPDATE_FINISHED = "update-finished"
    UPDATE_REVERTED = "update-reverted"


# bounds on what one event may hold: events are written by fleetd itself, but read back
# from etcd like every other record
MAX_REASON_CHARS = 1024
MAX_NAME_CHARS = 256


@dataclass(frozen=True)
class HistoryEvent:
    """One decision: ``time`` (Unix seconds), what happened, to which unit on which
    machine, why, and the unit's revision when it is known. ``id`` orders events and is a
    cursor for reading on from one; the registry sets it when it stores the event."""

    time: float
    event: EventKind
    unit: str = ""
    machine: str = ""
    reason: str = ""
    revision: int | None = None
    id: str = ""


def event_time(seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds: sortable, and what every log tool reads."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_json(event: HistoryEvent) -> dict[str, Any]:
    """The API's and ``fleetctl history --output json``'s form of an event."""
    return {
        "time": event_time(event.time),
        "unit": event.unit,
        "machine": event.machine,
        "event": str(event.event),
        "reason": event.reason,
        "revision": event.revision,
    }


def encode_event(event: HistoryEvent) -> dict[str, Any]:
    """The stored form (the time as a number: no parsing on the way back)."""
    record: dict[str, Any] = {"time": event.time, "event": str(event.event)}
    for name in ("unit", "machine", "reason"):
        if getattr(event, name):
            record[name] = getattr(event, name)
    if event.revision is not None:
        record["revision"] = event.revision
    return record


def decode_event(data: Any, event_id: str) -> HistoryEvent:
    """An event read back; ``ValueError`` naming what is wrong with a record that is not
    one this code wrote."""
    if not isinstance(data, dict):
        raise ValueError("an event must be a JSON object")
    when, kind = data.get("time"), data.get("event")
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise ValueError("time must be a number")
    try:
        event = EventKind(kind)
    except ValueError:
        raise ValueError(f"unknown event {kind!r}") from None
    texts = {}
    for name, limit in (("unit", MAX_NAME_CHARS), ("machine", MAX_NAME_CHARS), ("reason", MAX_REASON_CHARS)):
        value = data.get(name, "")
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"{name} must be a string of at most {limit} characters")
        texts[name] = value
    revision = data.get("revision")
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int) or revision < 0):
        raise ValueError("revision must be a non-negative integer")
    return HistoryEvent(float(when), event, texts["unit"], texts["machine"], texts["reason"], revision, event_id)


def revision_changed(name: str, revision: int, origin: str, now: float) -> HistoryEvent:
    """``revision-changed``: unit ``name`` has a new body, revision ``revision``, written
    by ``origin`` (a client, or an update step)."""
    return HistoryEvent(
        now,
        EventKind.REVISION_CHANGED,
        name,
        "",
        f"revision {revision} by {origin or 'an unknown client'}",
        revision or None,
    )


def revision_events(decisions: Iterable[Decision], now: float) -> list[HistoryEvent]:
    """``revision-changed`` for each replace among ``decisions``."""
    return [
        revision_changed(d.stored.name, d.stored.revision, d.origin, now)
        for d in decisions
        if d.action is Action.REPLACE
    ]


def clipped(event: HistoryEvent) -> HistoryEvent:
    """``event`` with texts cut to what a stored event may hold (a reason may quote a
    long error)."""
    if len(event.reason) <= MAX_REASON_CHARS and len(event.unit) <= MAX_NAME_CHARS:
        return event
    return replace(event, reason=event.reason[: MAX_REASON_CHARS - 1] + "…", unit=event.unit[:MAX_NAME_CHARS])


__all__ = [
    "MAX_NAME_CHARS",
    "MAX_REASON_CHARS",
    "EventKind",
    "HistoryEvent",
    "clipped",
    "decode_event",
    "encode_event",
    "event_json",
    "event_time",
    "revision_changed",
    "revision_events",
]
