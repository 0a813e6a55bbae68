"""What may be asked of a unit's journal: journalctl's output formats and line counts.

fleetd's API checks a request against these and fleetctl offers them as ``journal``'s
choices and defaults; one definition keeps the client from offering a format the server
refuses (or hiding one it accepts). Pure data.
"""

from __future__ import annotations

# journalctl --output formats, in the order fleetctl lists them.
# fmt: off
JOURNAL_OUTPUTS: tuple[str, ...] = (
    "short", "short-full", "short-iso", "short-iso-precise", "short-precise", "short-monotonic",
    "short-delta", "short-unix", "verbose", "export", "json", "json-pretty", "json-sse",
    "json-seq", "cat", "with-unit",
)
# fmt: on
DEFAULT_JOURNAL_OUTPUT = "short"
DEFAULT_JOURNAL_LINES = 10  # as journalctl -n and fleet's fleetctl journal
MAX_JOURNAL_LINES = 1_000_000

__all__ = ["DEFAULT_JOURNAL_LINES", "DEFAULT_JOURNAL_OUTPUT", "JOURNAL_OUTPUTS", "MAX_JOURNAL_LINES"]
