"""History events: their stored form, their API form, and records that are not events."""

from __future__ import annotations

import pytest

from fleetd.model.history import (
    MAX_REASON_CHARS,
    EventKind,
    HistoryEvent,
    clipped,
    decode_event,
    encode_event,
    event_json,
)

EVENT = HistoryEvent(1_800_000_000.25, EventKind.MOVED, "web.service", "1" * 32, "machine 22222222 lost", 3, "x")


def test_an_event_survives_storage_and_shows_as_the_api_form() -> None:
    assert decode_event(encode_event(EVENT), "x") == EVENT
    assert event_json(EVENT) == {
        "time": "2027-01-15T08:00:00.250Z",
        "unit": "web.service",
        "machine": "1" * 32,
        "event": "moved",
        "reason": "machine 22222222 lost",
        "revision": 3,
    }


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ([], "JSON object"),
        ({"event": "moved"}, "time"),
        ({"time": float("nan"), "event": "moved"}, "time"),
        ({"time": True, "event": "moved"}, "time"),
        ({"time": 1, "event": "exploded"}, "unknown event"),
        ({"time": 1, "event": "moved", "unit": 7}, "unit"),
        ({"time": 1, "event": "moved", "reason": "x" * (MAX_REASON_CHARS + 1)}, "reason"),
        ({"time": 1, "event": "moved", "revision": -1}, "revision"),
        ({"time": 1, "event": "moved", "revision": "3"}, "revision"),
    ],
)
def test_a_record_that_is_not_an_event_is_named(record: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_event(record, "x")


def test_a_long_reason_is_clipped_to_what_may_be_stored() -> None:
    long = HistoryEvent(1.0, EventKind.FAILED, "a.service", reason="e" * 5000)
    assert len(clipped(long).reason) == MAX_REASON_CHARS
    assert decode_event(encode_event(clipped(long)), "x").reason.endswith("…")


# -- what the engine records ---------------------------------------------------------------


def test_a_pass_becomes_placed_moved_unplaced_and_unplaceable_events() -> None:
    from fleetd.engine.history import schedule_events
    from fleetd.scheduler.tasks import Place, Unplace

    a, b = "a" * 32, "b" * 32
    tasks = [
        Unplace("web.service", a, f"machine {a[:8]} is gone"),
        Unplace("old.service", b, "desired state is inactive"),
        Place("web.service", b, "least loaded of 2 candidates"),
        Place("new.service", a, "least loaded of 2 candidates"),
    ]
    events = schedule_events(tasks, {"big.service": "no machine has role=db", "fine.service": None}, 5.0)
    assert [(e.event, e.unit, e.machine, e.reason) for e in events] == [
        (EventKind.MOVED, "web.service", b, "from aaaaaaaa: machine aaaaaaaa is gone; least loaded of 2 candidates"),
        (EventKind.PLACED, "new.service", a, "least loaded of 2 candidates"),
        (EventKind.UNPLACED, "old.service", b, "desired state is inactive"),
        (EventKind.UNPLACEABLE, "big.service", "", "no machine has role=db"),
    ]
    assert all(e.time == 5.0 for e in events)


def test_machines_joining_and_lost_are_events() -> None:
    from fleetd.engine.history import machine_events

    events = machine_events({"a" * 32: "10.0.0.1", "b" * 32: ""}, {"b" * 32: "", "c" * 32: "10.0.0.3"}, 1.0)
    assert [(e.event, e.machine) for e in events] == [
        (EventKind.MACHINE_JOINED, "c" * 32),
        (EventKind.MACHINE_LOST, "a" * 32),
    ]
    assert events[0].reason == "registered from 10.0.0.3" and "aaaaaaaa lost" in events[1].reason


# -- the recorder ----------------------------------------------------------------------------


async def test_the_recorder_writes_in_batches_and_keeps_events_while_etcd_fails() -> None:
    from fleetd.history import HistoryRecorder
    from fleetd.registry.memory import MemoryRegistry

    class Flaky(MemoryRegistry):
        failing = True

        async def record_events(self, events):  # type: ignore[no-untyped-def]
            if self.failing:
                raise ConnectionError("etcd is away")
            return await super().record_events(events)

    registry = Flaky()
    recorder = HistoryRecorder(registry, limit=3)
    recorder.record(HistoryEvent(float(i), EventKind.STARTED, f"u{i}.service") for i in range(5))
    assert recorder.dropped == 2 and [e.unit for e in recorder.buffer] == ["u2.service", "u3.service", "u4.service"]
    with pytest.raises(ConnectionError):
        await recorder.flush()
    assert len(recorder.buffer) == 3  # nothing lost by a failed write
    registry.failing = False
    await recorder.flush()
    events, _, _ = await registry.events()
    assert [e.unit for e in events] == ["u2.service", "u3.service", "u4.service"] and not recorder.buffer
