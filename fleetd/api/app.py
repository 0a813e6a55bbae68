"""fleet's HTTP API v1 (``/fleet/v1``) as an aiohttp application, plus what we add to it.

``make_app(registry, node)`` builds the application and is the one place that says which
handler answers which route; :mod:`fleetd.api.listeners` serves it on unix sockets, TCP
and activated sockets. Handlers read and write the cluster only through
:class:`~fleetd.registry.registry.Registry` and validate with the model, so the API
refuses exactly what fleetctl and the engine would.

Every error answers ``{"error": {"code": N, "message": "..."}}``, including unknown routes
(404), wrong methods (405), malformed JSON (400), missing tokens on TCP (401) and a node
that must not serve (503, with :meth:`NodeInfo.error`'s message).
"""

from __future__ import annotations

from aiohttp import web

from fleetd.api.auth import TOKEN_RULES, TokenRules
from fleetd.api.batch import post_batch
from fleetd.api.context import DEFAULT_TOKEN_LIMIT, STATE, ApiState, NodeInfo
from fleetd.api.discovery import discovery_document
from fleetd.api.errors import ApiError
from fleetd.api.events import EVENT_FOLLOWS, list_events
from fleetd.api.extensions import JOURNAL_FOLLOWS, FollowSlots, journal, list_unplaceable, status
from fleetd.api.machines import list_machines, patch_machines
from fleetd.api.metrics import metrics as metrics_handler
from fleetd.api.middleware import fleet_middleware
from fleetd.api.openapi import openapi_document
from fleetd.api.revisions import get_revision, list_revisions
from fleetd.api.state import STATE_WAITS, WaitSlots, get_state, list_states
from fleetd.api.units import delete_unit, get_unit, list_units, put_unit
from fleetd.api.updates import get_update, list_updates, post_update
from fleetd.metrics import Metrics
from fleetd.model.limits import MAX_REQUEST_BYTES
from fleetd.registry.registry import Registry

PREFIX = "/fleet/v1"
# fleet's API answers under its old prefix too (api/mux.go)
ALIAS = "/v1-alpha"
PREFIXES = (PREFIX, ALIAS)
# aiohttp refuses a larger body itself (413), before a handler reads it into memory
MAX_BODY = MAX_REQUEST_BYTES


async def no_method(request: web.Request) -> web.Response:
    """``/`` and the bare prefixes: 405 whatever the method, as fleet answers (no method
    is allowed there)."""
    raise ApiError(405, f"method {request.method} not allowed on {request.path}", {"Allow": ""})


async def discovery(request: web.Request) -> web.Response:
    return web.json_response(discovery_document())


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def make_app(
    registry: Registry, node: NodeInfo, *, token_limit: int = DEFAULT_TOKEN_LIMIT, metrics: Metrics | None = None
) -> web.Application:
    """The API application: fleet's ``/fleet/v1`` routes plus journal, status,
    unplaceable and ``/metrics``. ``token_limit`` is the page size of every list;
    ``metrics``: the daemon's series (without it, the application has its own)."""
    app = web.Application(middlewares=[fleet_middleware], client_max_size=MAX_BODY)
    metrics = Metrics() if metrics is None else metrics
    metrics.node, metrics.store = node, registry
    app[STATE] = ApiState(registry, node, max(1, int(token_limit)), metrics)
    app[TOKEN_RULES] = TokenRules()
    app[JOURNAL_FOLLOWS] = FollowSlots()
    app[EVENT_FOLLOWS] = FollowSlots()
    app[STATE_WAITS] = WaitSlots()

    async def stop_streams(app: web.Application) -> None:
        app[STATE].closing = True
        app[STATE_WAITS].closing.set()  # long-polls answer now instead of at their timeout

    app.on_shutdown.append(stop_streams)
    for prefix in PREFIXES:  # fleet serves every route under both prefixes
        app.router.add_get(f"{prefix}/units", list_units)
        app.router.add_post(f"{prefix}/units:batch", post_batch)
        app.router.add_get(f"{prefix}/units/{{name}}", get_unit)
        app.router.add_put(f"{prefix}/units/{{name}}", put_unit)
        app.router.add_delete(f"{prefix}/units/{{name}}", delete_unit)
        app.router.add_get(f"{prefix}/units/{{name}}/revisions", list_revisions)
        app.router.add_get(f"{prefix}/units/{{name}}/revisions/{{revision}}", get_revision)
        app.router.add_get(f"{prefix}/state", list_states)
        app.router.add_get(f"{prefix}/state/{{name}}", get_state)
        app.router.add_get(f"{prefix}/machines", list_machines)
        app.router.add_patch(f"{prefix}/machines", patch_machines)
        app.router.add_get(f"{prefix}/machines/{{machine}}/journal/{{name}}", journal)
        app.router.add_get(f"{prefix}/machines/{{machine}}/status/{{name}}", status)
        app.router.add_get(f"{prefix}/unplaceable", list_unplaceable)
        app.router.add_get(f"{prefix}/events", list_events)
        app.router.add_get(f"{prefix}/updates", list_updates)
        app.router.add_get(f"{prefix}/updates/{{name}}", get_update)
        app.router.add_post(f"{prefix}/updates/{{name}}", post_update)
        app.router.add_get(f"{prefix}/discovery", discovery)
        app.router.add_get(f"{prefix}/openapi.json", openapi)
        app.router.add_route("*", prefix, no_method)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_route("*", "/", no_method)  # fleet's baseHandler: 405 on "/" itself
    return app


__all__ = ["ALIAS", "MAX_BODY", "PREFIX", "PREFIXES", "discovery", "make_app", "openapi"]
