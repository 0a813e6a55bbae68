"""fleet's HTTP API v1 (``/fleet/v1``) as an aiohttp application, plus what we add to it.

``make_app(registry, node)`` builds the application; ``serve`` (from
:mod:`fleetd.api.listeners`, re-exported here) runs it on unix sockets, TCP and activated
sockets. Handlers read and write the cluster only through
:class:`~fleetd.registry.registry.Registry` and validate with the model (``build_unit``,
``check_transition``), so the API refuses exactly what fleetctl and the engine would.

Every error answers ``{"error": {"code": N, "message": "..."}}``, including unknown routes
(404), wrong methods (405), malformed JSON (400), missing tokens on TCP (401) and a node
that must not serve (503, with :meth:`NodeInfo.error`'s message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from fleetd.api.auth import TOKEN_RULES, TokenRules, authorized
from fleetd.api.discovery import discovery_document
from fleetd.api.listeners import (  # re-exported: serving belongs with the application
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
from fleetd.api.paging import BadPageToken, paginate
from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.names import parse_unit_name
from fleetd.model.state import StoredUnit
from fleetd.model.unit import DesiredState, Unit, build_unit, check_transition, instance_from_template
from fleetd.model.unitfile import UnitFile
from fleetd.model.wire import current_state, machine_json, state_json, states_by_unit, unit_json
from fleetd.registry.registry import Registry, RegistryError, UnitExists, UnitNotFound

log = logging.getLogger("fleetd.api")

PREFIX = "/fleet/v1"
DEFAULT_TOKEN_LIMIT = 100
# systemd ActiveState values that count as "launched" for a unit's currentState.
# journalctl --output formats a client may ask for.
JOURNAL_OUTPUTS = frozenset(
    {
        "short", "short-full", "short-iso", "short-iso-precise", "short-precise", "short-monotonic",
        "short-delta", "short-unix", "verbose", "export", "json", "json-pretty", "json-sse",
        "json-seq", "cat", "with-unit",
    }
)
MAX_JOURNAL_LINES = 1_000_000
# A journal's first line is awaited this long before the stream starts, so that a failure
# to read the journal (unknown unit, journalctl missing) can still answer with a status.
FIRST_LINE_WAIT = 0.5
_TRUE = frozenset({"true", "1", "yes", "on", "t"})
_FALSE = frozenset({"false", "0", "no", "off", "f", ""})
_MACHINE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_METADATA_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,253}")
_PATCH_PATH_RE = re.compile(r"/([^/]+)/metadata/([^/]+)")


# -- the local node -----------------------------------------------------------------------


@runtime_checkable
class NodeInfo(Protocol):
    """What the API needs to know about the fleetd it runs in.

    ``error()``: when it returns a message, every request is answered 503 with it (e.g. the
    machine id is held by another live fleetd). ``journal`` and ``status`` read the local
    machine's systemd; they may raise ``LookupError`` (404), ``ValueError`` (400) or
    ``NotImplementedError`` (501); anything else becomes a 500 with its message.
    ``journal`` yields lines with or without their newline.
    """

    machine_id: str

    def error(self) -> str | None: ...

    def journal(self, unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]: ...

    async def status(self, unit: str) -> str: ...


JournalSource = Callable[[str, int, bool, str], AsyncIterator[str]]
StatusSource = Callable[[str], Awaitable[str]]


@dataclass
class Node:
    """A plain :class:`NodeInfo`: the daemon sets ``error_message`` while it must not
    serve, and plugs the systemd adapter's journal and status readers in."""

    machine_id: str
    journal_source: JournalSource | None = None
    status_source: StatusSource | None = None
    error_message: str | None = None

    def error(self) -> str | None:
        return self.error_message

    def journal(self, unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        if self.journal_source is None:
            raise NotImplementedError("this fleetd cannot read the journal")
        return self.journal_source(unit, lines, follow, output)

    async def status(self, unit: str) -> str:
        if self.status_source is None:
            raise NotImplementedError("this fleetd cannot read unit status")
        return await self.status_source(unit)


# -- errors ---------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success: HTTP ``status`` and a message for the user."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """fleet's error shape: ``{"error": {"code": status, "message": message}}``."""
    return web.json_response({"error": {"code": status, "message": message}}, status=status, headers=headers)


def _looks_like_etcd_failure(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".")[0]
    return module in ("aetcd", "grpc") or isinstance(exc, (ConnectionError, TimeoutError))


# -- application state -----------------------------------------------------------------------


@dataclass
class ApiState:
    registry: Registry
    node: NodeInfo
    token_limit: int
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    closing: bool = False


STATE = web.AppKey("fleet_api_state", ApiState)


def _state(request: web.Request) -> ApiState:
    return request.app[STATE]


# -- request helpers -------------------------------------------------------------------------


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected JSON")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON in request body: {exc}") from None


