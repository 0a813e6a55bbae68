"""Talking to the cluster: fleetd's HTTP API with the standard library only.

fleetctl must start fast, so this uses ``http.client`` (no aiohttp): a small
``HTTPConnection`` whose socket comes from a *dialer* (TCP, a unix socket, or an SSH
tunnel), with TLS on top for https. Connections are kept alive and are per thread, so
bulk operations can run in a few threads.

:class:`Cluster` is what the commands use; :class:`ApiClient` implements it over the API
(the default driver) and :mod:`fleetctl.etcd_driver` over etcd directly. Records are the
API's JSON shapes in both (see :mod:`fleetctl.output`).
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

from fleetctl.config import Config, Endpoint, expand_path, parse_endpoint
from fleetctl.errors import ApiError, FleetctlError, NotReachable

API = "/fleet/v1"
# Page size asked of GET /units, /state and /machines (the server caps it; 100 in fleet).
PAGE_SIZE = 10000
BULK_THREADS = 8
T = TypeVar("T")
Record = dict[str, Any]
Dialer = Callable[[float | None], socket.socket]


class Cluster(Protocol):
    """The operations the commands need, whatever the driver."""

    def machines(self) -> list[Record]: ...

    def units(self) -> list[Record]: ...

    def unit(self, name: str) -> Record | None: ...

    def states(self, unit: str | None = None, machine: str | None = None) -> list[Record]: ...

    def unplaceable(self) -> dict[str, str]: ...

    def create_unit(self, name: str, options: list[Record], desired: str) -> None: ...

    def set_desired(self, name: str, desired: str) -> None: ...

    def replace_unit(self, name: str, options: list[Record], desired: str) -> None: ...

    def destroy_unit(self, name: str) -> bool: ...

    def bulk(self, calls: Sequence[Callable[[], T]]) -> list[T | BaseException]: ...

    def node_transports(self, machine: Record) -> list[Transport]: ...

    def close(self) -> None: ...


# -- one HTTP endpoint ----------------------------------------------------------------------


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


class Transport:
    """HTTP to one API endpoint; one keep-alive connection per thread."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float | None,
        context: ssl.SSLContext | None = None,
        token: str | None = None,
        dial: Dialer | None = None,
        debug: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.context = context if endpoint.is_tls else None
        self.token = token if not endpoint.is_unix else None
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
                print(f"DEBUG: {method} {self.endpoint.url}{path} -> {response.status} ({elapsed:.0f} ms)", file=sys.stderr)
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


def check(response: Response, *ok: int) -> Response:
    if response.status in ok:
        return response
    message = error_message(response.status, response.body)
    if response.status == 401:
        message += "; pass the API token with --api-token or FLEETCTL_API_TOKEN"
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


def _quote(name: str) -> str:
    return quote(name, safe="@:")


