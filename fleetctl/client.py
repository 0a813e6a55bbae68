"""Talking to the cluster: the operations the commands use, over fleetd's HTTP API.

The connection itself (dialers, TLS, keep-alive per thread) is :mod:`fleetctl.transport`,
re-exported here for the modules that import it from this one.

:class:`Cluster` is what the commands use; :class:`ApiClient` implements it over the API
(the default driver) and :mod:`fleetctl.etcd_driver` over etcd directly. Records are the
API's JSON shapes in both (see :mod:`fleetctl.output`).
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

from fleetctl.config import Config, Endpoint, parse_endpoint
from fleetctl.errors import FleetctlError, NotReachable
from fleetctl.transport import (
    API,
    ConnectFailed,
    Dialer,
    Response,
    Transport,
    check,
    error_message,
    iter_lines,
    learnt_transport,
    ssl_context,
    tcp_dialer,
    unix_dialer,
    unreachable_message,
)

# Page size asked of GET /units, /state and /machines (the server caps it; 100 in fleet).
PAGE_SIZE = 10000
BULK_THREADS = 8
T = TypeVar("T")
Record = dict[str, Any]


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
        """A transport to an endpoint the user gave (or the default socket): with the token."""
        return Transport(
            endpoint,
            timeout=self.config.request_timeout or None,
            context=context,
            token=self._token(endpoint),
            dial=self._dialers(endpoint),
            debug=self.config.debug,
        )

    def _token(self, endpoint: Endpoint) -> str | None:
        # A unix socket never needs one: do not make a token file a requirement there.
        return None if endpoint.is_unix else self.config.bearer_token()

    def _check(self, response: Response, *ok: int) -> Response:
        return check(response, *ok, transport=self.transport)

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
            response = self._check(self.request("GET", f"{path}?{urlencode(params)}"), 200)
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
        return self._check(response, 200).json()

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
        return dict((self._check(response, 200).json() or {}).get("units") or {})

    def create_unit(self, name: str, options: list[Record], desired: str) -> None:
        body = {"name": name, "desiredState": desired, "options": options}
        self._check(self.request("PUT", f"/units/{_quote(name)}", body), 201, 204)

    def set_desired(self, name: str, desired: str) -> None:
        body = {"name": name, "desiredState": desired}
        self._check(self.request("PUT", f"/units/{_quote(name)}", body), 201, 204)

    def replace_unit(self, name: str, options: list[Record], desired: str) -> None:
        body = {"name": name, "desiredState": desired, "options": options}
        self._check(self.request("PUT", f"/units/{_quote(name)}?replace=true", body), 201, 204)

    def destroy_unit(self, name: str) -> bool:
        response = self.request("DELETE", f"/units/{_quote(name)}")
        if response.status == 404:
            return False
        self._check(response, 200, 204)
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
        """Where to ask for a machine's journal and status, in order: the fleetd fleetctl
        talks to (it answers for its own machine and relays to the others' peer
        listeners), then the machine's own API at its IP (on the port of a TCP endpoint,
        else 54728) for a fleetd that cannot relay (it answers 404 naming that IP)."""
        current = self.endpoints[self._current]
        result = [self.transport]
        ip = machine.get("primaryIP") or ""
        if ip:
            endpoint = current.on_host(ip)
            if (endpoint.scheme, endpoint.host, endpoint.port) == (current.scheme, current.host, current.port):
                return result
            context = self._context
            if endpoint.is_tls and context is None:
                context = ssl_context(self.config)
            # learnt from the cluster: the token only over TLS or to an address the user gave
            given = self.endpoints if self.config.endpoint_given else []
            transport = learnt_transport(
                endpoint,
                given,
                self._token(endpoint),
                timeout=self.config.request_timeout or None,
                context=context,
                dial=self._dialers(endpoint),
                debug=self.config.debug,
            )
            result.append(transport)
        return result

    def close(self) -> None:
        for transport in self.transports:
            transport.close()


__all__ = [
    "API",
    "Dialer",
    "Record",
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
