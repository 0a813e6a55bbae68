"""``fleetctl update FILE...``, ``fleetctl rollback UNIT`` and ``fleetctl update-status
UNIT``: rolling updates.

Both only ask for an update (``POST /fleet/v1/updates/{unit}``) and follow its record
(``GET /fleet/v1/updates/{unit}``): the engine leader carries it out, so a fleetctl that
is interrupted, or a change of leader, neither loses nor repeats it. Following shows one
updating line on a terminal (plain lines otherwise) and ends with the outcome: exit 0
when the update finished, 1 when it stopped (reverted or not), with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import time

from fleetctl.arguments import unit_name
from fleetctl.client import Record
from fleetctl.context import Context
from fleetctl.errors import FleetctlError, UsageError
from fleetctl.output import dump_json
from fleetctl.unit_plan import read_unit_file, report
from fleetctl.waiting import Progress

POLL = 0.5  # seconds between looks at a record being followed
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?")
FINAL = frozenset({"finished", "reverted", "failed"})


def parse_duration(text: str, flag: str, command: str) -> float:
    """Seconds from ``10s``, ``5m``, ``1m30s``, ``250ms``, ``1h`` or a bare number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise UsageError(f'invalid duration "{text}" for --{flag} (e.g. 10s, 5m, 1m30s)', command)
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _params(args: argparse.Namespace, command: str) -> Record:
    if args.max_parallel < 1:
        raise UsageError("--max-parallel must be 1 or more", command)
    return {
        "maxParallel": args.max_parallel,
        "minHealthy": parse_duration(args.min_healthy, "min-healthy", command),
        "healthyDeadline": parse_duration(args.healthy_deadline, "healthy-deadline", command),
        "autoRevert": not args.no_auto_revert,
    }


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    params = _params(args, "update")
    bodies: list[tuple[str, Record]] = []
    for path in args.files:
        try:
            name = unit_name(os.path.basename(path))
        except FleetctlError as exc:
            raise UsageError(str(exc), "update") from None
        file = read_unit_file(path)
        bodies.append((name, {"options": file.to_options(), **params}))
    return _run(ctx, bodies, args.no_block, "update")


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    try:
        name = unit_name(args.unit[0])
    except FleetctlError as exc:
        raise UsageError(str(exc), "rollback") from None
    if args.to is not None and args.to < 1:
        raise UsageError("--to must be a revision number (1 or more)", "rollback")
    body = {"revision": "previous" if args.to is None else args.to, **_params(args, "rollback")}
    return _run(ctx, [(name, body)], args.no_block, "rollback")


def cmd_update_status(ctx: Context, args: argparse.Namespace) -> int:
    """Where a unit's latest update stands; with --wait, follow it to its end (the way
    back after the fleetctl that started it was interrupted)."""
    try:
        name = unit_name(args.unit[0])
    except FleetctlError as exc:
        raise UsageError(str(exc), "update-status") from None
    record = ctx.cluster.update_record(name)
    if record is None:
        return report(ctx, [f"unit {name} has no update"])
    if args.wait and str(record.get("state")) not in FINAL:
        return _follow(ctx, name)
    if args.output == "json":
        ctx.out.write(dump_json(record))
    else:
        ctx.print(_summary(name, record))
        for instance in record.get("instances") or []:
            ctx.print(
                f"  {instance.get('name')}\t{instance.get('phase')}\t(was revision {instance.get('previousRevision')})"
            )
    state = str(record.get("state"))
    return 1 if state in ("reverted", "failed") else 0


def _summary(name: str, record: Record) -> str:
    revision = record.get("targetRevision")
    target = f"revision {revision}" if revision else f"body {str(record.get('targetHash') or '')[:7]}"
    reason = f": {record.get('reason')}" if record.get("reason") else ""
    return f"{record.get('kind')} of {name} to {target}: {record.get('state')}{reason}"


def _run(ctx: Context, bodies: list[tuple[str, Record]], no_block: bool, what: str) -> int:
    started: list[str] = []
    for name, body in bodies:
        record = ctx.cluster.start_update(name, body)
        count = len(record.get("instances") or [])
        target = str(record.get("targetHash") or "")[:7]
        revision = record.get("targetRevision")
        to = f"revision {revision} ({target})" if revision else f"body {target}"
        ctx.print(f"{what.capitalize()} of {name} to {to} started: {count} instance{'s' * (count != 1)}")
        started.append(name)
    if no_block:
        return 0
    return max(_follow(ctx, name) for name in started)


def _line(name: str, record: Record) -> str:
    counts = record.get("counts") or {}
    total = sum(int(v) for v in counts.values()) if isinstance(counts, dict) else 0
    return (
        f"{name}: {record.get('state')}, {counts.get('healthy', 0)}/{total} healthy, "
        f"{counts.get('updating', 0)} updating, {counts.get('reverted', 0)} reverted"
    )


def _follow(ctx: Context, name: str) -> int:
    """Follow one update to its end; the exit status it means."""
    progress = Progress(ctx.err, ctx.err.isatty())
    last = ""
    while True:
        record = ctx.cluster.update_record(name)
        if record is None:
            progress.clear()
            raise FleetctlError(f"the update of {name} is gone (its record was removed)")
        state = str(record.get("state") or "")
        line = _line(name, record)
        if line != last:
            if progress.enabled:
                progress.show(line)
            elif state not in FINAL:
                ctx.warn(line)
            last = line
        if state in FINAL:
            progress.clear()
            reason = str(record.get("reason") or "")
            if state == "finished":
                ctx.print(f"Update of {name} finished: every instance is healthy on the new body.")
                return 0
            if state == "reverted":
                ctx.warn(f"Error: update of {name} stopped and was reverted: {reason}")
            else:
                ctx.warn(f"Error: update of {name} stopped (not reverted, --no-auto-revert): {reason}")
            return 1
        time.sleep(POLL)


__all__ = ["cmd_rollback", "cmd_update", "cmd_update_status", "parse_duration"]