class ApiClient:
    """:class:`Cluster` over fleetd's HTTP API; endpoints are tried in order and the first
    that answers is kept."""

    concurrent = True  # safe to call from several threads (one connection each)

    def __init__(self, config: Config, dialers: Callable[[Endpoint], Dialer | None] | None = None) -> None:
        self.config = config
        self.endpoints = [parse_endpoint(text) for text in config.endpoints()]
        self._dialers = dialers or (lambda endpoint: None)
        context = ssl_context(config) if any(e.is_tls for e in self.endpoints) else None
        self._context = context
        self.transports = [self._transport(e, context) for e in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()

    def _transport(self, endpoint: Endpoint, context: ssl.SSLContext | None) -> Transport:
        return Transport(
            endpoint,
            timeout=self.config.request_timeout or None,
            context=context,
            token=self.config.api_token,
            dial=self._dialers(endpoint),
            debug=self.config.debug,
        )

    @property
    def transport(self) -> Transport:
        return self.transports[self._current]

    def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send to the current endpoint, moving on to the next ones when it cannot be
        reached at all (never after a request was sent)."""
        failures: list[BaseException] = []
        count = len(self.transports)
        start = self._current
        for step in range(count):
            index = (start + step) % count
            transport = self.transports[index]
            try:
                response = transport.request(method, f"{API}{path}", body)
            except ConnectFailed as exc:
                failures.append(exc)
                continue
            except TimeoutError:
                raise FleetctlError(
                    f"fleetd at {transport.endpoint.url} did not answer {method} {API}{path} within "
                    f"{self.config.request_timeout:g} s; raise --request-timeout if it is just slow"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                hint = ""
                if transport.endpoint.is_tls and not self.config.cert_file:
                    hint = " (if it requires a client certificate, pass --cert-file and --key-file)"
                raise FleetctlError(f"talking to fleetd at {transport.endpoint.url} failed: {exc}{hint}") from None
            if index != self._current:
                with self._lock:
                    self._current = index
            return response
        ordered = [self.endpoints[(start + i) % count] for i in range(count)]
        raise NotReachable(unreachable_message(ordered, failures))

    def _pages(self, path: str, field: str, query: dict[str, str] | None = None) -> list[Record]:
        items: list[Record] = []
        params = dict(query or {})
        params["pageSize"] = str(PAGE_SIZE)
        while True:
            response = check(self.request("GET", f"{path}?{urlencode(params)}"), 200)
            data = response.json() or {}
            items.extend(data.get(field) or [])
            token = data.get("nextPageToken")
            if not token:
                return items
            params["nextPageToken"] = token

    def machines(self) -> list[Record]:
        return self._pages("/machines", "machines")

    def units(self) -> list[Record]:
        return self._pages("/units", "units")

    def unit(self, name: str) -> Record | None:
        response = self.request("GET", f"/units/{_quote(name)}")
        if response.status == 404:
            return None
        return check(response, 200).json()

    def states(self, unit: str | None = None, machine: str | None = None) -> list[Record]:
        query = {}
        if unit:
            query["unitName"] = unit
        if machine:
            query["machineID"] = machine
        return self._pages("/state", "states", query)

    def unplaceable(self) -> dict[str, str]:
        response = self.request("GET", "/unplaceable")
        if response.status == 404:
            return {}  # a fleetd without the endpoint: no reasons to show
        return dict((check(response, 200).json() or {}).get("units") or {})

    def create_unit(self, name: str, options: list[Record], desired: str) -> None:
        body = {"name": name, "desiredState": desired, "options": options}
        check(self.request("PUT", f"/units/{_quote(name)}", body), 201, 204)

    def set_desired(self, name: str, desired: str) -> None:
        body = {"name": name, "desiredState": desired}
        check(self.request("PUT", f"/units/{_quote(name)}", body), 201, 204)

    def replace_unit(self, name: str, options: list[Record], desired: str) -> None:
        body = {"name": name, "desiredState": desired, "options": options}
        check(self.request("PUT", f"/units/{_quote(name)}?replace=true", body), 201, 204)

    def destroy_unit(self, name: str) -> bool:
        response = self.request("DELETE", f"/units/{_quote(name)}")
        if response.status == 404:
            return False
        check(response, 200, 204)
        return True

    def bulk(self, calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
        """Run independent calls, a few at a time when there are many; each result is the
        call's value or the exception it raised."""

        def run(call: Callable[[], T]) -> T | BaseException:
            try:
                return call()
            except FleetctlError as exc:
                return exc

        if len(calls) <= 2:
            return [run(call) for call in calls]
        with ThreadPoolExecutor(max_workers=min(BULK_THREADS, len(calls))) as pool:
            return list(pool.map(run, calls))

    def node_transports(self, machine: Record) -> list[Transport]:
        """Where to ask for a machine's journal and status, in order: the machine's own
        API at its IP (on the port of a TCP endpoint, else 54728), and, when fleetctl talks
        to a unix socket, that socket first (it is the machine's own when local)."""
        current = self.endpoints[self._current]
        result = []
        if current.is_unix:
            result.append(self.transport)
        ip = machine.get("primaryIP") or ""
        if ip:
            endpoint = current.on_host(ip)
            context = self._context
            if endpoint.is_tls and context is None:
                context = ssl_context(self.config)
            transport = self._transport(endpoint, context)
            transport.timeout = self.config.request_timeout or None
            result.append(transport)
        elif not current.is_unix:
            result.append(self.transport)
        return result

    def close(self) -> None:
        for transport in self.transports:
            transport.close()


def iter_lines(response: http.client.HTTPResponse) -> Iterator[str]:
    """A streamed text response, line by line (without the newline)."""
    while True:
        line = response.readline()
        if not line:
            return
        yield line.decode("utf-8", "replace").rstrip("\n")


__all__ = [
    "ApiClient",
    "Cluster",
    "ConnectFailed",
    "Response",
    "Transport",
    "check",
    "error_message",
    "iter_lines",
    "ssl_context",
    "tcp_dialer",
    "unix_dialer",
    "unreachable_message",
]
