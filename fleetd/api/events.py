"""``GET /fleet/v1/events``: the cluster's history (see :mod:`fleetd.model.history`).

A list answers ``{"events": [...], "nextPageToken": ...}`` in time order, oldest first,
like every fleet list (``pageSize``, ``nextPageToken``), optionally for one unit
(``unitName``). ``follow=true`` streams instead: one JSON event per line
(``application/x-ndjson``), the stored ones first, then each new one as it is recorded,
until the client leaves; a follow holds one of a bounded number of slots (429 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.extensions import FollowSlots, take_slot
from fleetd.api.paging import BadPageToken, decode_token, encode_token
from fleetd.api.params import page_size, query_bool, unit_name
from fleetd.model.history import HistoryEvent, event_json

RESOURCE = "events"
FOLLOW_RETRY_AFTER = 5


# the event streams this fleetd serves now (each holds a watch and a connection)
EVENT_FOLLOWS = web.AppKey("fleet_event_follows", FollowSlots)


_EVENT_ID = re.compile(r"\d{16}(-[0-9a-f]{8}-[0-9a-f]{8})?")


def _after(token: str | None) -> str:
    """The event id a ``nextPageToken`` resumes after ("" for the first page)."""
    if not token:
        return ""
    try:
        after = decode_token(RESOURCE, token)
    except BadPageToken as exc:
        raise ApiError(400, str(exc)) from None
    if len(after) != 1 or not _EVENT_ID.fullmatch(after[0]):
        raise ApiError(400, "invalid nextPageToken: pass back a token exactly as received")
    return after[0]


def _line(event: HistoryEvent) -> bytes:
    return json.dumps(event_json(event), separators=(",", ":")).encode() + b"\n"


async def list_events(request: web.Request) -> web.StreamResponse:
    state = api_state(request)
    raw_unit = request.query.get("unitName")
    unit = unit_name(raw_unit) if raw_unit else None
    after = _after(request.query.get("nextPageToken"))
    if query_bool(request, "follow"):
        return await _follow(request, unit, after)
    events, cursor, _ = await state.registry.events(after, page_size(request), unit)
    body: dict[str, object] = {"events": [event_json(e) for e in events]}
    if cursor:
        body["nextPageToken"] = encode_token(RESOURCE, (cursor,))
    return web.json_response(body)


async def _follow(request: web.Request, unit: str | None, after: str) -> web.StreamResponse:
    state = api_state(request)
    slots = request.app[EVENT_FOLLOWS]
    take_slot(slots, request, "event follows")
    try:
        # the stored events, page by page; the revision of the first read is where the
        # watch starts, so an event recorded meanwhile is shown by the watch (once: ids
        # already shown are skipped)
        events, cursor, revision = await state.registry.events(after, 1000, unit)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        shown = after
        with contextlib.suppress(ConnectionError):
            while True:
                for event in events:
                    await response.write(_line(event))
                    shown = max(shown, event.id)
                if not cursor:
                    break
                events, cursor, _ = await state.registry.events(cursor, 1000, unit)
            watch = state.registry.watch_events(revision + 1).__aiter__()
            pending: asyncio.Future[list[HistoryEvent]] = asyncio.ensure_future(anext(watch))
            try:
                while not state.closing:
                    # wake up now and then: a quiet stream must still end when its client goes
                    await asyncio.wait({pending}, timeout=1.0)
                    if not pending.done():
                        if request.transport is None or request.transport.is_closing():
                            break
                        continue
                    batch = pending.result()
                    for event in batch:
                        if event.id > shown and (unit is None or event.unit == unit):
                            await response.write(_line(event))
                            shown = event.id
                    pending = asyncio.ensure_future(anext(watch))
            finally:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
                with contextlib.suppress(Exception):
                    await watch.aclose()  # type: ignore[attr-defined]
            await response.write_eof()
        return response
    finally:
        slots.holders.discard(id(request))


__all__ = ["EVENT_FOLLOWS", "list_events"]
