"""The one middleware every request passes: token check, node health, fleet's error shape.

Handlers only raise; this turns every outcome into an answer in fleet's shape, including
what aiohttp's router refuses (unknown route 404, wrong method 405, body too large) and
failures nobody anticipated, and counts and times the answers for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from fleetd.api.auth import TOKEN_RULES, authorized
from fleetd.api.context import api_state
from fleetd.api.errors import ApiError, error_response
from fleetd.metrics import UNMATCHED
from fleetd.registry import is_unavailable
from fleetd.registry.registry import RegistryError, UnitNotFound

log = logging.getLogger("fleetd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _check_access(request: web.Request) -> None:
    """401 without the bearer token a TCP listener requires; 503 while the node must
    not serve (``/metrics`` still answers, to show that state)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not authorized(request.app[TOKEN_RULES], sockname, request.headers.get("Authorization")):
        raise ApiError(
            401,
            "missing or wrong bearer token (send Authorization: Bearer <token>)",
            {"WWW-Authenticate": 'Bearer realm="fleet"'},
        )
    problem = api_state(request).node.error()
    if problem and request.path != "/metrics":
        raise ApiError(503, problem)


@web.middleware
async def fleet_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token check (TCP), 503 while the node must not serve, fleet's error shape for every
    failure, and the request counter and duration (by route: its pattern, never the URL)."""
    state = api_state(request)
    started = time.perf_counter()
    code = 500
    try:
        _check_access(request)
        response = await handler(request)
        code = response.status
        return response
    except ApiError as exc:
        code = exc.status
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:  # router and body-size errors: same shape as ours
        code = exc.status
        if code < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = {
            404: f"not found: {request.method} {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
        }.get(code, exc.reason)
        return error_response(code, message, headers)
    except UnitNotFound as exc:
        code = 404
        return error_response(code, str(exc))
    except RegistryError as exc:
        code = 409
        return error_response(code, str(exc))
    except asyncio.CancelledError:
        code = 499
        raise
    except Exception as exc:  # every failure answers in fleet's shape (logged)
        if is_unavailable(exc):
            code = 503
            log.warning("API %s %s: etcd unavailable: %r", request.method, request.path, exc)
            return error_response(503, f"cannot reach etcd: {exc or type(exc).__name__}")
        log.exception("API %s %s failed", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        state.metrics.api_request(request.method, _route(request), code, time.perf_counter() - started)


def _route(request: web.Request) -> str:
    """The pattern of the route that answered (``/fleet/v1/units/{name}``): a bounded label,
    unlike the path; UNMATCHED when no route did."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


__all__ = ["fleet_middleware"]
