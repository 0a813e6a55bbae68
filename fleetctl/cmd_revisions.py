"""``fleetctl revisions UNIT`` and ``fleetctl cat --revision=N UNIT``: a unit's past bodies.

Every create or replace of a unit keeps its body as a numbered revision (the newest 10 by
default); these commands list them and show one, so a change can be inspected, compared
with ``diff`` and undone.
"""

from __future__ import annotations

import argparse

from fleetctl.arguments import unit_name
from fleetctl.context import Context
from fleetctl.errors import FleetctlError, UsageError
from fleetctl.output import dump_json, hash_legend, render
from fleetctl.unit_plan import report
from fleetd.model.unitfile import UnitFile

FIELDS = ("revision", "hash", "time", "origin")


def _name(arg: str, command: str) -> str:
    try:
        return unit_name(arg)
    except FleetctlError as exc:
        raise UsageError(str(exc), command) from None


def cmd_revisions(ctx: Context, args: argparse.Namespace) -> int:
    name = _name(args.unit[0], "revisions")
    found = ctx.cluster.revisions(name)
    if found is None:
        return report(ctx, [f"Unit {name} does not exist."])
    if args.output == "json":
        ctx.out.write(dump_json(found))
        return 0
    current = ctx.cluster.unit(name)
    now = (current or {}).get("revision")
    rows = [
        [
            f"{r['revision']}{' (current)' if r['revision'] == now else ''}",
            hash_legend(str(r.get("hash") or ""), args.full),
            str(r.get("time") or "-"),
            str(r.get("origin") or "-"),
        ]
        for r in found
    ]
    ctx.out.write(render(FIELDS, rows, args.no_legend))
    return 0


def cat_revision(ctx: Context, names: list[str], number: int) -> int:
    """``cat --revision=N``: the body the unit had at revision N."""
    if number < 1:
        raise UsageError("--revision must be 1 or more", "cat")
    if len(names) != 1:
        raise UsageError("--revision shows one unit's revision: name one unit", "cat")
    name = _name(names[0], "cat")
    found = ctx.cluster.unit_revision(name, number)
    if found is None:
        kept = ctx.cluster.revisions(name)
        if kept is None:
            return report(ctx, [f"unit {name} not found"])
        numbers = ", ".join(str(r["revision"]) for r in kept) or "none"
        return report(ctx, [f"unit {name} has no revision {number} (kept: {numbers})"])
    ctx.out.write(UnitFile.from_options(found.get("options") or []).serialize())
    return 0


__all__ = ["cat_revision", "cmd_revisions"]
