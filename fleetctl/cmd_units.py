"""The unit lifecycle: submit, load, start, stop, unload, destroy, restart; and cat.

Every command first resolves and checks *all* its arguments (files read and validated,
templates found, state transitions allowed; see :mod:`fleetctl.unit_plan`) and changes
nothing if any is wrong; then it writes every unit in one batch (``POST /units:batch``,
which the server also checks whole before writing; one request per unit, several at once,
on a fleetd without it) and, unless ``--no-block``, waits for the cluster to get there
(:mod:`fleetctl.waiting`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fleetctl.client import Record, UnitWrite
from fleetctl.context import Context
from fleetctl.errors import FleetctlError
from fleetctl.output import is_global
from fleetctl.unit_plan import (
    TARGET,
    Failed,
    Item,
    Units,
    file_of,
    plan_units,
    report,
    resolve_names,
)
from fleetctl.waiting import Goal, Waiter, is_active
from fleetd.model.unit import DesiredState, check_transition
from fleetd.model.unitfile import UnitFile

# Failed, Units, report and resolve_names live in fleetctl.unit_plan; fleetctl.main and
# fleetctl.cmd_remote import them from here, which stays their address.

# -- submit / load / start ---------------------------------------------------------------------


def _options(file: UnitFile) -> list[Record]:
    return file.to_options()


def _set_desired(ctx: Context, names: Sequence[str], target: str) -> dict[str, str]:
    """Change the desired state of every unit in one batch; the failures, name -> message."""
    return ctx.cluster.write_units([UnitWrite(name, target) for name in names]) if names else {}


def _messages(failures: dict[str, str]) -> list[str]:
    return [f"{name}: {message}" for name, message in failures.items()]


def _block_attempts(args: argparse.Namespace) -> int | None:
    """None: do not wait (--no-block); 0: wait for ever; N: at most N attempts."""
    if getattr(args, "no_block", False):
        return None
    return int(getattr(args, "block_attempts", 0) or 0)


def cmd_submit_load_start(ctx: Context, args: argparse.Namespace) -> int:
    command = args.command
    target = TARGET[command]
    items = plan_units(ctx, args.units, command, args.replace)
    writes: list[UnitWrite] = []
    triggered: list[Item] = []
    for item in items:
        if item.create:
            assert item.file is not None
            writes.append(UnitWrite(item.name, target, _options(item.file)))
            triggered.append(item)
        elif item.replace:
            assert item.file is not None and item.existing is not None
            desired = item.existing["desiredState"] if command == "submit" else target
            writes.append(UnitWrite(item.name, desired, _options(item.file), replace=True))
            triggered.append(item)
        elif command != "submit" and item.existing is not None and item.existing.get("desiredState") != target:
            writes.append(UnitWrite(item.name, target))
            triggered.append(item)
    failed = ctx.cluster.write_units(writes) if writes else {}
    errors = _messages(failed)
    if command == "submit":
        for item in items:
            if item.create and item.name not in failed:
                ctx.print(f"Unit {item.name} inactive")
        return report(ctx, errors)
    for item in triggered:
        if item.is_global and item.name not in failed:
            ctx.print(f"Triggered global unit {item.name} {command}")
    _warn_unplaceable_globals(ctx, [i.name for i in triggered if i.is_global and i.name not in failed])
    attempts = _block_attempts(args)
    local = [i for i in items if not i.is_global and i.name not in failed]
    if attempts is None:
        written = {i.name for i in triggered}  # by name: comparing Items is slow with 1,000s
        for item in local:
            if item.name in written:
                ctx.print(f"Triggered unit {item.name} {command}")
        return report(ctx, errors)
    goals = [Goal(i.name, target, i.file.hash() if i.replace and i.file is not None else None) for i in local]
    errors += Waiter(ctx, attempts).wait_units(goals, command)
    return report(ctx, _timeouts(errors))


def _timeouts(errors: list[str]) -> list[str]:
    return [e if not e.startswith("timed out") else f"waiting for units: {e}" for e in errors]


def _warn_unplaceable_globals(ctx: Context, names: list[str]) -> None:
    if not names:
        return
    try:
        reasons = ctx.cluster.unplaceable()
    except FleetctlError:
        return
    for name in names:
        if name in reasons:
            ctx.warn(f"WARNING: global unit {name}: {reasons[name]}")


# -- stop / unload -----------------------------------------------------------------------------


def _existing(ctx: Context, args: Sequence[str]) -> tuple[list[Record], list[str], Units]:
    units = Units(ctx)
    names, errors = resolve_names(ctx, args, units)
    found = units.get_many(names)
    records = []
    for name in names:
        record = found[name]
        if record is None:
            errors.append(f"unit {name} does not exist")
        else:
            records.append(record)
    return records, errors, units


def cmd_stop_unload(ctx: Context, args: argparse.Namespace) -> int:
    command = args.command
    target = TARGET[command]
    records, errors, _ = _existing(ctx, args.units)
    if errors:
        return report(ctx, errors)
    for record in records:
        problem = check_transition(
            DesiredState(record["desiredState"]), DesiredState(target), name=record["name"], command=command
        )
        if problem:
            errors.append(problem)
    if errors:
        return report(ctx, errors)
    change = [r for r in records if r["desiredState"] != target]
    failed = _set_desired(ctx, [r["name"] for r in change], target)
    errors = _messages(failed)
    for record in change:
        if is_global(record) and record["name"] not in failed:
            ctx.print(f"Triggered global unit {record['name']} {command}")
    local = [r for r in records if not is_global(r) and r["name"] not in failed]
    attempts = _block_attempts(args)
    if attempts is None:
        changed = {r["name"] for r in change}  # by name: comparing records is slow with 1,000s
        for record in local:
            if record["name"] in changed:
                ctx.print(f"Triggered unit {record['name']} {command}")
        return report(ctx, errors)
    errors += Waiter(ctx, attempts).wait_units([Goal(r["name"], target) for r in local], command)
    return report(ctx, _timeouts(errors))


# -- destroy ----------------------------------------------------------------------------------


def cmd_destroy(ctx: Context, args: argparse.Namespace) -> int:
    units = Units(ctx)
    names, errors = resolve_names(ctx, args.units, units)
    if errors:
        return report(ctx, errors)
    destroyed, failures = ctx.cluster.destroy_units(names) if names else ([], {})
    gone = set(destroyed)
    for name in names:
        if name in failures:
            errors.append(f"{name}: {failures[name]}")
        elif name in gone:
            ctx.print(f"Destroyed {name}")
        else:
            ctx.warn(f"Unit {name} does not exist; nothing to destroy")
    attempts = _block_attempts(args)
    if attempts is not None and destroyed:
        errors += _wait_unloaded(ctx, destroyed, attempts)
    return report(ctx, errors)


def _wait_unloaded(ctx: Context, names: list[str], attempts: int) -> list[str]:
    """After destroy: wait until no machine reports the units any more (their agents
    have unloaded them), so a unit of the same name can be submitted at once."""
    waiter = Waiter(ctx, attempts)
    wanted = set(names)
    remaining: dict[str, list[str]] = {}

    def gone(states: list[Record]) -> bool:
        remaining.clear()
        for state in states:
            if state["name"] in wanted:
                remaining.setdefault(state["name"], []).append(state["machineID"])
        return not remaining

    rounds = waiter.rounds(names[0] if len(names) == 1 else None)
    while True:
        states = rounds.states()  # after each change (a long-poll), or polled from an older fleetd
        if gone(states):
            waiter.done()
            return []
        if waiter.expired():
            waiter.done()
            return [
                f"timed out waiting for unit {name} to be unloaded from "
                + ", ".join(waiter.legend(m) for m in sorted(machines))
                for name, machines in sorted(remaining.items())
            ]
        waiter.show(
            f"Waiting for {len(remaining)} destroyed units to be unloaded; "
            f"{len(names) - len(remaining)}/{len(names)} done"
        )


# -- restart ----------------------------------------------------------------------------------


def cmd_restart(ctx: Context, args: argparse.Namespace) -> int:
    records, errors, _ = _existing(ctx, args.units)
    for record in records:
        if record["desiredState"] == "inactive":
            errors.append(
                f"cannot restart {record['name']}: it is not loaded (desired state inactive); use fleetctl start"
            )
    if errors:
        return report(ctx, errors)
    cluster = ctx.cluster
    attempts = int(args.block_attempts or 0)
    running = [r for r in records if r["desiredState"] == "launched"]
    waiter = Waiter(ctx, attempts)
    # where each running global unit is active now: those machines must stop it, then
    # start it again (an agent that never sees it stopped would not restart it)
    was_on: dict[str, set[str]] = {}
    for record in running:
        if is_global(record):
            was_on[record["name"]] = {s["machineID"] for s in cluster.states(unit=record["name"]) if is_active(s)}
    errors += _messages(_set_desired(ctx, [r["name"] for r in running], "loaded"))
    if errors:
        return report(ctx, errors)
    for name, machines in was_on.items():

        def stopped(states: list[Record], machines: set[str] = machines) -> bool:
            return not any(is_active(s) for s in states if s["machineID"] in machines)

        if waiter.wait_global(name, "stopped", stopped) is None:
            errors.append(f"timed out waiting for global unit {name} to stop on every machine")
    local = [r for r in running if not is_global(r)]
    errors += waiter.wait_units([Goal(r["name"], "loaded") for r in local], "stop")
    if errors:
        return report(ctx, _timeouts(errors))
    errors += _messages(_set_desired(ctx, [r["name"] for r in records], "launched"))
    if errors:
        return report(ctx, errors)
    no_block = getattr(args, "no_block", False)
    for record in records:
        name = record["name"]
        if not is_global(record):
            continue
        if no_block:
            ctx.print(f"Triggered global unit {name} start")
            continue
        expected = was_on.get(name, set())
        if not expected:
            ctx.print(f"Triggered global unit {name} start")  # it ran nowhere: nothing to wait for
            continue

        def started(states: list[Record], expected: set[str] = expected) -> bool:
            return expected <= {s["machineID"] for s in states if is_active(s)}

        states = waiter.wait_global(name, "running", started)
        if states is None:
            errors.append(f"timed out waiting for global unit {name} to run again on every machine")
            continue
        for state in sorted(states, key=lambda s: s["machineID"]):
            if is_active(state):
                ctx.print(f"Unit {name} launched on {waiter.legend(state['machineID'])}")
    local = [r for r in records if not is_global(r)]
    if no_block:
        for record in local:
            ctx.print(f"Triggered unit {record['name']} start")
        return report(ctx, errors)
    errors += waiter.wait_units([Goal(r["name"], "launched") for r in local], "start")
    return report(ctx, _timeouts(errors))


# -- cat --------------------------------------------------------------------------------------


def cmd_cat(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "revision", None) is not None:
        from fleetctl.cmd_revisions import cat_revision

        return cat_revision(ctx, args.units, args.revision)
    units = Units(ctx)
    names, errors = resolve_names(ctx, args.units, units)
    found = units.get_many(names)
    first = True
    for name in names:
        record = found[name]
        if record is None:
            errors.append(f"unit {name} not found")
            continue
        if not first:
            ctx.out.write("\n")
        first = False
        ctx.out.write(file_of(record).serialize())
    ctx.out.flush()
    return report(ctx, errors)


__all__ = [
    "Failed",
    "Units",
    "cmd_cat",
    "cmd_destroy",
    "cmd_restart",
    "cmd_stop_unload",
    "cmd_submit_load_start",
    "plan_units",
    "report",
    "resolve_names",
]
