"""fleet's HTTP API v1: the aiohttp application and the listeners that serve it.

The API layer talks to etcd only through :class:`fleetd.registry.registry.Registry` and to
the local machine's systemd only through the :class:`NodeInfo` it is given.
"""

from fleetd.api.activation import ActivationError, listen_fds
from fleetd.api.app import make_app
from fleetd.api.context import DEFAULT_TOKEN_LIMIT, Node, NodeInfo
from fleetd.api.errors import ApiError
from fleetd.api.listeners import (
    ApiServer,
    ListenError,
    SocketListener,
    TcpListener,
    UnixListener,
    activated_listeners,
    make_ssl_context,
    serve,
    start_api,
)

__all__ = [
    "ActivationError",
    "ApiError",
    "ApiServer",
    "DEFAULT_TOKEN_LIMIT",
    "ListenError",
    "Node",
    "NodeInfo",
    "SocketListener",
    "TcpListener",
    "UnixListener",
    "activated_listeners",
    "listen_fds",
    "make_app",
    "make_ssl_context",
    "serve",
    "start_api",
]
