"""``/fleet/v1/machines``: list the live machines and change their dynamic metadata.

``PATCH`` takes a JSON-patch-like list of operations on ``/<machineID>/metadata/<key>``.
It is all or nothing: the whole list is validated before anything is written
(:func:`parse_metadata_patch`), the operations are folded per machine, and every machine's
metadata is changed in one registry transaction
(:meth:`~fleetd.registry.registry.Registry.update_machines_metadata`). A machine that is
not registered is a 404 naming it, and then nothing is changed, on any machine: a typo in
one machine id must not leave the others half-updated. A request may change at most
:data:`~fleetd.model.limits.MAX_PATCH_MACHINES` machines (one etcd transaction) with at
most :data:`~fleetd.model.limits.MAX_PATCH_OPERATIONS` operations; more is a 413.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.params import json_body, listing, page
from fleetd.model.limits import MAX_PATCH_MACHINES, MAX_PATCH_OPERATIONS
from fleetd.model.wire import machine_json
from fleetd.registry.errors import MachineNotFound

# what a machine id and a metadata key may be; the OpenAPI document quotes these patterns
MACHINE_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,128}"
METADATA_KEY_PATTERN = r"[A-Za-z0-9_.:-]{1,253}"
MACHINE_ID_RE = re.compile(MACHINE_ID_PATTERN)
_METADATA_KEY_RE = re.compile(METADATA_KEY_PATTERN)
_PATCH_PATH_RE = re.compile(r"/([^/]+)/metadata/([^/]+)")


async def list_machines(request: web.Request) -> web.Response:
    """The live machines, with the dynamic metadata a PATCH stored laid over what their
    agents published: a PATCH shows in the next listing at once (read your own writes),
    not only after the agent republished its entry. A removed key still shows until then
    when it was published (the published entry does not tell static keys from dynamic)."""
    registry = api_state(request).registry
    machines, dynamic = await asyncio.gather(registry.machines(), registry.all_dynamic_metadata())
    items, token = page(request, machines, lambda m: (m.id,), "machines")
    records = []
    for machine in items:
        record = machine_json(machine)
        record["metadata"].update(dynamic.get(machine.id, {}))  # unreadable: the registry gives {}
        records.append(record)
    return listing("machines", records, token)


@dataclass(frozen=True)
class MetadataOp:
    """One validated PATCH operation; ``value`` is ``None`` for ``remove``."""

    op: str
    machine_id: str
    key: str
    value: str | None


_MISSING = object()


def _field(item: dict[str, Any], name: str) -> Any:
    """``item``'s member ``name`` as fleet's API (Go's encoding/json) reads it: the key's
    case does not matter, and of several keys that match the last one counts. fleet's own
    functional tests send ``{"op", "path", "Value": {"value": ...}}``."""
    found = _MISSING
    for key, value in item.items():
        if key.casefold() == name:
            found = value
    return found


def _patch_value(item: dict[str, Any], where: str, op: str, key: str) -> str:
    raw = _field(item, "value")
    if raw is _MISSING:
        raise ApiError(400, f"{where}: {op} needs a value")
    if isinstance(raw, dict) and set(raw) and all(k.casefold() == "value" for k in raw):
        raw = _field(raw, "value")  # fleet's own client nests it: {"value": {"value": "x"}}
    if not isinstance(raw, str):
        raise ApiError(400, f'{where}: value must be a string or {{"value": "<string>"}}')
    if not raw or any(ord(ch) < 32 or ch in ',"' for ch in raw):
        raise ApiError(
            400,
            f"{where}: invalid value {raw!r} for {key} (non-empty, no commas, quotes or control characters)",
        )
    return raw


def parse_metadata_patch(body: Any) -> list[MetadataOp]:
    """Validate a whole PATCH /machines body; raises ApiError(400) naming the first bad
    operation, so a rejected request changes nothing."""
    if not isinstance(body, list):
        raise ApiError(400, 'expected a JSON list of {"op", "path", "value"} operations')
    if len(body) > MAX_PATCH_OPERATIONS:
        raise ApiError(413, f"{len(body)} operations in one request; the limit is {MAX_PATCH_OPERATIONS}")
    result: list[MetadataOp] = []
    for index, item in enumerate(body):
        where = f"operation {index}"
        if not isinstance(item, dict):
            raise ApiError(400, f'{where}: expected an object {{"op", "path", "value"}}')
        op = _field(item, "op")
        if op not in ("add", "remove", "replace"):
            shown = None if op is _MISSING else op
            raise ApiError(400, f"{where}: invalid op {shown!r}: expected add, remove or replace")
        path = _field(item, "path")
        match = _PATCH_PATH_RE.fullmatch(path) if isinstance(path, str) else None
        if match is None:
            shown = None if path is _MISSING else path
            raise ApiError(400, f'{where}: invalid path {shown!r}: expected "/<machineID>/metadata/<key>"')
        machine_id, key = match.groups()
        if not MACHINE_ID_RE.fullmatch(machine_id):
            raise ApiError(400, f"{where}: invalid machine ID {machine_id!r}")
        if not _METADATA_KEY_RE.fullmatch(key):
            raise ApiError(400, f"{where}: invalid metadata key {key!r} (allowed: A-Z a-z 0-9 _ . : -)")
        value = None if op == "remove" else _patch_value(item, where, op, key)
        result.append(MetadataOp(op, machine_id, key, value))
    return result


def fold_operations(operations: list[MetadataOp]) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Per machine: (keys to set, keys to remove), applying the operations in order so a
    later operation on the same key wins; 413 beyond MAX_PATCH_MACHINES machines."""
    changes: dict[str, tuple[dict[str, str], list[str]]] = {}
    for op in operations:
        set_, remove = changes.setdefault(op.machine_id, ({}, []))
        if op.op == "remove":
            set_.pop(op.key, None)
            if op.key not in remove:
                remove.append(op.key)
        else:
            assert op.value is not None
            set_[op.key] = op.value
            if op.key in remove:
                remove.remove(op.key)
    if len(changes) > MAX_PATCH_MACHINES:
        raise ApiError(413, f"{len(changes)} machines in one request; the limit is {MAX_PATCH_MACHINES}")
    return changes


async def patch_machines(request: web.Request) -> web.Response:
    changes = fold_operations(parse_metadata_patch(await json_body(request)))
    if changes:
        try:
            await api_state(request).registry.update_machines_metadata(changes)
        except MachineNotFound as exc:
            raise ApiError(404, f"{exc}; nothing was changed") from None
    # fleet answers this 204 (its only one) with Content-Type application/json, and its
    # functional tests check it
    return web.Response(status=204, content_type="application/json")


__all__ = [
    "MACHINE_ID_PATTERN",
    "MACHINE_ID_RE",
    "METADATA_KEY_PATTERN",
    "MetadataOp",
    "fold_operations",
    "list_machines",
    "parse_metadata_patch",
    "patch_machines",
]
