"""Pagination of API lists with opaque ``nextPageToken`` values.

A token records the resource it belongs to and the sort key of the last item returned, so
the next page starts right after it even if items were added or removed in between (an
offset would skip or repeat items then). Tokens are base64url JSON: opaque to clients, but
easy to read when debugging.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TypeVar

from fleetd.model.limits import MAX_PAGE_TOKEN_LENGTH

T = TypeVar("T")
Key = tuple[str, ...]


class BadPageToken(ValueError):
    """A ``nextPageToken`` this server did not issue for this list."""


def encode_token(resource: str, after: Key) -> str:
    raw = json.dumps({"r": resource, "a": list(after)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(resource: str, token: str) -> Key:
    """The sort key a token of ``resource`` resumes after; :class:`BadPageToken` for
    anything this server did not issue (too long, not base64url JSON, another list's)."""
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise BadPageToken(f"invalid nextPageToken: longer than {MAX_PAGE_TOKEN_LENGTH} characters")
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if data["r"] != resource:
            raise BadPageToken(f"nextPageToken belongs to another list ({data['r']}), not {resource}")
        after = data["a"]
        if not isinstance(after, list) or not all(isinstance(part, str) for part in after):
            raise TypeError
        return tuple(after)
    except BadPageToken:
        raise
    except (ValueError, TypeError, KeyError, UnicodeError, binascii.Error, RecursionError):
        raise BadPageToken(f"invalid nextPageToken {token[:64]!r}: pass back a token exactly as received") from None


def paginate(
    items: Sequence[T], key: Callable[[T], Key], resource: str, token: str | None, limit: int
) -> tuple[list[T], str | None]:
    """One page of ``items`` (sorted by ``key``) and the token for the next, ``None`` on the
    last page. ``token`` is the client's ``nextPageToken`` (``None`` or empty: first page)."""
    limit = max(1, limit)
    start = 0
    if token:
        after = decode_token(resource, token)
        keys = [key(item) for item in items]
        start = bisect_right(keys, after)
    page = list(items[start : start + limit])
    if start + limit >= len(items) or not page:
        return page, None
    return page, encode_token(resource, key(page[-1]))


__all__ = ["BadPageToken", "decode_token", "encode_token", "paginate"]
