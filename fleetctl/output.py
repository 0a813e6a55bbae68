"""What the list commands print: fields, cells, legends, tables and JSON. Pure functions.

Input records are the HTTP API's JSON shapes, whichever driver fetched them:

- machine: ``{"id", "primaryIP", "metadata": {k: v}}``
- unit state: ``{"name", "hash", "machineID", "systemdLoadState", "systemdActiveState",
  "systemdSubState"}``
- unit: ``{"name", "options": [{section, name, value}], "desiredState", "currentState",
  "machineID"}``

Cells follow fleet: ``-`` for anything empty or unknown, machines as
``<first 8 id chars>...[/<ip>]`` (the whole id with ``--full``), metadata as sorted
``k=v,k2=v2``, hashes 7 characters (40 with ``--full``), upper-case headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fleetctl.tabwriter import format_table
from fleetd.model.state import short_id
from fleetd.model.unitfile import short_hash

Record = Mapping[str, Any]
Machines = Mapping[str, Record]  # machine id -> machine record

EMPTY = "-"


class FieldError(ValueError):
    """A ``--fields`` value naming a field the command does not have (a usage error)."""


# -- cells ----------------------------------------------------------------------------------


def machine_id_legend(machine_id: str, full: bool) -> str:
    """``113f16a7...`` (the whole id with ``full``)."""
    return machine_id if full else f"{short_id(machine_id)}..."


def machine_legend(machine_id: str, machines: Machines, full: bool) -> str:
    """``113f16a7.../172.17.8.103``: the id legend, then the IP when the machine is known
    and has one; ``-`` when there is no machine at all."""
    if not machine_id:
        return EMPTY
    legend = machine_id_legend(machine_id, full)
    ip = (machines.get(machine_id) or {}).get("primaryIP") or ""
    return f"{legend}/{ip}" if ip else legend


def format_metadata(metadata: Mapping[str, str] | None) -> str:
    """Sorted ``k=v,k2=v2``; ``-`` when there is none."""
    if not metadata:
        return EMPTY
    return ",".join(f"{key}={value}" for key, value in sorted(metadata.items()))


def hash_legend(full_hash: str, full: bool) -> str:
    if not full_hash:
        return EMPTY
    return full_hash if full else short_hash(full_hash)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if text else EMPTY


@dataclass(frozen=True)
class UnitInfo:
    """What list-unit-files derives from a unit's options (cached: 1,000s of units)."""

    hash: str
    is_global: bool
    description: str


@lru_cache(maxsize=16384)
def _unit_info(name: str, options_key: tuple[tuple[str, str, str], ...]) -> UnitInfo:
    from fleetd.model.unitfile import UnitFile, UnitOption  # the model is light: no I/O libraries
    from fleetd.model.wire import is_global_unit

    # Built without from_options' checks: these options come from a unit the cluster
    # already decoded and checked that way, and the checks were half of list-unit-files'
    # rendering time with 1,000 units. The hash is the same either way.
    file = UnitFile(tuple(UnitOption(s, n, v) for s, n, v in options_key))
    # only a unit with an [X-Fleet] Global= line can be global: skip the full parse otherwise
    maybe_global = any(s == "X-Fleet" and n == "Global" for s, n, _ in options_key)
    return UnitInfo(file.hash(), maybe_global and is_global_unit(name, file), file.description or "")


def unit_info(unit: Record) -> UnitInfo:
    options = tuple((o["section"], o["name"], o["value"]) for o in unit.get("options") or ())
    return _unit_info(unit["name"], options)


def is_global(unit: Record) -> bool:
    return unit_info(unit).is_global


# -- fields ---------------------------------------------------------------------------------

MachineCell = Callable[[Record, bool], str]
StateCell = Callable[[Record, Machines, bool], str]
UnitCell = Callable[[Record, Machines, bool], str]

MACHINE_FIELDS: dict[str, MachineCell] = {
    "machine": lambda m, full: machine_id_legend(m["id"], full),
    "ip": lambda m, full: _cell(m.get("primaryIP")),
    "metadata": lambda m, full: format_metadata(m.get("metadata")),
}

UNIT_FIELDS: dict[str, StateCell] = {
    "unit": lambda s, ms, full: _cell(s.get("name")),
    "load": lambda s, ms, full: _cell(s.get("systemdLoadState")),
    "active": lambda s, ms, full: _cell(s.get("systemdActiveState")),
    "sub": lambda s, ms, full: _cell(s.get("systemdSubState")) + (f" ({s['error']})" if s.get("error") else ""),
    "machine": lambda s, ms, full: machine_legend(s.get("machineID") or "", ms, full),
    "hash": lambda s, ms, full: hash_legend(s.get("hash") or "", full),
}


def _target(unit: Record, machines: Machines, full: bool) -> str:
    if is_global(unit):
        return "global"
    return machine_legend(unit.get("machineID") or "", machines, full)


def _state(unit: Record, machines: Machines, full: bool) -> str:
    if is_global(unit):
        return EMPTY  # a global unit has no single current state
    return _cell(unit.get("currentState"))


UNIT_FILE_FIELDS: dict[str, UnitCell] = {
    "unit": lambda u, ms, full: _cell(u.get("name")),
    "hash": lambda u, ms, full: EMPTY if u.get("error") else hash_legend(unit_info(u).hash, full),
    "dstate": lambda u, ms, full: _cell(u.get("desiredState")),
    "state": _state,
    "target": _target,
    "global": lambda u, ms, full: "true" if is_global(u) else "false",
    "desc": lambda u, ms, full: _cell(u.get("error") or unit_info(u).description),
}

