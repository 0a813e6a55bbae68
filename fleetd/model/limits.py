"""How much one request may ask of fleet: the sizes and counts the API refuses beyond.

Every limit here bounds work or storage that a single client could otherwise make
unbounded: a unit is stored in etcd (twice for a global unit, and again in each placement),
so its size is bounded well below etcd's default request limit of 1.5 MiB; a request body
is read into memory before it is parsed; a journal follow holds a ``journalctl`` process
open for as long as the client stays. The API answers 413 (too large) or 429 (too many)
with a message naming the limit, and ``docs/api.md`` and the OpenAPI document quote these
numbers, so they are defined once, here. Pure data and arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleetd.model.unitfile import UnitFile

KIB = 1024
MIB = 1024 * KIB

#: The largest unit, as measured by :func:`unit_size`. 64 KiB is far beyond any real unit
#: file and keeps a stored unit (at most about 6 times this once JSON escapes every byte)
#: and its global copy, written in one transaction, under etcd's 1.5 MiB request limit.
MAX_UNIT_BYTES = 64 * KIB

# A machine's peer certificate (PEM) in its record: a P-256 one is under 1 KiB; the bound
# keeps a hand-written record from bloating every reader of the machine list.
MAX_PEER_CERT_BYTES = 8 * 1024

#: What each option costs beyond its text: the API and etcd hold every option as
#: ``{"section": ..., "name": ..., "value": ...}``, so a unit of many tiny options is not
#: cheap even when its rendered file is short.
OPTION_OVERHEAD_BYTES = 32

#: The largest request body fleetd reads. Any unit within MAX_UNIT_BYTES fits in a body
#: this large even when a client escapes every character of it (``\\u0001`` is 6 bytes for
#: one), so the body limit never refuses a unit the unit limit would accept.
MAX_REQUEST_BYTES = 1 * MIB

#: How deeply a JSON body may nest. fleet's documents nest three levels (a unit's options,
#: a PATCH's nested value); anything deeper is refused before it can exhaust the parser.
MAX_JSON_DEPTH = 32

#: The largest page a list returns (``?pageSize``); a larger value is lowered to it.
MAX_PAGE_SIZE = 10_000

#: The longest ``nextPageToken`` accepted: tokens this server issues hold one sort key (a
#: unit name and a machine id at most) and stay far below it.
MAX_PAGE_TOKEN_LENGTH = 1024

#: How many machines one ``PATCH /machines`` may change: it is one etcd transaction of two
#: operations per machine, and etcd allows 128 operations in a transaction.
MAX_PATCH_MACHINES = 64

#: How many operations one ``PATCH /machines`` may hold.
MAX_PATCH_OPERATIONS = 1000

#: How many journals one fleetd streams with ``follow`` at once: each holds a journalctl
#: process and a connection for as long as the client stays.
MAX_JOURNAL_FOLLOWS = 32

#: How many units one batch request (``POST /fleet/v1/units:batch``) may name, written and
#: destroyed together: every one is validated and decided before anything is written, so a
#: batch is work in proportion to this. 1,000 units start in one request; more are split by
#: the client.
MAX_BATCH_UNITS = 1000

#: The largest batch request body. Larger than one unit's request (MAX_REQUEST_BYTES) so a
#: thousand ordinary units fit in one, bounded so a batch cannot hold more than a few
#: maximal units in memory: a client splits a larger batch (each unit is still at most
#: MAX_UNIT_BYTES).
MAX_BATCH_BYTES = 4 * MIB

#: How many long-polls of ``GET /state?wait=true`` one fleetd holds open at once: each is a
#: connection and an etcd watch for up to MAX_STATE_WAIT_SECONDS.
MAX_STATE_WAITERS = 64

#: The longest a ``GET /state?wait=true`` long-poll waits for a change (``timeout``): short
#: enough to fit any client's request timeout, long enough that a client waiting for a
#: stuck unit asks once per few seconds instead of several times a second.
MAX_STATE_WAIT_SECONDS = 5


def _text_bytes(value: object) -> int:
    """UTF-8 size of a string (a lone surrogate counts as the 3 bytes it would take);
    anything else counts nothing, so a malformed option is left to the validation that
    names what is wrong with it."""
    if not isinstance(value, str):
        return 0
    if value.isascii():
        return len(value)
    return len(value.encode("utf-8", "surrogatepass"))


def options_size(options: Iterable[Mapping[str, object]]) -> int:
    """The size of a unit given as the API's options (``[{section, name, value}, ...]``):
    each option's section, name and value in UTF-8 bytes plus OPTION_OVERHEAD_BYTES.

    Counting the section with every option matches how the unit is stored, so a long
    section name repeated by many options cannot slip past the limit."""
    total = 0
    for option in options:
        total += OPTION_OVERHEAD_BYTES
        if isinstance(option, Mapping):
            total += sum(_text_bytes(option.get(field)) for field in ("section", "name", "value"))
    return total


def unit_size(file: UnitFile) -> int:
    """The size of a stored unit, measured as :func:`options_size` measures a request."""
    return options_size(file.to_options())


def too_large(size: int, limit: int, what: str) -> str | None:
    """The message refusing ``what`` of ``size`` bytes, or ``None`` within ``limit``."""
    if size <= limit:
        return None
    return f"{what} is {size} bytes; the limit is {limit} bytes ({limit // KIB} KiB)"


__all__ = [
    "KIB",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_UNITS",
    "MAX_JOURNAL_FOLLOWS",
    "MAX_JSON_DEPTH",
    "MAX_PAGE_SIZE",
    "MAX_PAGE_TOKEN_LENGTH",
    "MAX_PATCH_MACHINES",
    "MAX_PATCH_OPERATIONS",
    "MAX_PEER_CERT_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_STATE_WAITERS",
    "MAX_STATE_WAIT_SECONDS",
    "MAX_UNIT_BYTES",
    "MIB",
    "OPTION_OVERHEAD_BYTES",
    "options_size",
    "too_large",
    "unit_size",
]
