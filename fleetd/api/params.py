"""Reading a request: its JSON body, query flags and numbers, unit names, and paging.

Each helper refuses bad input with an :class:`~fleetd.api.errors.ApiError` (400) naming
the parameter, so handlers never see a malformed value and every route words the same
mistake the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.paging import BadPageToken, paginate
from fleetd.model.errors import UnitNameError
from fleetd.model.names import parse_unit_name
from fleetd.model.words import QUERY_BOOL, parse_bool

MAX_PAGE_SIZE = 10000


async def json_body(request: web.Request) -> Any:
    """The request's body as JSON; an empty or malformed body is a 400."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected JSON")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON in request body: {exc}") from None


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """``?name=true|false`` (and the usual spellings of each)."""
    if name not in request.query:
        return default
    try:
        return parse_bool(request.query[name], QUERY_BOOL)
    except ValueError:
        raise ApiError(400, f"invalid {name}={request.query[name]!r}: expected true or false") from None


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """``?name=N`` with ``low <= N <= high``; absent or empty gives ``default``."""
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


def unit_name(name: str) -> str:
    """``name`` if it is a valid unit name, else a 400 saying which rule it breaks."""
    try:
        parse_unit_name(name)
    except UnitNameError as exc:
        raise ApiError(400, str(exc)) from None
    return name


def page_size(request: web.Request) -> int:
    """``?pageSize=N`` (beyond fleet): clients that want everything need not pay for one
    full read per 100 items; capped at MAX_PAGE_SIZE, default ``token_limit``."""
    raw = request.query.get("pageSize")
    if raw is None:
        return api_state(request).token_limit
    if not raw.isdigit() or int(raw) < 1:
        raise ApiError(400, f"pageSize must be a whole number of at least 1, not {raw!r}")
    return min(int(raw), MAX_PAGE_SIZE)


def page(
    request: web.Request, items: list[Any], key: Callable[[Any], tuple[str, ...]], resource: str
) -> tuple[list[Any], str | None]:
    """The page of ``items`` that ``?nextPageToken`` asks for, and the next token."""
    try:
        return paginate(items, key, resource, request.query.get("nextPageToken"), page_size(request))
    except BadPageToken as exc:
        raise ApiError(400, str(exc)) from None


def listing(field_name: str, items: list[Any], token: str | None) -> web.Response:
    """A list answer: ``{field_name: items}`` plus ``nextPageToken`` when there is more."""
    body: dict[str, Any] = {field_name: items}
    if token:
        body["nextPageToken"] = token
    return web.json_response(body)


__all__ = ["MAX_PAGE_SIZE", "json_body", "listing", "page", "page_size", "query_bool", "query_int", "unit_name"]
