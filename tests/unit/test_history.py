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
