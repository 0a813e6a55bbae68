"""``POST /fleet/v1/units:batch``: many units created, replaced, re-targeted and destroyed
in one request (beyond fleet, whose clients send one request per unit).

The body is ``{"units": [<PUT /units/{name} bodies, each with its name>], "destroy":
[<names>], "replace": bool}``. Everything is checked before anything is written: the body
(:func:`fleetd.model.batch.parse_batch`: names, options, templates, desired states,
duplicates, each unit's size), then every unit against the cluster as stored
(:meth:`~fleetd.registry.registry.Registry.submit_many`). One problem refuses the whole
request, answered with every problem per unit, and the cluster is left as it was. The
writes then go in as few etcd transactions as etcd's limits allow; what that leaves
atomic is the registry's to say (``Registry.submit_many``) and docs/api.md's to explain.

The body may be larger than one unit's request (up to MAX_BATCH_BYTES, MAX_BATCH_UNITS
entries): it is read here with its own bound, not aiohttp's per-request one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.params import parse_json
from fleetd.api.revisions import origin_of
from fleetd.model.batch import ABSENT, ACTION_WORDS, DESTROYED, BatchError, parse_batch
from fleetd.model.limits import KIB, MAX_BATCH_BYTES, MAX_BATCH_UNITS
from fleetd.model.submit import Refusal

log = logging.getLogger("fleetd.api")

# what each refusal answers, for the whole batch and for each unit: as PUT /units/{name}
# answers it (a unit that does not exist sent without options is fleet's 409)
REFUSAL_STATUS = {Refusal.INVALID: 400, Refusal.NOT_FOUND: 409, Refusal.CONFLICT: 409, Refusal.BUSY: 503}
_READ_CHUNK = 64 * KIB


def _too_large(what: str) -> ApiError:
    return ApiError(413, f"{what}; the limit is {MAX_BATCH_BYTES} bytes ({MAX_BATCH_BYTES // (1024 * KIB)} MiB)")


async def _read_json(request: web.Request) -> Any:
    """The body as JSON, read up to MAX_BATCH_BYTES (413 beyond, also for a chunked body);
    empty, malformed or too deep is a 400, as every body of this API."""
    if request.content_length is not None and request.content_length > MAX_BATCH_BYTES:
        raise _too_large(f"batch request body is {request.content_length} bytes")
    parts: list[bytes] = []
    size = 0
    async for part in request.content.iter_chunked(_READ_CHUNK):
        size += len(part)
        if size > MAX_BATCH_BYTES:
            raise _too_large("batch request body is larger than the limit")
        parts.append(part)
    raw = b"".join(parts)
    return parse_json(raw)


def _check_content_type(request: web.Request) -> None:
    """Exactly one Content-Type of media type application/json, as PUT /units/{name}."""
    values = request.headers.getall("Content-Type", [])
    if len(values) != 1 or values[0].split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, "a batch must be sent with exactly one Content-Type: application/json")


def _count(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    return sum(len(v) for v in (body.get("units"), body.get("destroy")) if isinstance(v, list))


def refusal(exc: BatchError) -> web.Response:
    """fleet's error shape with every problem per unit (``units``) and, when some of the
    batch was already written before the refusal, their names (``written``)."""
    status = REFUSAL_STATUS[exc.kind]
    error: dict[str, Any] = {
        "code": status,
        "message": exc.message,
        "units": [{"name": p.name, "code": REFUSAL_STATUS[p.kind], "message": p.message} for p in exc.problems],
    }
    if exc.written:
        error["written"] = list(exc.written)
    return web.json_response({"error": error}, status=status)


async def post_batch(request: web.Request) -> web.Response:
    registry = api_state(request).registry
    _check_content_type(request)
    body = await _read_json(request)
    count = _count(body)
    if count > MAX_BATCH_UNITS:
        raise ApiError(413, f"a batch names {count} units; the limit is {MAX_BATCH_UNITS} (send several batches)")
    try:
        batch = parse_batch(body)
        for request_ in batch.submissions:
            for warning in request_.warnings:
                log.info("unit %s: %s", request_.name, warning)
        origin = origin_of(request)
        wanted = [dataclasses.replace(r, origin=origin) for r in batch.submissions]
        decisions = await registry.submit_many(wanted) if wanted else []
    except BatchError as exc:
        return refusal(exc)
    results = [{"name": d.stored.name, "result": ACTION_WORDS[d.action]} for d in decisions]
    for decision in decisions:
        for warning in decision.warnings:
            log.info("unit %s: %s", decision.stored.name, warning)
    if batch.destroy:
        destroyed = set(await registry.destroy_units(batch.destroy))
        results += [{"name": name, "result": DESTROYED if name in destroyed else ABSENT} for name in batch.destroy]
    return web.json_response({"units": results})


__all__ = ["REFUSAL_STATUS", "post_batch", "refusal"]
