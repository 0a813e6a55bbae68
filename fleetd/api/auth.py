"""Bearer tokens on TCP listeners (never on the unix socket, which file permissions guard).

One application serves every listener, so the token to demand is found from the address a
connection arrived on: each TCP listener registers ``(bound host, port) -> token`` when it
starts; a connection on a unix socket needs no token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _normal_host(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") else host


@dataclass
class TokenRules:
    """Which TCP listener wants which token. Filled by the listeners as they bind."""

    # (host or None for a wildcard bind, port, token or None for no token)
    rules: list[tuple[str | None, int, str | None]] = field(default_factory=list)

    def add(self, host: str, port: int, token: str | None) -> None:
        bound = None if host in _WILDCARDS else _normal_host(host)
        self.rules.append((bound, port, token or None))

    def token_for(self, sockname: Any) -> tuple[bool, str | None]:
        """``(known, token)`` for a connection whose local address is ``sockname``.

        A unix socket (``str``/``bytes`` address) needs no token. A TCP address matches a
        listener bound to exactly that host first, then one bound to a wildcard address.
        ``known`` is false when the address matches no listener: the caller then refuses
        when any token is configured at all (fail closed).
        """
        if isinstance(sockname, (str, bytes)):
            return True, None
        if not isinstance(sockname, tuple) or len(sockname) < 2:
            return False, None
        host, port = _normal_host(str(sockname[0])), sockname[1]
        wildcard: tuple[bool, str | None] | None = None
        for bound, bound_port, token in self.rules:
            if bound_port != port:
                continue
            if bound == host:
                return True, token
            if bound is None and wildcard is None:
                wildcard = (True, token)
        return wildcard or (False, None)

    @property
    def any_token(self) -> bool:
        return any(token for _, _, token in self.rules)


def authorized(rules: TokenRules, sockname: Any, header: str | None) -> bool:
    """Whether a request with ``Authorization: header`` on ``sockname`` may proceed."""
    known, token = rules.token_for(sockname)
    if not known:
        return not rules.any_token
    if token is None:
        return True
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


# Where an application keeps its rules (set by make_app, filled by the listeners).
TOKEN_RULES = web.AppKey("fleet_token_rules", TokenRules)

__all__ = ["TOKEN_RULES", "TokenRules", "authorized"]