# Deprecated names fleet still accepted (with a warning on stderr), and the field each means.
UNIT_FILE_ALIASES: dict[str, str] = {"tmachine": "target"}

DEFAULT_MACHINE_FIELDS = "machine,ip,metadata"
DEFAULT_UNIT_FIELDS = "unit,machine,active,sub"
DEFAULT_UNIT_FILE_FIELDS = "unit,hash,dstate,state,target"


def parse_fields(text: str, valid: Iterable[str], aliases: Mapping[str, str] | None = None) -> list[str]:
    """``"unit,hash"`` -> ``["unit", "hash"]``; unknown or empty names raise
    :class:`FieldError` naming the valid ones (case and surrounding spaces ignored).
    A name in ``aliases`` (a deprecated spelling) is accepted and kept as given."""
    names = list(valid)
    if not text.strip():
        raise FieldError(f"--fields must name at least one field (valid fields: {','.join(names)})")
    result = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if name not in names and name not in (aliases or {}):
            raise FieldError(f'invalid field "{raw.strip()}" in --fields (valid fields: {",".join(names)})')
        result.append(name)
    return result


# -- tables ---------------------------------------------------------------------------------


def render(fields: Sequence[str], rows: Iterable[Sequence[str]], no_legend: bool) -> str:
    """The table as fleet printed it: an upper-case legend unless ``no_legend``."""
    lines: list[Sequence[str]] = [] if no_legend else [[f.upper() for f in fields]]
    lines.extend(rows)
    return format_table(lines)


def sorted_states(states: Iterable[Record]) -> list[Record]:
    return sorted(states, key=lambda s: (s.get("name") or "", s.get("machineID") or ""))


def list_machines_table(machines: Iterable[Record], fields: Sequence[str], full: bool, no_legend: bool) -> str:
    ordered = sorted(machines, key=lambda m: m["id"])
    rows = [[MACHINE_FIELDS[f](m, full) for f in fields] for m in ordered]
    return render(fields, rows, no_legend)


def list_units_table(
    states: Iterable[Record], machines: Machines, fields: Sequence[str], full: bool, no_legend: bool
) -> str:
    """One row per unit per machine (each reported state), sorted by unit then machine."""
    rows = [[UNIT_FIELDS[f](s, machines, full) for f in fields] for s in sorted_states(states)]
    return render(fields, rows, no_legend)


def list_unit_files_table(
    units: Iterable[Record], machines: Machines, fields: Sequence[str], full: bool, no_legend: bool
) -> str:
    ordered = sorted(units, key=lambda u: u["name"])
    rows = [[UNIT_FILE_FIELDS[UNIT_FILE_ALIASES.get(f, f)](u, machines, full) for f in fields] for u in ordered]
    return render(fields, rows, no_legend)


# -- JSON (beyond fleet: --output json) -----------------------------------------------------


def _or_none(value: Any) -> Any:
    return value if value not in (None, "") else None


def machines_json(machines: Iterable[Record], fields: Sequence[str]) -> list[dict[str, Any]]:
    values = {
        "machine": lambda m: m["id"],
        "ip": lambda m: _or_none(m.get("primaryIP")),
        "metadata": lambda m: dict(sorted((m.get("metadata") or {}).items())),
    }
    return [{f: values[f](m) for f in fields} for m in sorted(machines, key=lambda m: m["id"])]


def units_json(states: Iterable[Record], fields: Sequence[str]) -> list[dict[str, Any]]:
    values = {
        "unit": lambda s: s.get("name"),
        "load": lambda s: _or_none(s.get("systemdLoadState")),
        "active": lambda s: _or_none(s.get("systemdActiveState")),
        "sub": lambda s: _or_none(s.get("systemdSubState")),
        "machine": lambda s: _or_none(s.get("machineID")),
        "hash": lambda s: _or_none(s.get("hash")),
    }
    return [{f: values[f](s) for f in fields} for s in sorted_states(states)]


def unit_files_json(units: Iterable[Record], fields: Sequence[str]) -> list[dict[str, Any]]:
    values = {
        "unit": lambda u: u["name"],
        "hash": lambda u: None if u.get("error") else unit_info(u).hash,
        "dstate": lambda u: _or_none(u.get("desiredState")),
        "state": lambda u: None if is_global(u) else _or_none(u.get("currentState")),
        "target": lambda u: "global" if is_global(u) else _or_none(u.get("machineID")),
        "global": lambda u: is_global(u),
        "desc": lambda u: _or_none(u.get("error") or unit_info(u).description),
    }
    return [{f: values[UNIT_FILE_ALIASES.get(f, f)](u) for f in fields} for u in sorted(units, key=lambda u: u["name"])]


def dump_json(items: Any) -> str:
    return json.dumps(items, indent=2) + "\n"


__all__ = [
    "DEFAULT_MACHINE_FIELDS",
    "DEFAULT_UNIT_FIELDS",
    "DEFAULT_UNIT_FILE_FIELDS",
    "FieldError",
    "MACHINE_FIELDS",
    "UNIT_FIELDS",
    "UNIT_FILE_ALIASES",
    "UNIT_FILE_FIELDS",
    "dump_json",
    "format_metadata",
    "hash_legend",
    "is_global",
    "list_machines_table",
    "list_unit_files_table",
    "list_units_table",
    "machine_id_legend",
    "machine_legend",
    "machines_json",
    "parse_fields",
    "render",
    "unit_files_json",
    "unit_info",
    "units_json",
]
