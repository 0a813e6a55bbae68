"""list-machines, list-units, list-unit-files."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fleetctl.context import Context
from fleetctl.errors import UsageError
from fleetctl.output import (
    MACHINE_FIELDS,
    UNIT_FIELDS,
    UNIT_FILE_ALIASES,
    UNIT_FILE_FIELDS,
    FieldError,
    dump_json,
    list_machines_table,
    list_unit_files_table,
    list_units_table,
    machines_json,
    parse_fields,
    unit_files_json,
    units_json,
)


def _fields(
    args: argparse.Namespace, valid: Any, command: str, ctx: Context | None = None, aliases: Any = None
) -> list[str]:
    text = args.fields
    if text is None:  # no --fields: the table's defaults, or every field for JSON
        text = ",".join(valid) if args.output == "json" else args.default_fields
    try:
        fields = parse_fields(text, valid, aliases)
    except FieldError as exc:
        raise UsageError(str(exc), command) from None
    for name in fields:
        if ctx is not None and aliases and name in aliases:
            # fleet's words, so scripts that grep for them keep working
            ctx.warn(f'WARNING: The "{name}" field is deprecated. Use "{aliases[name]}" instead')
    return fields


def _both(ctx: Context, first: Any, second: Any) -> tuple[Any, Any]:
    """Two independent reads, at once when the driver allows (two API connections)."""
    if not getattr(ctx.cluster, "concurrent", False):
        return first(), second()
    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(first)
        b = pool.submit(second)
        return a.result(), b.result()


def list_machines(ctx: Context, args: argparse.Namespace) -> int:
    fields = _fields(args, MACHINE_FIELDS, "list-machines")
    machines = ctx.cluster.machines()
    if args.output == "json":
        ctx.out.write(dump_json(machines_json(machines, fields)))
    else:
        ctx.out.write(list_machines_table(machines, fields, args.full, args.no_legend))
    return 0


def list_units(ctx: Context, args: argparse.Namespace) -> int:
    fields = _fields(args, UNIT_FIELDS, "list-units")
    cluster = ctx.cluster
    if "machine" in fields and args.output != "json":
        states, machines = _both(ctx, cluster.states, cluster.machines)
    else:
        states, machines = cluster.states(), []
    if args.output == "json":
        ctx.out.write(dump_json(units_json(states, fields)))
    else:
        by_id = {m["id"]: m for m in machines}
        ctx.out.write(list_units_table(states, by_id, fields, args.full, args.no_legend))
    return 0


def list_unit_files(ctx: Context, args: argparse.Namespace) -> int:
    fields = _fields(args, UNIT_FILE_FIELDS, "list-unit-files", ctx, UNIT_FILE_ALIASES)
    cluster = ctx.cluster
    if ("target" in fields or "tmachine" in fields) and args.output != "json":
        units, machines = _both(ctx, cluster.units, cluster.machines)
    else:
        units, machines = cluster.units(), []
    if args.output == "json":
        ctx.out.write(dump_json(unit_files_json(units, fields)))
    else:
        by_id = {m["id"]: m for m in machines}
        ctx.out.write(list_unit_files_table(units, by_id, fields, args.full, args.no_legend))
    return 0


__all__ = ["list_machines", "list_unit_files", "list_units"]
