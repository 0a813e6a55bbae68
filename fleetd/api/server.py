"""The API's former single module, kept so that ``from fleetd.api.server import ...`` still
works: every name it exported now lives in a module per concern (:mod:`fleetd.api.app`,
:mod:`~fleetd.api.context`, :mod:`~fleetd.api.errors`, :mod:`~fleetd.api.units`,
:mod:`~fleetd.api.machines`, ...) and is re-exported from here unchanged.
"""

from __future__ import annotations

from fleetd.api.app import PREFIX, make_app
from fleetd.api.context import DEFAULT_TOKEN_LIMIT, ApiState, Node, NodeInfo
from fleetd.api.errors import ApiError, error_response
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
from fleetd.api.machines import MetadataOp, parse_metadata_patch
from fleetd.model.journal import JOURNAL_OUTPUTS, MAX_JOURNAL_LINES
from fleetd.model.wire import current_state

__all__ = [
    "DEFAULT_TOKEN_LIMIT",
    "JOURNAL_OUTPUTS",
    "MAX_JOURNAL_LINES",
    "PREFIX",
    "ApiError",
    "ApiServer",
    "ApiState",
    "ListenError",
    "MetadataOp",
    "Node",
    "NodeInfo",
    "SocketListener",
    "TcpListener",
    "UnixListener",
    "activated_listeners",
    "current_state",
    "error_response",
    "make_app",
    "make_ssl_context",
    "parse_metadata_patch",
    "serve",
    "start_api",
]
