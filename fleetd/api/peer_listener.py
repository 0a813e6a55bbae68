"""The peer listener: what one fleetd answers other fleetds (see :mod:`fleetd.api.peer`).

Its application has two routes, this machine's journal and status, behind one door: a
request signed with the cluster's peer secret. It never relays further, so a request
cannot loop between machines.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from fleetd.api.auth import TOKEN_RULES, TokenRules
from fleetd.api.context import STATE, ApiState, NodeInfo
from fleetd.api.errors import ApiError
from fleetd.api.extensions import JOURNAL_FOLLOWS, FollowSlots, journal, status
from fleetd.api.listeners import ApiServer, TcpListener, start_api
from fleetd.api.middleware import fleet_middleware
from fleetd.api.peer import PEER_RELAY, Nonces, PeerRelay, SecretCache, check_signature
from fleetd.registry.registry import Registry

log = logging.getLogger("fleetd.peer")

NONCES = web.AppKey("fleet_peer_nonces", Nonces)
SECRETS = web.AppKey("fleet_peer_secret", SecretCache)


@web.middleware
async def peer_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse what is not signed with the cluster's secret (the only door of this app)."""
    try:
        secret = await request.app[SECRETS].get()
    except Exception as exc:  # noqa: BLE001 - etcd down or a bad secret record: say which
        raise ApiError(503, f"cannot read the cluster's peer secret: {exc}") from None
    headers = {k.lower(): v for k, v in request.headers.items()}
    sender = check_signature(secret, request.app[NONCES], request.method, request.path_qs, headers, time.time())
    log.debug("peer request from %s: %s", sender, request.path_qs)
    return await handler(request)


def make_peer_app(registry: Registry, node: NodeInfo) -> web.Application:
    """The peer listener's application: only this machine's journal and status."""
    app = web.Application(middlewares=[fleet_middleware, peer_auth], client_max_size=4096)
    app[STATE] = ApiState(registry, node, 1)
    app[TOKEN_RULES] = TokenRules()
    app[JOURNAL_FOLLOWS] = FollowSlots()
    app[NONCES] = Nonces()
    app[SECRETS] = SecretCache(registry)

    async def stop_streams(app: web.Application) -> None:
        app[STATE].closing = True

    app.on_shutdown.append(stop_streams)
    app.router.add_get("/fleet/v1/machines/{machine}/journal/{name}", journal)
    app.router.add_get("/fleet/v1/machines/{machine}/status/{name}", status)
    return app


async def start_peer_listener(
    registry: Registry, node: NodeInfo, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> ApiServer:
    """Serve :func:`make_peer_app` on ``host:port`` (the machine's public IP: other
    machines must reach it, and nothing else needs to), over TLS with ``ssl_context``
    (the daemon's :class:`~fleetd.api.peer_tls.PeerIdentity`)."""
    return await start_api(make_peer_app(registry, node), [TcpListener(host, port, ssl_context)])


def install_relay(app: web.Application, registry: Registry, machine_id: str, port: int) -> PeerRelay:
    """Let the API application ``app`` relay journal and status to other machines."""
    relay = PeerRelay(registry, machine_id, port)
    app[PEER_RELAY] = relay

    async def close(app: web.Application) -> None:
        await relay.close()

    app.on_cleanup.append(close)
    return relay


__all__ = ["NONCES", "SECRETS", "install_relay", "make_peer_app", "peer_auth", "start_peer_listener"]