def _query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    if name not in request.query:
        return default
    value = request.query[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(400, f"invalid {name}={request.query[name]!r}: expected true or false")


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"invalid {name}={text!r}: expected a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"invalid {name}={value}: must be between {low} and {high}")
    return value


def _unit_name(name: str) -> str:
    try:
        parse_unit_name(name)
    except UnitNameError as exc:
        raise ApiError(400, str(exc)) from None
    return name


MAX_PAGE_SIZE = 10000


def _page_size(request: web.Request) -> int:
    """``?pageSize=N`` (beyond fleet): clients that want everything need not pay for one
    full read per 100 items; capped at MAX_PAGE_SIZE, default ``token_limit``."""
    raw = request.query.get("pageSize")
    if raw is None:
        return _state(request).token_limit
    if not raw.isdigit() or int(raw) < 1:
        raise ApiError(400, f"pageSize must be a whole number of at least 1, not {raw!r}")
    return min(int(raw), MAX_PAGE_SIZE)


def _page(
    request: web.Request, items: list[Any], key: Callable[[Any], tuple[str, ...]], resource: str
) -> tuple[list[Any], str | None]:
    try:
        return paginate(items, key, resource, request.query.get("nextPageToken"), _page_size(request))
    except BadPageToken as exc:
        raise ApiError(400, str(exc)) from None


def _listing(field_name: str, page: list[Any], token: str | None) -> web.Response:
    body: dict[str, Any] = {field_name: page}
    if token:
        body["nextPageToken"] = token
    return web.json_response(body)


# -- units ------------------------------------------------------------------------------------


async def list_units(request: web.Request) -> web.Response:
    registry = _state(request).registry
    units, placements, states = await asyncio.gather(
        registry.units(), registry.placements(), registry.unit_states()
    )
    page, token = _page(request, units, lambda u: (u.name,), "units")
    by_unit = states_by_unit(states)
    items = [unit_json(u, sorted(placements.get(u.name, [])), by_unit.get(u.name, {})) for u in page]
    return _listing("units", items, token)


async def get_unit(request: web.Request) -> web.Response:
    registry = _state(request).registry
    name = _unit_name(request.match_info["name"])
    unit, placements, states = await asyncio.gather(
        registry.get_unit(name), registry.placements(), registry.unit_states(name)
    )
    if unit is None:
        raise ApiError(404, f"unit {name} not found")
    by_machine = {state.machine_id: state for state in states if state.name == name}
    return web.json_response(unit_json(unit, sorted(placements.get(name, [])), by_machine))


def _desired_state(value: Any) -> DesiredState:
    if value is None:
        raise ApiError(400, "desiredState is required (inactive, loaded or launched)")
    try:
        return DesiredState(value)
    except ValueError:
        raise ApiError(400, f"invalid desiredState {value!r}: expected inactive, loaded or launched") from None


def _check(current: DesiredState | None, target: DesiredState, name: str) -> None:
    problem = check_transition(current, target, name=name)
    if problem:
        raise ApiError(400, problem)


def _build(name: str, file: UnitFile) -> Unit:
    try:
        unit, warnings = build_unit(name, file)
    except (UnitFileError, UnitNameError) as exc:
        raise ApiError(400, str(exc)) from None
    for warning in warnings:
        log.info("unit %s: %s", name, warning)
    return unit


async def _from_template(registry: Registry, name: str) -> Unit:
    """A new unit sent without options: an instance is made from its template."""
    info = parse_unit_name(name)
    if not info.is_instance:
        raise ApiError(404, f"unit {name} does not exist; send its options to create it")
    template_name = info.template or ""
    template = await registry.get_unit(template_name)
    if template is None:
        raise ApiError(
            404,
            f"unit {name} does not exist and neither does its template {template_name}; "
            f"submit {template_name} first or send the instance's options",
        )
    return _build(name, instance_from_template(name, template.file))


async def put_unit(request: web.Request) -> web.Response:
    registry = _state(request).registry
    name = _unit_name(request.match_info["name"])
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object {name, desiredState, options}")
    body_name = body.get("name")
    if body_name not in (None, ""):
        if not isinstance(body_name, str):
            raise ApiError(400, "name in the body must be a string")
        if body_name != name:
            raise ApiError(400, f'name in the body "{body_name}" does not match the unit name "{name}" in the URL')
    target = _desired_state(body.get("desiredState"))
    replace = _query_bool(request, "replace")
    if parse_unit_name(name).is_template and target is not DesiredState.INACTIVE:
        _check(None, target, name)  # "cannot activate template ..."
    options = body.get("options")
    unit: Unit | None = None
    if options not in (None, []):  # fleet's own client sends [] to mean "no new body"
        if not isinstance(options, list):
            raise ApiError(400, "options must be a list of {section, name, value}")
        try:
            file = UnitFile.from_options(options)
        except UnitFileError as exc:
            raise ApiError(400, f"unit {name}: {exc}") from None
        unit = _build(name, file)

    for _ in range(5):
        existing = await registry.get_unit(name)
        if existing is None:
            new = unit or await _from_template(registry, name)
            _check(None, target, name)
            try:
                await registry.create_unit(StoredUnit(name, new.file, target), new.requirements.global_)
            except UnitExists:
                continue  # created meanwhile: decide again against what is there now
            return web.Response(status=201)
        if unit is not None and unit.file != existing.file:
            if not replace:
                raise ApiError(409, f"unit {name} already exists with different contents; use --replace")
            _check(existing.desired, target, name)
            await registry.replace_unit(StoredUnit(name, unit.file, target), unit.requirements.global_)
            return web.Response(status=204)
        _check(existing.desired, target, name)
        if existing.desired is not target:
            try:
                await registry.set_desired_state(name, target)
            except UnitNotFound:
                continue  # destroyed meanwhile
        return web.Response(status=204)
    raise ApiError(503, f"unit {name} kept changing while being updated; try again")


async def delete_unit(request: web.Request) -> web.Response:
    name = _unit_name(request.match_info["name"])
    if not await _state(request).registry.destroy_unit(name):
        raise ApiError(404, f"unit {name} not found")
    return web.Response(status=204)


# -- state, machines --------------------------------------------------------------------------


async def list_states(request: web.Request) -> web.Response:
    unit_name = request.query.get("unitName") or None
    machine_id = request.query.get("machineID") or None
    if unit_name:
        _unit_name(unit_name)
    states = await _state(request).registry.unit_states(unit_name)
    if unit_name:
        states = [s for s in states if s.name == unit_name]
    if machine_id:
        states = [s for s in states if s.machine_id == machine_id]
    page, token = _page(request, states, lambda s: (s.name, s.machine_id), "state")
    return _listing("states", [state_json(s) for s in page], token)


async def list_machines(request: web.Request) -> web.Response:
    machines = await _state(request).registry.machines()
    page, token = _page(request, machines, lambda m: (m.id,), "machines")
    return _listing("machines", [machine_json(m) for m in page], token)


@dataclass(frozen=True)
class MetadataOp:
    op: str
    machine_id: str
    key: str
    value: str | None


def parse_metadata_patch(body: Any) -> list[MetadataOp]:
    """Validate a whole PATCH /machines body; raises ApiError(400) naming the first bad
    operation, so a rejected request changes nothing."""
    if not isinstance(body, list):
        raise ApiError(400, 'expected a JSON list of {"op", "path", "value"} operations')
    result: list[MetadataOp] = []
    for index, item in enumerate(body):
        where = f"operation {index}"
        if not isinstance(item, dict):
            raise ApiError(400, f'{where}: expected an object {{"op", "path", "value"}}')
        op = item.get("op")
        if op not in ("add", "remove", "replace"):
            raise ApiError(400, f"{where}: invalid op {op!r}: expected add, remove or replace")
        path = item.get("path")
        match = _PATCH_PATH_RE.fullmatch(path) if isinstance(path, str) else None
        if match is None:
            raise ApiError(400, f'{where}: invalid path {path!r}: expected "/<machineID>/metadata/<key>"')
        machine_id, key = match.groups()
        if not _MACHINE_ID_RE.fullmatch(machine_id):
            raise ApiError(400, f"{where}: invalid machine ID {machine_id!r}")
        if not _METADATA_KEY_RE.fullmatch(key):
            raise ApiError(400, f"{where}: invalid metadata key {key!r} (allowed: A-Z a-z 0-9 _ . : -)")
        value: str | None = None
        if op != "remove":
            if "value" not in item:
                raise ApiError(400, f"{where}: {op} needs a value")
            raw = item["value"]
            if isinstance(raw, dict) and set(raw) == {"value"}:
                raw = raw["value"]  # fleet's own client nests it: {"value": {"value": "x"}}
            if not isinstance(raw, str):
                raise ApiError(400, f'{where}: value must be a string or {{"value": "<string>"}}')
            if not raw or any(ord(ch) < 32 or ch in ',"' for ch in raw):
                raise ApiError(
                    400,
                    f"{where}: invalid value {raw!r} for {key} (non-empty, no commas, quotes or control characters)",
                )
            value = raw
        result.append(MetadataOp(op, machine_id, key, value))
    return result


async def patch_machines(request: web.Request) -> web.Response:
    operations = parse_metadata_patch(await _json_body(request))
    changes: dict[str, tuple[dict[str, str], set[str]]] = {}
    for op in operations:  # fold in order: a later op on the same key wins
        set_, remove = changes.setdefault(op.machine_id, ({}, set()))
        if op.op == "remove":
            set_.pop(op.key, None)
            remove.add(op.key)
        else:
            assert op.value is not None
            set_[op.key] = op.value
            remove.discard(op.key)
    registry = _state(request).registry
    for machine_id, (set_, remove) in changes.items():
        await registry.update_dynamic_metadata(machine_id, set_, remove)
    return web.Response(status=204)


# -- beyond fleet: unplaceable, journal, status, metrics --------------------------------------


async def list_unplaceable(request: web.Request) -> web.Response:
    reasons = await _state(request).registry.unplaceable()
    return web.json_response({"units": dict(sorted(reasons.items()))})


async def _require_local(request: web.Request, machine_id: str) -> None:
    """Journal and status are answered by the machine's own fleetd; others say where."""
    state = _state(request)
    if machine_id == state.node.machine_id:
        return
    machines = await state.registry.machines()
    owner = next((m for m in machines if m.id == machine_id), None)
    if owner is None:
        raise ApiError(404, f"machine {machine_id} is not in the cluster (this fleetd is {state.node.machine_id})")
    where = f"at {owner.public_ip}" if owner.public_ip else "(its IP is unknown)"
    raise ApiError(
        404,
        f"machine {machine_id} is not this fleetd's machine ({state.node.machine_id}); "
        f"ask the fleetd on machine {machine_id} {where}",
        {"X-Fleet-Machine-IP": owner.public_ip} if owner.public_ip else None,
    )


def _node_failure(what: str, exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, LookupError):
        return ApiError(404, f"{what}: {exc}")
    if isinstance(exc, ValueError):
        return ApiError(400, f"{what}: {exc}")
    if isinstance(exc, NotImplementedError):
        return ApiError(501, f"{what}: {exc or 'not available on this fleetd'}")
    return ApiError(500, f"{what}: {exc}")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def journal(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    machine_id = request.match_info["machine"]
    unit = _unit_name(request.match_info["name"])
    lines = _query_int(request, "lines", 10, 0, MAX_JOURNAL_LINES)
    follow = _query_bool(request, "follow")
    output = request.query.get("output") or "short"
    if output not in JOURNAL_OUTPUTS:
        raise ApiError(400, f"invalid output {output!r}: one of {', '.join(sorted(JOURNAL_OUTPUTS))}")
    await _require_local(request, machine_id)
    what = f"journal of {unit}"
    try:
        source = state.node.journal(unit, lines, follow, output).__aiter__()
    except Exception as exc:  # noqa: BLE001 - the node's failure becomes the answer
        raise _node_failure(what, exc) from None

    async def close_source() -> None:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()

    pending: asyncio.Future[str] = asyncio.ensure_future(source.__anext__())
    try:
        await asyncio.wait({pending}, timeout=FIRST_LINE_WAIT)
        if pending.done() and not pending.cancelled():
            failure = pending.exception()
            if failure is not None and not isinstance(failure, StopAsyncIteration):
                raise _node_failure(what, failure)
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while True:
                while not pending.done():
                    await asyncio.wait({pending}, timeout=0.5)
                    if not pending.done() and (_client_gone(request) or state.closing):
                        return response
                try:
                    line = pending.result()
                except StopAsyncIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - headers are sent: report in the stream
                    await response.write(f"fleetd: reading the journal failed: {exc}\n".encode())
                    break
                text = line if line.endswith("\n") else line + "\n"
                await response.write(text.encode("utf-8", "replace"))
                if state.closing:  # fleetd is stopping: end the stream cleanly
                    break
                pending = asyncio.ensure_future(source.__anext__())
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await close_source()


async def status(request: web.Request) -> web.Response:
    state = _state(request)
    machine_id = request.match_info["machine"]
    unit = _unit_name(request.match_info["name"])
    await _require_local(request, machine_id)
    try:
        text = await state.node.status(unit)
    except Exception as exc:  # noqa: BLE001 - the node's failure becomes the answer
        raise _node_failure(f"status of {unit}", exc) from None
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Answered even while the node refuses the API (503), so
    monitoring can see that state (``fleet_node_serving 0``)."""
    state = _state(request)
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    try:
        units, machines, unplaceable = await asyncio.gather(
            state.registry.units(), state.registry.machines(), state.registry.unplaceable()
        )
    except Exception as exc:  # noqa: BLE001 - metrics must answer even when etcd does not
        log.warning("metrics: cannot read the registry: %s", exc)
        metric("fleet_registry_up", "gauge", "Whether etcd answered this scrape.", [({}, 0)])
    else:
        metric("fleet_registry_up", "gauge", "Whether etcd answered this scrape.", [({}, 1)])
        by_state = Counter(str(u.desired) for u in units)
        metric("fleet_units_total", "gauge", "Units in the cluster.", [({}, len(units))])
        metric(
            "fleet_units_desired",
            "gauge",
            "Units by desired state.",
            [({"state": str(s)}, by_state.get(str(s), 0)) for s in DesiredState],
        )
        metric("fleet_machines_total", "gauge", "Live machines in the cluster.", [({}, len(machines))])
        metric("fleet_units_unplaceable", "gauge", "Units the engine cannot place.", [({}, len(unplaceable))])
    metric(
        "fleet_node_serving",
        "gauge",
        "1 when this fleetd serves the API, 0 while it answers 503 (see its error).",
        [({}, 0 if state.node.error() else 1)],
    )
    metric(
        "fleet_api_requests_total",
        "counter",
        "API requests answered, by method and status code.",
        [({"method": m, "code": str(c)}, n) for (m, c), n in sorted(state.requests.items())],
    )
    body = "\n".join(out) + "\n"
    return web.Response(body=body.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def discovery(request: web.Request) -> web.Response:
    return web.json_response(discovery_document())


# -- middleware and application ---------------------------------------------------------------


@web.middleware
async def _fleet_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Token check (TCP), 503 while the node must not serve, fleet's error shape for every
    failure, and the request counter."""
    state = _state(request)
    code = 500
    try:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        if not authorized(request.app[TOKEN_RULES], sockname, request.headers.get("Authorization")):
            raise ApiError(
                401,
                "missing or wrong bearer token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": 'Bearer realm="fleet"'},
            )
        problem = state.node.error()
        if problem and request.path != "/metrics":
            raise ApiError(503, problem)
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
    except Exception as exc:  # noqa: BLE001 - every failure answers in fleet's shape
        if _looks_like_etcd_failure(exc):
            code = 503
            log.warning("API %s %s: etcd unavailable: %r", request.method, request.path, exc)
            return error_response(503, f"cannot reach etcd: {exc or type(exc).__name__}")
        log.exception("API %s %s failed", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        state.requests[(request.method, code)] += 1


def make_app(registry: Registry, node: NodeInfo, *, token_limit: int = DEFAULT_TOKEN_LIMIT) -> web.Application:
    """The API application: fleet's ``/fleet/v1`` routes plus journal, status,
    unplaceable and ``/metrics``. ``token_limit`` is the page size of every list."""
    app = web.Application(middlewares=[_fleet_middleware], client_max_size=4 * 1024 * 1024)
    app[STATE] = ApiState(registry, node, max(1, int(token_limit)))
    app[TOKEN_RULES] = TokenRules()

    async def stop_streams(app: web.Application) -> None:
        app[STATE].closing = True

    app.on_shutdown.append(stop_streams)
    app.router.add_get(f"{PREFIX}/units", list_units)
    app.router.add_get(f"{PREFIX}/units/{{name}}", get_unit)
    app.router.add_put(f"{PREFIX}/units/{{name}}", put_unit)
    app.router.add_delete(f"{PREFIX}/units/{{name}}", delete_unit)
    app.router.add_get(f"{PREFIX}/state", list_states)
    app.router.add_get(f"{PREFIX}/machines", list_machines)
    app.router.add_patch(f"{PREFIX}/machines", patch_machines)
    app.router.add_get(f"{PREFIX}/machines/{{machine}}/journal/{{name}}", journal)
    app.router.add_get(f"{PREFIX}/machines/{{machine}}/status/{{name}}", status)
    app.router.add_get(f"{PREFIX}/unplaceable", list_unplaceable)
    app.router.add_get(f"{PREFIX}/discovery", discovery)
    app.router.add_get("/metrics", metrics)
    return app


__all__ = [
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
    "current_state",
    "error_response",
    "make_app",
    "make_ssl_context",
    "parse_metadata_patch",
    "serve",
    "start_api",
]
