"""The HTTP connection to fleetd, with the standard library only.

fleetctl must start fast, so this uses ``http.client`` (no aiohttp): a small
``HTTPConnection`` whose socket comes from a *dialer* (TCP, a unix socket, or an SSH
tunnel), with TLS on top for https. Connections are kept alive and are per thread, so
bulk operations can run in a few threads. :mod:`fleetctl.client` builds the API's
operations on top of it.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fleetctl.config import Config, Endpoint, expand_path
from fleetctl.errors import ApiError, FleetctlError

API = "/fleet/v1"
Dialer = Callable[[float | None], socket.socket]


class ConnectFailed(OSError):
    """The connection itself could not be made (so trying another endpoint is safe)."""

    def __init__(self, endpoint: Endpoint, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.endpoint = endpoint
        self.cause = cause


class _Connection(http.client.HTTPConnection):
    def __init__(self, endpoint: Endpoint, dial: Dialer, timeout: float | None, context: ssl.SSLContext | None) -> None:
        super().__init__(endpoint.host or "localhost", endpoint.port or None, timeout=timeout)
        self._endpoint = endpoint
        self._dial = dial
        self._context = context

    def connect(self) -> None:
        try:
            sock = self._dial(self.timeout)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._endpoint.host or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(self._endpoint, exc) from exc
        self.sock = sock


def tcp_dialer(host: str, port: int) -> Dialer:
    def dial(timeout: float | None) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return dial


def unix_dialer(path: str) -> Dialer:
    def dial(timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock

    return dial


def ssl_context(config: Config) -> ssl.SSLContext:
    """Client TLS: verify with ``--ca-file`` (else the system's CAs), present
    ``--cert-file``/``--key-file`` when given."""
    try:
        context = ssl.create_default_context(cafile=expand_path(config.ca_file) if config.ca_file else None)
        if config.cert_file:
            context.load_cert_chain(
                expand_path(config.cert_file), expand_path(config.key_file) if config.key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise FleetctlError(
            f"cannot load the TLS files (--ca-file {config.ca_file}, --cert-file {config.cert_file}, "
            f"--key-file {config.key_file}): {exc}"
        ) from None
    return context


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


def error_message(status: int, body: bytes) -> str:
    """fleetd's ``{"error": {"message"}}``, else the raw body, else the status."""
    try:
        data = json.loads(body)
        message = data["error"]["message"]
        if isinstance(message, str) and message:
            return message
    except (ValueError, KeyError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return text or f"HTTP {status}"


def token_allowed(endpoint: Endpoint, given: Sequence[Endpoint]) -> bool:
    """Whether the bearer token may go to ``endpoint``.

    Only where nobody on the way can read it, or where the user said to send it: over TLS,
    on a unix socket, or to an endpoint the user gave (``given``: --endpoint or
    FLEETCTL_ENDPOINT). A machine's address learnt from the cluster (etcd or the API, for
    journal and status) over plain http gets no token: whoever can write a machine entry
    could otherwise collect the cluster's token, and it would cross the network in clear.
    """
    return endpoint.is_tls or endpoint.is_unix or any(endpoint.same_address(g) for g in given)


class Transport:
    """HTTP to one API endpoint; one keep-alive connection per thread.

    ``token_withheld`` records that a token was configured but not given to this
    transport (see :func:`token_allowed`), so a 401 can say why.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float | None,
        context: ssl.SSLContext | None = None,
        token: str | None = None,
        dial: Dialer | None = None,
        debug: bool = False,
        token_withheld: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.context = context if endpoint.is_tls else None
        self.token = token if not endpoint.is_unix else None
        self.token_withheld = token_withheld
        if dial is None:
            dial = unix_dialer(endpoint.path) if endpoint.is_unix else tcp_dialer(endpoint.host, endpoint.port)
        self.dial = dial
        self.debug = debug
        self._local = threading.local()

    def _connection(self, fresh: bool = False) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = _Connection(self.endpoint, self.dial, self.timeout, self.context)
            self._local.conn = conn
        return conn

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "fleetctl"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def open(self, method: str, path: str, body: Any = None) -> http.client.HTTPResponse:
        """Send a request and return the response with its body unread (for streams).
        :class:`ConnectFailed` when no connection could be made."""
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers(data)
        started = time.monotonic()
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt > 0)
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
            except ConnectFailed:
                conn.close()
                raise
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: redo once
                raise
            except BaseException:
                conn.close()
                raise
            if self.debug:
                elapsed = (time.monotonic() - started) * 1000
                print(
                    f"DEBUG: {method} {self.endpoint.url}{path} -> {response.status} ({elapsed:.0f} ms)",
                    file=sys.stderr,
                )
            return response
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, body: Any = None) -> Response:
        response = self.open(method, path, body)
        try:
            payload = response.read()
        except BaseException:
            self._connection().close()
            raise
        if response.will_close:
            self._connection().close()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, payload)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def learnt_transport(endpoint: Endpoint, given: Sequence[Endpoint], token: str | None, **kwargs: Any) -> Transport:
    """A transport to a machine address learnt from the cluster, with the token only if
    :func:`token_allowed` says so."""
    allowed = token_allowed(endpoint, given)
    if token and not allowed and kwargs.get("debug"):
        print(
            f"DEBUG: not sending the API token to {endpoint.url} (plain http, learnt from the cluster)", file=sys.stderr
        )
    return Transport(endpoint, token=token if allowed else None, token_withheld=bool(token) and not allowed, **kwargs)


def unauthorized_hint(transport: Transport | None) -> str:
    """What to add to a 401: why no token was sent, or how to send one."""
    if transport is not None and transport.token_withheld:
        url = transport.endpoint.url
        return (
            f"; fleetctl did not send its API token to {url}: that address was learnt from the cluster and "
            "the connection is plain http, where the token would travel in clear text. To allow it, serve "
            "fleetd's API over TLS (api_certfile/api_keyfile, and https endpoints), or name that address "
            f"yourself: --endpoint <your endpoint>,{url}"
        )
    if transport is not None and transport.token:
        return "; the API token was refused: check --api-token-file or --api-token (FLEETCTL_API_TOKEN_FILE/_TOKEN)"
    return "; pass the API token with --api-token-file or FLEETCTL_API_TOKEN_FILE (or --api-token, FLEETCTL_API_TOKEN)"


def check(response: Response, *ok: int, transport: Transport | None = None) -> Response:
    if response.status in ok:
        return response
    message = error_message(response.status, response.body)
    if response.status == 401:
        message += unauthorized_hint(transport)
    raise ApiError(response.status, message, response.headers)


def unreachable_message(endpoints: Sequence[Endpoint], failures: Sequence[BaseException]) -> str:
    """What to say when no endpoint answered: where, why, and what to do about it."""
    parts = []
    for endpoint, failure in zip(endpoints, failures, strict=False):
        cause = failure.cause if isinstance(failure, ConnectFailed) else failure
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        parts.append(f"{endpoint.url} ({reason})")
    where = "; ".join(parts)
    where_hint = (
        "Is fleetd running on this machine (systemctl status fleetd.socket fleetd)?"
        if all(e.is_unix for e in endpoints)
        else "Is fleetd running there, with its API on that address?"
    )
    hint = (
        f"{where_hint} Point fleetctl at a fleetd with --endpoint (e.g. --endpoint "
        "http://10.0.0.1:54728) or the FLEETCTL_ENDPOINT environment variable."
    )
    if any(isinstance(getattr(f, "cause", f), PermissionError) for f in failures):
        hint = "Permission denied: run fleetctl as root or as a member of the socket's group. " + hint
    return f"fleetd isn't reachable at {where}. {hint}"


# -- the API driver -------------------------------------------------------------------------


def iter_lines(response: http.client.HTTPResponse) -> Iterator[str]:
    """A streamed text response, line by line (without the newline)."""
    while True:
        line = response.readline()
        if not line:
            return
        yield line.decode("utf-8", "replace").rstrip("\n")
