"""What every API handler is given: the registry, the local node, and the metrics.

Kept apart from :mod:`fleetd.api.app` (which imports every handler module) so that the
handlers can reach their :class:`ApiState` without importing the application that routes
to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from aiohttp import web

from fleetd.aio import TaskHealth
from fleetd.metrics import Metrics
from fleetd.registry.registry import Registry

DEFAULT_TOKEN_LIMIT = 100


@runtime_checkable
class NodeInfo(Protocol):
    """What the API needs to know about the fleetd it runs in.

    ``error()``: when it returns a message, every request is answered 503 with it (e.g. the
    machine id is held by another live fleetd). ``journal`` and ``status`` read the local
    machine's systemd; they may raise ``LookupError`` (404), ``ValueError`` (400) or
    ``NotImplementedError`` (501); anything else becomes a 500 with its message.
    ``journal`` yields lines with or without their newline. ``tasks()``: the supervised
    tasks of this fleetd, for ``/metrics``.
    """

    machine_id: str

    def error(self) -> str | None: ...

    def tasks(self) -> list[TaskHealth]: ...

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

    def tasks(self) -> list[TaskHealth]:
        return []  # no supervised tasks outside the daemon

    def journal(self, unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        if self.journal_source is None:
            raise NotImplementedError("this fleetd cannot read the journal")
        return self.journal_source(unit, lines, follow, output)

    async def status(self, unit: str) -> str:
        if self.status_source is None:
            raise NotImplementedError("this fleetd cannot read unit status")
        return await self.status_source(unit)


@dataclass
class ApiState:
    """One application's dependencies and mutable state: ``metrics`` holds the series
    ``/metrics`` exports (the daemon's, or the application's own); ``closing`` tells
    journal streams to end."""

    registry: Registry
    node: NodeInfo
    token_limit: int
    metrics: Metrics = field(default_factory=Metrics)
    closing: bool = False


STATE = web.AppKey("fleet_api_state", ApiState)


def api_state(request: web.Request) -> ApiState:
    """The :class:`ApiState` of the application serving ``request``."""
    return request.app[STATE]


__all__ = ["DEFAULT_TOKEN_LIMIT", "STATE", "ApiState", "JournalSource", "Node", "NodeInfo", "StatusSource", "api_state"]
