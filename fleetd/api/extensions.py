"""What fleet's API never had: why units are unplaceable, and a unit's journal and status.

fleet's fleetctl read journals and status over SSH; here each machine's fleetd answers
for its own machine (``/machines/<id>/journal/<unit>``, ``/machines/<id>/status/<unit>``),
and for another machine relays the request to that machine's fleetd (:mod:`fleetd.api.peer`);
without a relay it tells the client where the right fleetd is. The journal is
streamed; its first line is awaited briefly so that a reader that fails at once (unknown
unit, journalctl missing) can still answer with a status instead of a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import EXIT_CODE_HEADER, ApiError, node_failure
from fleetd.api.params import query_bool, query_int, unit_name
from fleetd.api.peer import PEER_RELAY
from fleetd.model.journal import DEFAULT_JOURNAL_LINES, DEFAULT_JOURNAL_OUTPUT, JOURNAL_OUTPUTS, MAX_JOURNAL_LINES
from fleetd.model.limits import MAX_JOURNAL_FOLLOWS
from fleetd.model.state import MachineState

# A journal's first line is awaited this long before the stream starts, so that a failure
# to read the journal (unknown unit, journalctl missing) can still answer with a status.
FIRST_LINE_WAIT = 0.5
# what a client refused a follow is told to wait before trying again, in seconds
FOLLOW_RETRY_AFTER = 5


@dataclass
class FollowSlots:
    """The journal follows this fleetd streams now, and how many it allows at once: each
    holds a journalctl process and a connection for as long as its client stays."""

    limit: int = MAX_JOURNAL_FOLLOWS
    holders: set[int] = field(default_factory=set)  # id() of the requests holding a slot

    @property
    def active(self) -> int:
        return len(self.holders)


JOURNAL_FOLLOWS = web.AppKey("fleet_journal_follows", FollowSlots)


def take_slot(slots: FollowSlots, request: web.Request, what: str) -> None:
    """Count ``request`` as one of ``slots``' streams (the caller releases it when the
    stream ends); 429 naming ``what`` when all are taken."""
    if slots.active >= slots.limit:
        raise ApiError(
            429,
            f"this fleetd already streams {slots.active} {what} (the limit is {slots.limit}); "
            "try again later, or read without follow",
            {"Retry-After": str(FOLLOW_RETRY_AFTER)},
        )
    slots.holders.add(id(request))


def _take_follow_slot(request: web.Request) -> None:
    """Count this request as a follow until :func:`journal` returns; 429 when all are taken."""
    slots = request.app.get(JOURNAL_FOLLOWS)
    if slots is not None:
        take_slot(slots, request, "journals with follow")


async def list_unplaceable(request: web.Request) -> web.Response:
    reasons = await api_state(request).registry.unplaceable()
    return web.json_response({"units": dict(sorted(reasons.items()))})


async def owner_of(request: web.Request, machine_id: str) -> MachineState | None:
    """None when ``machine_id`` is this fleetd's machine; else that machine, when this
    fleetd can relay to it (:mod:`fleetd.api.peer`). Otherwise a 404 that says where the
    machine's own fleetd is, as before relaying existed, so a client can go there."""
    state = api_state(request)
    if machine_id == state.node.machine_id:
        return None
    machines = await state.registry.machines()
    owner = next((m for m in machines if m.id == machine_id), None)
    if owner is None:
        raise ApiError(404, f"machine {machine_id} is not in the cluster (this fleetd is {state.node.machine_id})")
    if PEER_RELAY in request.app and owner.public_ip:
        return owner
    where = f"at {owner.public_ip}" if owner.public_ip else "(its IP is unknown: it registered no public_ip)"
    raise ApiError(
        404,
        f"machine {machine_id} is not this fleetd's machine ({state.node.machine_id}); "
        f"ask the fleetd on machine {machine_id} {where}",
        {"X-Fleet-Machine-IP": owner.public_ip} if owner.public_ip else None,
    )


def _relay_path(kind: str, machine_id: str, unit: str, request: web.Request) -> str:
    """The peer listener's path for this request: always under ``/fleet/v1`` (it serves no
    alias), with the query as the client sent it."""
    query = f"?{request.query_string}" if request.query_string else ""
    return f"/fleet/v1/machines/{quote(machine_id, safe='')}/{kind}/{quote(unit, safe='@:')}{query}"


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def journal(request: web.Request) -> web.StreamResponse:
    """A unit's journal; a follow holds one of the node's FollowSlots while it streams."""
    try:
        return await _journal(request)
    finally:
        slots = request.app.get(JOURNAL_FOLLOWS)
        if slots is not None:
            slots.holders.discard(id(request))


async def _journal(request: web.Request) -> web.StreamResponse:
    state = api_state(request)
    machine_id = request.match_info["machine"]
    unit = unit_name(request.match_info["name"])
    lines = query_int(request, "lines", DEFAULT_JOURNAL_LINES, 0, MAX_JOURNAL_LINES)
    follow = query_bool(request, "follow")
    output = request.query.get("output") or DEFAULT_JOURNAL_OUTPUT
    if output not in JOURNAL_OUTPUTS:
        raise ApiError(400, f"invalid output {output!r}: one of {', '.join(sorted(JOURNAL_OUTPUTS))}")
    owner = await owner_of(request, machine_id)
    if follow:
        _take_follow_slot(request)
    if owner is not None:
        return await request.app[PEER_RELAY].relay(
            request, owner, _relay_path("journal", machine_id, unit, request), follow
        )
    what = f"journal of {unit}"
    try:
        source = state.node.journal(unit, lines, follow, output).__aiter__()
    except Exception as exc:  # noqa: BLE001 - the node's failure becomes the answer
        raise node_failure(what, exc) from None

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
                raise node_failure(what, failure)
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


async def status(request: web.Request) -> web.StreamResponse:
    state = api_state(request)
    machine_id = request.match_info["machine"]
    unit = unit_name(request.match_info["name"])
    owner = await owner_of(request, machine_id)
    if owner is not None:
        return await request.app[PEER_RELAY].relay(
            request, owner, _relay_path("status", machine_id, unit, request), False
        )
    try:
        text = await state.node.status(unit)
    except Exception as exc:  # noqa: BLE001 - the node's failure becomes the answer
        raise node_failure(f"status of {unit}", exc) from None
    # systemctl status's exit code (3: inactive, 4: no such unit), so fleetctl can exit with
    # it as fleet's did over SSH; the 200 and the text stay as they were for other clients.
    code = getattr(text, "exit_code", None)
    headers = {EXIT_CODE_HEADER: str(code)} if isinstance(code, int) and not isinstance(code, bool) else None
    return web.Response(text=str(text), content_type="text/plain", charset="utf-8", headers=headers)


__all__ = [
    "EXIT_CODE_HEADER",
    "FIRST_LINE_WAIT",
    "FOLLOW_RETRY_AFTER",
    "JOURNAL_FOLLOWS",
    "FollowSlots",
    "journal",
    "list_unplaceable",
    "owner_of",
    "status",
    "take_slot",
]
