"""Unit revisions: the bodies a unit has had, so a change can be inspected and undone.

Every create or replace of a unit (or template) stores the new body as a revision,
numbered from 1, with when it was written and who asked; the newest few are kept
(``unit_revisions``, default 10). ``fleetctl revisions`` lists them, ``fleetctl cat
--revision=N`` shows one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleetd.model.history import event_time
from fleetd.model.unitfile import UnitFile

DEFAULT_KEEP = 10
MAX_ORIGIN_CHARS = 200


@dataclass(frozen=True)
class UnitRevision:
    name: str
    revision: int
    time: float
    origin: str
    file: UnitFile

    @property
    def hash(self) -> str:
        return self.file.hash()


def encode_revision(revision: UnitRevision) -> dict[str, Any]:
    return {
        "name": revision.name,
        "revision": revision.revision,
        "time": revision.time,
        "origin": revision.origin[:MAX_ORIGIN_CHARS],
        "options": revision.file.to_options(),
    }


def decode_revision(data: Any) -> UnitRevision:
    """A revision read back; ``ValueError`` naming what is wrong otherwise."""
    if not isinstance(data, dict):
        raise ValueError("a revision must be a JSON object")
    name, number, when, origin = data.get("name"), data.get("revision"), data.get("time"), data.get("origin", "")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a unit name")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError("revision must be a whole number of at least 1")
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise ValueError("time must be a number")
    if not isinstance(origin, str) or len(origin) > MAX_ORIGIN_CHARS:
        raise ValueError(f"origin must be a string of at most {MAX_ORIGIN_CHARS} characters")
    return UnitRevision(name, number, float(when), origin, UnitFile.from_options(data.get("options")))


def revision_json(revision: UnitRevision, with_options: bool = False) -> dict[str, Any]:
    """The API's form: number, hash, time (RFC 3339) and origin; the body on request."""
    body: dict[str, Any] = {
        "revision": revision.revision,
        "hash": revision.hash,
        "time": event_time(revision.time),
        "origin": revision.origin,
    }
    if with_options:
        body["options"] = revision.file.to_options()
    return body


__all__ = ["DEFAULT_KEEP", "UnitRevision", "decode_revision", "encode_revision", "revision_json"]
