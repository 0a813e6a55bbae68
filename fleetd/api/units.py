"""``/fleet/v1/units``: list, read, create/replace/re-target (PUT) and destroy units.

What a PUT does is decided by :mod:`fleetd.model.submit`, the same rules fleetctl's etcd
driver applies; this module reads the body, carries the decision out on the registry and
decides again when another writer got there first. Records are shaped by
:mod:`fleetd.model.wire`, as the etcd driver shapes them. A unit larger than
:data:`~fleetd.model.limits.MAX_UNIT_BYTES` is refused (413) before it is even parsed.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError, refused
from fleetd.api.params import json_body, listing, page, query_bool, unit_name
from fleetd.model.limits import MAX_UNIT_BYTES, options_size, too_large
from fleetd.model.submit import Action, Refusal, Submission, SubmitError, desired_state, submission
from fleetd.model.wire import units_json, unreadable_unit_json
from fleetd.registry.registry import Registry

log = logging.getLogger("fleetd.api")


async def list_units(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    (units, unreadable), placements, states = await asyncio.gather(
        registry.units_with_errors(), registry.placements(), registry.unit_states()
    )
    records = units_json(units, placements, states)
    records += [unreadable_unit_json(name, reason) for name, reason in unreadable.items()]
    items, token = page(request, records, lambda u: (u["name"],), "units")
    return listing("units", items, token)


async def get_unit(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    name = unit_name(request.match_info["name"])
    unit, placements, states = await asyncio.gather(
        registry.get_unit(name), registry.placements(), registry.unit_states(name)
    )
    if unit is None:
        raise ApiError(404, f"unit {name} not found")
    return web.json_response(units_json([unit], placements, states)[0])


async def _read_submission(request: web.Request, name: str) -> Submission:
    """The PUT body and ``?replace``, validated in the order fleet's API checks them."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object {name, desiredState, options}")
    body_name = body.get("name")
    if body_name not in (None, ""):
        if not isinstance(body_name, str):
            raise ApiError(400, "name in the body must be a string")
        if body_name != name:
            raise ApiError(400, f'name in the body "{body_name}" does not match the unit name "{name}" in the URL')
    options = body.get("options")
    if isinstance(options, list):  # measured before it is parsed: the size bounds that work too
        problem = too_large(options_size(options), MAX_UNIT_BYTES, f"unit {name}")
        if problem:
            raise ApiError(413, problem)
    try:
        target = desired_state(body.get("desiredState"), required=False)
        query_bool(request, "replace")  # still checked; a plain PUT replaces, as in fleet
        result = submission(name, target, options, replace=True)
    except SubmitError as exc:
        raise _refused(exc) from None
    for warning in result.warnings:
        log.info("unit %s: %s", name, warning)
    return result


def _refused(exc: SubmitError) -> ApiError:
    """fleet answers 409 for a unit that does not exist sent without options."""
    if exc.kind is Refusal.NOT_FOUND:
        return ApiError(409, f"unit does not exist and options field empty: {exc.message}")
    return refused(exc)


async def _apply(registry: Registry, request: Submission) -> int:
    """Carry the request out; the HTTP status of success: 201 when a new body was stored
    (created or replaced, as fleet answers), 204 when only the desired state changed."""
    decision = await registry.submit(request)
    for warning in decision.warnings:
        log.info("unit %s: %s", request.name, warning)
    return 201 if decision.action in (Action.CREATE, Action.REPLACE) else 204


async def put_unit(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    name = unit_name(request.match_info["name"])
    wanted = await _read_submission(request, name)
    try:
        return web.Response(status=await _apply(registry, wanted))
    except SubmitError as exc:
        raise _refused(exc) from None


async def delete_unit(request: web.Request) -> web.Response:
    name = unit_name(request.match_info["name"])
    if not await api_state(request).registry.destroy_unit(name):
        raise ApiError(404, f"unit {name} not found")
    return web.Response(status=204)


__all__ = ["delete_unit", "get_unit", "list_units", "put_unit"]
