"""A unit's revisions over the API, and who a write came from.

``GET /fleet/v1/units/{name}/revisions`` lists the kept revisions of a unit (number,
hash, time, origin), oldest first; ``GET /fleet/v1/units/{name}/revisions/{n}`` answers
one with its body (``options``, as a unit has them). A replace through the API is also
recorded in the history as ``revision-changed``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.params import unit_name
from fleetd.model.history import revision_events
from fleetd.model.revisions import revision_json
from fleetd.model.submit import Decision
from fleetd.registry.registry import Registry

log = logging.getLogger("fleetd.api")

_PRODUCT = re.compile(r"[A-Za-z0-9._/-]{1,40}")
_NUMBER = re.compile(r"[1-9][0-9]{0,9}")


def origin_of(request: web.Request) -> str:
    """``API`` and the client's product token (``API (fleetctl)``), for a revision's
    origin; only a short plain token is taken from the header (it is the client's word)."""
    agent = request.headers.get("User-Agent", "").split(" ", 1)[0]
    return f"API ({agent})" if _PRODUCT.fullmatch(agent) else "API"


async def note_replaced(registry: Registry, decisions: Iterable[Decision]) -> None:
    """History: each replaced body as ``revision-changed``. A failure here is logged, not
    answered: the unit is written already."""
    events = revision_events(decisions, time.time())
    if not events:
        return
    try:
        await registry.record_events(events)
    except Exception as exc:  # noqa: BLE001 - the history is best effort; the write stands
        log.warning("history: cannot record %d replaced units: %s", len(events), exc)


async def list_revisions(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    name = unit_name(request.match_info["name"])
    found = await registry.revisions(name)
    if not found and await registry.get_unit(name) is None:
        raise ApiError(404, f"unit {name} not found")
    return web.json_response({"revisions": [revision_json(r) for r in found]})


async def get_revision(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    name = unit_name(request.match_info["name"])
    text = request.match_info["revision"]
    if not _NUMBER.fullmatch(text):
        raise ApiError(400, f"revision must be a whole number of at least 1, not {text[:32]!r}")
    found = await registry.unit_revision(name, int(text))
    if found is None:
        kept = [r.revision for r in await registry.revisions(name)]
        what = f"kept: {', '.join(map(str, kept))}" if kept else "none is kept"
        raise ApiError(404, f"unit {name} has no revision {text} ({what})")
    return web.json_response({"name": name, **revision_json(found, with_options=True)})


__all__ = ["get_revision", "list_revisions", "note_replaced", "origin_of"]
