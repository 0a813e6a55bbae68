"""Rolling updates over the API: start one, read its record (beyond fleet).

``POST /fleet/v1/updates/{name}`` writes an update's record (nothing else: the engine
leader carries it out, see ``fleetd/engine/updates.py``) and answers 201 with it;
``GET /fleet/v1/updates/{name}`` answers the record of ``name``'s latest update (404
when it never had one), ``GET /fleet/v1/updates`` every record. A body is checked whole
before anything is written: a 400 names the first problem. The unit is named in the path,
as every other route names it.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.params import json_body, unit_name
from fleetd.api.revisions import origin_of
from fleetd.model.errors import UnitFileError
from fleetd.model.limits import MAX_UNIT_BYTES, options_size, too_large
from fleetd.model.unitfile import UnitFile
from fleetd.model.update import (
    DEFAULT_HEALTHY_DEADLINE,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_MIN_HEALTHY,
    ORIGIN_ROLLBACK,
    ORIGIN_UPDATE,
    UpdateError,
    UpdateNotFound,
    check_params,
    update_json,
)

FIELDS = frozenset({"options", "revision", "maxParallel", "minHealthy", "healthyDeadline", "autoRevert"})
PREVIOUS = "previous"


async def _target(request: web.Request, name: str, body: dict[str, Any]) -> tuple[UnitFile, str, int | None]:
    """The new body, and whether it is an update (``options``) or a rollback (``revision``:
    a kept revision's number, or "previous": the one before the unit's current one)."""
    has_options, has_revision = "options" in body, "revision" in body
    if has_options == has_revision:
        raise ApiError(400, "give either options (an update) or revision (a rollback), not both nor neither")
    if has_options:
        options = body["options"]
        if not isinstance(options, list) or not options:
            raise ApiError(400, "options must be a non-empty list of {section, name, value}")
        problem = too_large(options_size([o for o in options if isinstance(o, dict)]), MAX_UNIT_BYTES, name)
        if problem:
            raise ApiError(413, problem)
        try:
            return UnitFile.from_options(options), ORIGIN_UPDATE, None
        except UnitFileError as exc:
            raise ApiError(400, f"options: {exc}") from None
    registry = api_state(request).registry
    wanted = body["revision"]
    if wanted != PREVIOUS and (
        isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= 9_999_999_999
    ):
        raise ApiError(400, f'revision must be a whole number of at least 1 or "{PREVIOUS}"')
    try:
        file, number = await registry.rollback_target(name, None if wanted == PREVIOUS else wanted)
    except UpdateNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return file, ORIGIN_ROLLBACK, number


async def post_update(request: web.Request) -> web.Response:
    name = unit_name(request.match_info["name"])
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object {options or revision, parameters}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0][:64]!r}; expected {', '.join(sorted(FIELDS))}")
    try:
        params = check_params(
            body.get("maxParallel", DEFAULT_MAX_PARALLEL),
            body.get("minHealthy", DEFAULT_MIN_HEALTHY),
            body.get("healthyDeadline", DEFAULT_HEALTHY_DEADLINE),
            body.get("autoRevert", True),
        )
    except UpdateError as exc:
        raise ApiError(400, str(exc)) from None
    target, kind, revision = await _target(request, name, body)
    registry = api_state(request).registry
    try:
        record, _ = await registry.begin_update(
            name, target, params, time.time(), kind=kind, target_revision=revision, origin=origin_of(request)
        )
    except UpdateError as exc:
        raise ApiError(404 if isinstance(exc, UpdateNotFound) else 400, str(exc)) from None
    # UpdateConflict (another update in progress) is a RegistryError: the middleware's 409
    return web.json_response(update_json(record), status=201)


async def get_update(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    name = unit_name(request.match_info["name"])
    found = await registry.get_update(name)
    if found is None:
        raise ApiError(404, f"unit {name} has no update")
    return web.json_response(update_json(found[0]))


async def list_updates(request: web.Request) -> web.Response:
    records, unreadable = await api_state(request).registry.updates()
    return web.json_response(
        {
            "updates": [update_json(record) for record, _ in records],
            "unreadable": dict(sorted(unreadable.items())),
        }
    )


__all__ = ["get_update", "list_updates", "post_update"]
