"""Talking to the cluster: the operations the commands use, over fleetd's HTTP API.

The connection itself (dialers, TLS, keep-alive per thread) is :mod:`fleetctl.transport`,
re-exported here for the modules that import it from this one.

:class:`Cluster` is what the commands use; :class:`ApiClient` implements it over the API
(the default driver) and :mod:`fleetctl.etcd_driver` over etcd directly. Records are the
API's JSON shapes in both (see :mod:`fleetctl.output`).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from fleetd.model.limits import MAX_BATCH_BYTES, MAX_BATCH_UNITS, MAX_STATE_WAIT_SECONDS

# Page size asked of GET /units, /state and /machines (the server caps it; 100 in fleet).
PAGE_SIZE = 10000
BULK_THREADS = 8
T = TypeVar("T")
Record = dict[str, Any]
# The batch route; a fleetd without it answers 404 (or 405), and fleetctl then writes unit by unit.
BATCH_PATH = "/units:batch"
# the long-poll's index header; an answer without it comes from a fleetd that cannot wait
INDEX_HEADER = "x-fleet-index"
# room left in a batch body for what is not an entry ({"units": [...], "replace": ...})
_BATCH_FRAME_BYTES = 1024


@dataclass(frozen=True)
class UnitWrite:
    """One unit of a batch write, as ``PUT /units/{name}`` takes it: no options changes
    only the desired state (or creates an instance from its template); ``replace`` lets
    options that differ from the stored ones replace them."""

    name: str
    desired: str
    options: list[Record] | None = None
    replace: bool = False

    def entry(self) -> Record:
        entry: Record = {"name": self.name, "desiredState": self.desired}
        if self.options is not None:
            entry["options"] = self.options
        return entry


def batches(
    entries: Sequence[Record], max_units: int = MAX_BATCH_UNITS, max_bytes: int = MAX_BATCH_BYTES
) -> list[range]:
    """Split batch entries, in order, into requests within the server's limits: at most
    ``max_units`` entries and ``max_bytes`` bytes of JSON each (one entry larger than that
    goes alone, and the server names the problem)."""
    result: list[range] = []
    start, used = 0, _BATCH_FRAME_BYTES
    for index, entry in enumerate(entries):
        size = len(json.dumps(entry)) + 2
        if index > start and (index - start >= max_units or used + size > max_bytes):
            result.append(range(start, index))
            start, used = index, _BATCH_FRAME_BYTES
        used += size
    if start < len(entries):
        result.append(range(start, len(entries)))
    return result


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

    def write_units(self, writes: Sequence[UnitWrite]) -> dict[str, str]:
        """Write many units in as few requests as the cluster allows; returns the
        failures, name -> message (the others were written)."""
        ...

    def destroy_units(self, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Destroy many units at once: the names destroyed (those that existed) and the
        failures, name -> message."""
        ...

    def wait_states(
        self, index: int | None, timeout: float, unit: str | None = None
    ) -> tuple[list[Record], int | None]:
        """Every unit state (of ``unit`` only, when given) and the cluster's index: at once
        when ``index`` is None, else once a state or placement changed after ``index`` or
        ``timeout`` seconds passed. The index returned is None when the cluster cannot
        wait (an older fleetd): the caller then polls."""
        ...

    def bulk(self, calls: Sequence[Callable[[], T]]) -> list[T | BaseException]: ...

    def events(self, unit: str | None = None) -> list[Record]:
        """The cluster's history (``GET /events``), oldest first, every page."""
        ...

    def revisions(self, name: str) -> list[Record] | None:
        """A unit's kept revisions, oldest first; None when the unit does not exist."""
        ...

    def unit_revision(self, name: str, number: int) -> Record | None:
        """One revision with its ``options``; None when it is not kept."""
        ...

    def start_update(self, name: str, body: Record) -> Record:
        """Start a rolling update or rollback of ``name`` (``POST /updates/{name}``'s body:
        options or revision, and parameters); the record as written."""
        ...

    def update_record(self, name: str) -> Record | None:
        """The record of ``name``'s latest rolling update; None when it never had one."""
        ...

    def follow_events(self, unit: str | None = None) -> Iterator[Record]:
        """The history, then each new event as it is recorded, without end."""
        ...

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
        # whether the fleetd answers POST /units:batch; False after a 404 or 405 from it
        self.batch_supported = True

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

    def events(self, unit: str | None = None) -> list[Record]:
        return self._pages("/events", "events", {"unitName": unit} if unit else None)

    def revisions(self, name: str) -> list[Record] | None:
        response = self.request("GET", f"/units/{_quote(name)}/revisions")
        if response.status == 404:
            return None
        return list((self._check(response, 200).json() or {}).get("revisions") or [])

    def unit_revision(self, name: str, number: int) -> Record | None:
        response = self.request("GET", f"/units/{_quote(name)}/revisions/{int(number)}")
        if response.status == 404:
            return None
        return self._check(response, 200).json()

    def start_update(self, name: str, body: Record) -> Record:
        response = self.request("POST", f"/updates/{_quote(name)}", body)
        if response.status == 404 and "not found: POST" in error_message(response.status, response.body):
            raise FleetctlError("this fleetd has no rolling updates (POST /updates): upgrade it")
        return self._check(response, 201).json()

    def update_record(self, name: str) -> Record | None:
        response = self.request("GET", f"/updates/{_quote(name)}")
        if response.status == 404:
            return None
        return self._check(response, 200).json()

    def follow_events(self, unit: str | None = None) -> Iterator[Record]:
        query = {"follow": "true", **({"unitName": unit} if unit else {})}
        transport = self.transport
        response = transport.open("GET", f"{API}/events?{urlencode(query)}")
        if response.status != 200:
            self._check(
                Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()), 200
            )
        sock = transport._connection().sock
        if sock is not None:
            sock.settimeout(None)  # a quiet cluster may record nothing for a long time
        try:
            while line := response.readline():
                if line.strip():
                    yield json.loads(line)
        finally:
            transport.close()

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

    # -- many units in one request (POST /units:batch), unit by unit on an older fleetd ---------

    def _post_batch(self, body: Record, names: Sequence[str]) -> dict[str, str] | None:
        """One batch request: the failures (name -> message), or None when this fleetd has
        no batch route (then every later batch goes unit by unit too)."""
        response = self.request("POST", BATCH_PATH, body)
        if response.status in (404, 405):
            self.batch_supported = False
            return None
        if response.status == 200:
            return {}
        try:
            error = (response.json() or {}).get("error") or {}
        except ValueError:
            error = {}
        problems = {p.get("name"): p.get("message") for p in error.get("units") or [] if isinstance(p, dict)}
        if not problems:  # not a refused batch: the request itself failed, for every unit in it
            self._check(response, 200)
        written = set(error.get("written") or [])
        refused = "not written: the batch it was sent in was refused (see the other errors)"
        return {name: problems.get(name) or refused for name in names if name not in written}

    def write_units(self, writes: Sequence[UnitWrite]) -> dict[str, str]:
        failures: dict[str, str] = {}
        entries = [w.entry() for w in writes]
        replace = any(w.replace for w in writes)
        pending = list(writes)
        if self.batch_supported:
            pending = []
            for run in batches(entries):
                chunk = writes[run.start : run.stop]
                if not self.batch_supported:
                    pending.extend(chunk)
                    continue
                names = [w.name for w in chunk]
                try:
                    result = self._post_batch({"units": entries[run.start : run.stop], "replace": replace}, names)
                except FleetctlError as exc:
                    failures.update(dict.fromkeys(names, str(exc)))
                    continue
                if result is None:
                    pending.extend(chunk)
                else:
                    failures.update(result)
        if pending:  # a fleetd without the batch route: one PUT per unit, several at once
            results = self.bulk([(lambda w=w: self._put(w)) for w in pending])
            failures.update(
                {w.name: str(r) for w, r in zip(pending, results, strict=True) if isinstance(r, BaseException)}
            )
        return failures

    def _put(self, write: UnitWrite) -> None:
        query = "?replace=true" if write.replace else ""
        self._check(self.request("PUT", f"/units/{_quote(write.name)}{query}", write.entry()), 201, 204)

    def destroy_units(self, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        destroyed: list[str] = []
        failures: dict[str, str] = {}
        pending: list[str] = list(names)
        if self.batch_supported:
            pending = []
            for run in batches([{"name": n} for n in names]):
                chunk = list(names[run.start : run.stop])
                if not self.batch_supported:
                    pending.extend(chunk)
                    continue
                try:
                    response = self.request("POST", BATCH_PATH, {"destroy": chunk})
                    if response.status in (404, 405):
                        self.batch_supported = False
                        pending.extend(chunk)
                        continue
                    results = self._check(response, 200).json().get("units") or []
                except FleetctlError as exc:
                    failures.update(dict.fromkeys(chunk, str(exc)))
                    continue
                destroyed += [r["name"] for r in results if r.get("result") == "destroyed"]
        if pending:
            outcomes = self.bulk([(lambda n=n: self.destroy_unit(n)) for n in pending])
            for name, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failures[name] = str(outcome)
                elif outcome:
                    destroyed.append(name)
        order = {name: i for i, name in enumerate(names)}
        return sorted(destroyed, key=order.__getitem__), failures

    # -- waiting for unit changes (GET /state?wait=true), polling on an older fleetd --------

    def wait_states(
        self, index: int | None, timeout: float, unit: str | None = None
    ) -> tuple[list[Record], int | None]:
        query: dict[str, str] = {"pageSize": str(PAGE_SIZE)}
        if unit:
            query["unitName"] = unit
        # a long-poll (whole seconds) must end a second within the request timeout
        limit = MAX_STATE_WAIT_SECONDS
        if self.config.request_timeout:
            limit = min(limit, int(self.config.request_timeout - 1))
        if index is not None and limit >= 1:
            query.update(wait="true", index=str(index), timeout=str(max(1, min(limit, int(timeout)))))
        response = self._check(self.request("GET", f"/state?{urlencode(query)}"), 200)
        data = response.json() or {}
        states = list(data.get("states") or [])
        header = response.headers.get(INDEX_HEADER, "")
        if data.get("nextPageToken"):  # more than a page: the rest as a plain listing
            query = {k: v for k, v in query.items() if k not in ("wait", "index", "timeout")}
            query["nextPageToken"] = data["nextPageToken"]
            states += self._pages("/state", "states", query)
        if limit < 1:  # a request timeout under 2 s leaves no room to wait: poll
            return states, None
        return states, int(header) if header.isdigit() else None

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
    "BATCH_PATH",
    "UnitWrite",
    "batches",
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
