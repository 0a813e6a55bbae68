"""``/fleet/v1/units``: list, read, create/replace/re-target (PUT) and destroy units.

What a PUT does is decided by :mod:`fleetd.model.submit`, the same rules fleetctl's etcd
driver applies; this module reads the body, carries the decision out on the registry and
decides again when another writer got there first. Records are shaped by
:mod:`fleetd.model.wire`, as the etcd driver shapes them. A unit larger than
:data:`~fleetd.model.limits.MAX_UNIT_BYTES` is refused (413) before it is even parsed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError, refused
from fleetd.api.params import json_body, listing, page, query_bool, unit_name
from fleetd.api.revisions import origin_of
from fleetd.model.errors import UnitFileError
from fleetd.model.limits import MAX_UNIT_BYTES, options_size, too_large
from fleetd.model.submit import Action, Refusal, Submission, SubmitError, desired_state, submission
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
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


def _continued_value(value: object) -> object:
    """A value fleet's client read from lines continued with a trailing backslash: its
    parser (go-systemd's) keeps the lines as written, joined by backslash-newline, where
    fleetd's parser joins them as systemd does. Read such a value as fleetd reads that
    file, so a unit with a multi-line ``ExecStart=`` can be submitted; anything else with a
    line break is left to be refused."""
    if not isinstance(value, str) or "\n" not in value:
        return value
    if not all(line.rstrip().endswith("\\") for line in value.split("\n")[:-1]):
        return value
    try:
        parsed = parse_unit_file(f"[Service]\nX={value}\n").options
    except UnitFileError:
        return value
    return parsed[0].value if len(parsed) == 1 else value


def _continued_values(options: list[Any]) -> tuple[list[Any], bool]:
    """``options`` with :func:`_continued_value` applied to each value, and whether any
    value changed."""
    result = [
        {**o, "value": _continued_value(o["value"])} if isinstance(o, dict) and "value" in o else o for o in options
    ]
    return result, result != options


async def _read_submission(request: web.Request, name: str) -> tuple[Submission, bool, bool]:
    """The PUT body, whether ``?replace`` was asked and whether a continued value was
    joined (:func:`_continued_value`), validated in the order fleet's API checks them."""
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
    if isinstance(options, list):  # fleet's client leaves out an empty value ("omitempty")
        options = [{**o, "value": ""} if isinstance(o, dict) and "value" not in o else o for o in options]
    if isinstance(options, list):  # measured before it is parsed: the size bounds that work too
        problem = too_large(options_size(options), MAX_UNIT_BYTES, f"unit {name}")
        if problem:
            raise ApiError(413, problem)
    joined = False
    if isinstance(options, list):
        options, joined = _continued_values(options)
    try:
        target = desired_state(body.get("desiredState"), required=False)
        # a plain PUT replaces, as in fleet; ?replace=true (fleetd's own clients) also does
        asked = query_bool(request, "replace")
        result = submission(name, target, options, replace=True)
    except SubmitError as exc:
        raise _refused(exc) from None
    for warning in result.warnings:
        log.info("unit %s: %s", name, warning)
    return result, asked, joined


def _refused(exc: SubmitError) -> ApiError:
    """fleet answers 409 for a unit that does not exist sent without options."""
    if exc.kind is Refusal.NOT_FOUND:
        return ApiError(409, f"unit does not exist and options field empty: {exc.message}")
    return refused(exc)


async def _apply(registry: Registry, request: Submission, replace_asked: bool) -> int:
    """Carry the request out; the HTTP status of success: 201 when a new body was stored
    (created, or replaced by a plain PUT, as fleet answers), 204 otherwise (a replace asked
    with ``?replace=true``, fleetd's extension, answers 204 as it always did)."""
    decision = await registry.submit(request)
    for warning in decision.warnings:
        log.info("unit %s: %s", request.name, warning)
    if decision.action is Action.CREATE or (decision.action is Action.REPLACE and not replace_asked):
        return 201
    return 204


async def _new_body_without_state(registry: Registry, wanted: Submission, joined: bool) -> Submission:
    """A PUT of new options without ``desiredState`` stores the unit as a new one, as fleet's
    API does: inactive, even when it replaces a loaded or launched unit (fleet's client then
    waits for ``currentState`` inactive before it loads or starts the new version). The same
    options without ``desiredState`` stay a 409, which :func:`decide` answers, unless a
    continued value was ``joined``: fleet's client then sees the stored unit as different
    from its file and sends it as a new version (``--replace``)."""
    if not wanted.desired_missing or wanted.unit is None:
        return wanted
    existing = await registry.get_unit(wanted.name)
    if existing is None or (existing.file == wanted.unit.file and not joined):
        return wanted
    return dataclasses.replace(wanted, desired=DesiredState.INACTIVE, desired_missing=False)


def _check_content_type(request: web.Request) -> None:
    """415 unless exactly one Content-Type whose media type is application/json, as fleet's
    API checks a PUT (parameters such as ``; charset=utf-8`` are allowed)."""
    values = request.headers.getall("Content-Type", [])
    if len(values) != 1:
        raise ApiError(415, f"expected 1 Content-Type, got {len(values)}")
    if values[0].split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, "only acceptable Content-Type is application/json")


async def put_unit(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    _check_content_type(request)
    name = unit_name(request.match_info["name"])
    wanted, replace_asked, joined = await _read_submission(request, name)
    wanted = dataclasses.replace(wanted, origin=origin_of(request))
    try:
        wanted = await _new_body_without_state(registry, wanted, joined)
        return web.Response(status=await _apply(registry, wanted, replace_asked))
    except SubmitError as exc:
        raise _refused(exc) from None


async def delete_unit(request: web.Request) -> web.Response:
    name = unit_name(request.match_info["name"])
    if not await api_state(request).registry.destroy_unit(name):
        raise ApiError(404, f"unit {name} not found")
    return web.Response(status=204)


__all__ = ["delete_unit", "get_unit", "list_units", "put_unit"]
