"""fleetctl's errors and the exit status each one means.

- :class:`UsageError` (exit 2): the command line itself is wrong (unknown flag or field,
  missing argument, bad flag value), nothing was asked of the cluster.
- :class:`FleetctlError` (exit 1): anything else that failed; the message says what to do.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class FleetctlError(Exception):
    """A failure to report as ``Error: <message>`` with exit status 1."""

    exit_code = EXIT_FAILURE


class UsageError(FleetctlError):
    """A bad command line; ``command`` (if known) is named in the hint to its help."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


class ApiError(FleetctlError):
    """fleetd answered with an error: HTTP ``status`` and fleetd's own message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class NotReachable(FleetctlError):
    """No endpoint answered at all."""


__all__ = [
    "ApiError",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FleetctlError",
    "NotReachable",
    "UsageError",
]
