"""Reading a request: its JSON body, query flags and numbers, unit names, and paging.

Each helper refuses bad input with an :class:`~fleetd.api.errors.ApiError` (400, or 413
for a body beyond :data:`~fleetd.model.limits.MAX_REQUEST_BYTES`) naming the parameter, so
handlers never see a malformed value and every route words the same mistake the same way.
A query parameter given empty (``?lines=``) means the same as leaving it out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.paging import BadPageToken, paginate
from fleetd.model.errors import UnitNameError
from fleetd.model.limits import MAX_JSON_DEPTH, MAX_PAGE_SIZE, MAX_REQUEST_BYTES
from fleetd.model.names import parse_unit_name
from fleetd.model.words import QUERY_BOOL, parse_bool

# ASCII digits only: int() also takes " 7", "+7", "7_0" and other scripts' digits, which no
# client means and which str.isdigit() lets through even where int() then fails ("²").
_WHOLE_NUMBER_RE = re.compile(r"-?[0-9]+")
# more digits than any limit here needs; int() of thousands of digits is refused anyway
_MAX_DIGITS = 18


def body_too_large() -> ApiError:
    """The 413 for a body beyond the limit, naming it (aiohttp's own says only its reason)."""
    return ApiError(413, f"request body is larger than the limit of {MAX_REQUEST_BYTES} bytes")


def check_json(document: Any) -> None:
    """Refuse what json.loads accepts but fleet cannot keep: nesting deeper than
    MAX_JSON_DEPTH, and strings holding a lone UTF-16 surrogate (``"\\ud800"``), which
    no UTF-8 text (a unit file, etcd's keys, a hash) can carry. Iterative, so a deep
    document cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"JSON in request body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                stack.append((item, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "JSON in request body holds a string with a lone UTF-16 surrogate") from None


async def json_body(request: web.Request) -> Any:
    """The request's body as JSON (whatever its Content-Type says): empty, malformed, too
    deep or not UTF-8 is a 400, larger than MAX_REQUEST_BYTES a 413."""
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        raise body_too_large()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise body_too_large() from None
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON: empty, malformed, too deep or not UTF-8 is a 400 naming
    the problem (every body of this API is read through here)."""
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected JSON")
    try:
        document = json.loads(raw)
    except RecursionError:
        raise ApiError(400, f"JSON in request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON in request body: {exc}") from None
    check_json(document)
    return document


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """``?name=true|false`` (and the usual spellings of each)."""
    if name not in request.query:
        return default
    try:
        return parse_bool(request.query[name], QUERY_BOOL)
    except ValueError:
        raise ApiError(400, f"invalid {name}={request.query[name][:64]!r}: expected true or false") from None


def whole_number(name: str, text: str) -> int:
    """``text`` as a whole number in ASCII digits, or a 400 naming ``name``."""
    if not _WHOLE_NUMBER_RE.fullmatch(text):
        raise ApiError(400, f"invalid {name}={text[:64]!r}: expected a whole number")
    digits = text.lstrip("-").lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        raise ApiError(400, f"invalid {name}={text[:32]}...: number too large")
    return -int(digits) if text.startswith("-") else int(digits)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """``?name=N`` with ``low <= N <= high``; absent or empty gives ``default``."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    value = whole_number(name, text)
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
    full read per 100 items. At least 1; a larger value than MAX_PAGE_SIZE is lowered to
    it (a client asking for "everything" gets pages, not an error); absent or empty gives
    the server's ``token_limit``."""
    raw = request.query.get("pageSize")
    if raw is None or raw == "":
        return api_state(request).token_limit
    digits = raw.lstrip("0")
    if not _WHOLE_NUMBER_RE.fullmatch(raw) or raw.startswith("-") or not digits:
        raise ApiError(400, f"pageSize must be a whole number of at least 1, not {raw[:64]!r}")
    return MAX_PAGE_SIZE if len(digits) > _MAX_DIGITS else min(int(digits), MAX_PAGE_SIZE)


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


__all__ = [
    "MAX_PAGE_SIZE",
    "body_too_large",
    "check_json",
    "json_body",
    "listing",
    "page",
    "page_size",
    "parse_json",
    "query_bool",
    "query_int",
    "unit_name",
    "whole_number",
]
