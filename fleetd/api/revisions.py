"""A unit's revisions over the API, and who a write came from.

``GET /fleet/v1/units/{name}/revisions`` lists the kept revisions of a unit (number,
hash, time, origin), oldest first; ``GET /fleet/v1/units/{name}/revisions/{n}`` answers
one with its body (``options``, as a unit has them). (A replace is recorded in the
history as ``revision-changed`` by the registry, whoever wrote it.)
"""

from __future__ import annotations

import re

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.params import unit_name
from fleetd.model.revisions import revision_json

_PRODUCT = re.compile(r"[A-Za-z0-9._/-]{1,40}")
_NUMBER = re.compile(r"[1-9][0-9]{0,9}")


def origin_of(request: web.Request) -> str:
    """``API`` and the client's product token (``API (fleetctl)``), for a revision's
    origin; only a short plain token is taken from the header (it is the client's word)."""
    agent = request.headers.get("User-Agent", "").split(" ", 1)[0]
    return f"API ({agent})" if _PRODUCT.fullmatch(agent) else "API"


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


__all__ = ["get_revision", "list_revisions", "origin_of"]
