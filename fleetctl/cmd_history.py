"""``fleetctl history [UNIT...] [--output json] [-f]``: what happened, and why.

The cluster's history (``GET /fleet/v1/events``): where units were placed and moved and
why, when they started, stopped or failed, which machines joined or were lost. Units
may be named as for other commands (``web`` means ``web.service``) or as globs
(``'web@*'``); a destroyed unit's history is still shown. The table is oldest first; the
JSON output is a list of ``{time, unit, machine, event, reason, revision}`` objects, and
with ``-f`` one such object per line as events are recorded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

from fleetctl.arguments import has_glob, match_names, unit_name
from fleetctl.client import Record
from fleetctl.context import Context
from fleetctl.errors import FleetctlError, UsageError
from fleetctl.output import dump_json, machine_legend, render

FIELDS = ("time", "event", "unit", "machine", "reason")


class Selection:
    """Which events the arguments ask for: exact names and globs, or everything."""

    def __init__(self, args: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.globs: list[str] = []
        for arg in args:
            if has_glob(arg):
                self.globs.append(arg)
            else:
                try:
                    self.names.add(unit_name(arg))
                except FleetctlError as exc:
                    raise UsageError(str(exc), "history") from None

    @property
    def everything(self) -> bool:
        return not self.names and not self.globs

    @property
    def single(self) -> str | None:
        """The one unit to ask the API for (it filters), when that is all there is."""
        return next(iter(self.names)) if len(self.names) == 1 and not self.globs else None

    def wants(self, event: Record) -> bool:
        unit = str(event.get("unit") or "")
        return self.everything or unit in self.names or any(match_names(g, [unit]) for g in self.globs)


def _row(event: Record, machines: dict[str, Record], full: bool) -> list[str]:
    machine = str(event.get("machine") or "")
    return [
        str(event.get("time") or "-"),
        str(event.get("event") or "-"),
        str(event.get("unit") or "-"),
        machine_legend(machine, machines, full) if machine else "-",
        str(event.get("reason") or "-"),
    ]


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    selection = Selection(args.units)
    cluster = ctx.cluster
    if args.follow:
        machines = {str(m["id"]): m for m in cluster.machines()} if args.output != "json" else {}
        for event in cluster.follow_events(selection.single):
            if not selection.wants(event):
                continue
            if args.output == "json":
                ctx.out.write(json.dumps(event, separators=(",", ":")) + "\n")
            else:
                if event.get("machine") and event["machine"] not in machines and event.get("event") == "machine-joined":
                    machines = {str(m["id"]): m for m in cluster.machines()}
                ctx.out.write("  ".join(_row(event, machines, args.full)) + "\n")
            ctx.out.flush()
        return 0
    events = [e for e in cluster.events(selection.single) if selection.wants(e)]
    if args.output == "json":
        ctx.out.write(dump_json(events))
        return 0
    machines = {str(m["id"]): m for m in cluster.machines()}
    ctx.out.write(render(FIELDS, [_row(e, machines, args.full) for e in events], args.no_legend))
    return 0


__all__ = ["cmd_history"]
