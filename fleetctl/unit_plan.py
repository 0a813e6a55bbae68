"""What submit/load/start/stop/... are about to act on, checked before anything changes.

The commands in :mod:`fleetctl.cmd_units` first turn every argument into a unit: a local
file, an instance of a template (from the cluster or a local file next to the argument),
a glob matched against local files or the cluster, or a unit already registered (whose
body ``--replace`` may swap for the local file). All of that, and the refusals with the
reason for each, lives here, so the commands themselves only write and wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetctl.arguments import (
    dedupe,
    expand_file_globs,
    has_glob,
    local_file_candidates,
    local_unit_path,
    match_names,
    template_path,
    unit_name,
)
from fleetctl.client import Record
from fleetctl.context import Context
from fleetctl.errors import FleetctlError
from fleetctl.output import is_global
from fleetctl.waiting import FEW
from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.names import parse_unit_name
from fleetd.model.unit import DesiredState, build_unit, check_transition
from fleetd.model.unitfile import UnitFile, parse_unit_file

TARGET = {"submit": "inactive", "load": "loaded", "start": "launched", "stop": "loaded", "unload": "inactive"}
# --replace may swap a unit's body only from these desired states (fleet's rule)
REPLACE_FROM = {
    "submit": {"inactive"},
    "load": {"inactive", "loaded"},
    "start": {"inactive", "loaded", "launched"},
}


class Failed(FleetctlError):
    """Errors already printed; just exit 1."""


def report(ctx: Context, errors: Sequence[str]) -> int:
    """Print every error (all of them, not just the first); the exit status they mean."""
    for message in errors:
        ctx.warn(f"Error: {message}")
    return 1 if errors else 0


# -- reading the cluster ---------------------------------------------------------------------


class Units:
    """Registered units, fetched as needed: one GET each for a few, a listing for many."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._all: dict[str, Record] | None = None
        self._one: dict[str, Record | None] = {}

    def all(self) -> dict[str, Record]:
        if self._all is None:
            self._all = {u["name"]: u for u in self.ctx.cluster.units()}
        return self._all

    def names(self) -> list[str]:
        return sorted(self.all())

    def get_many(self, names: Sequence[str]) -> dict[str, Record | None]:
        if self._all is not None or len(names) > FEW:
            everything = self.all()
            return {name: everything.get(name) for name in names}
        missing = [n for n in names if n not in self._one]
        cluster = self.ctx.cluster
        results = cluster.bulk([(lambda n=n: cluster.unit(n)) for n in missing])
        for name, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            self._one[name] = result
        return {name: self._one[name] for name in names}

    def get(self, name: str) -> Record | None:
        return self.get_many([name])[name]


def resolve_names(ctx: Context, args: Sequence[str], units: Units) -> tuple[list[str], list[str]]:
    """Names for stop/unload/destroy/status/cat/journal: plain arguments are mangled,
    globs are matched against the units in the cluster. Returns (names, errors)."""
    names: list[str] = []
    errors: list[str] = []
    for arg in args:
        if has_glob(arg):
            matches = match_names(arg, units.names())
            if not matches:
                errors.append(f"no unit in the cluster matches {arg}")
            names.extend(matches)
            continue
        try:
            names.append(unit_name(arg))
        except FleetctlError as exc:
            errors.append(str(exc))
    return dedupe(names), errors


def file_of(unit: Record) -> UnitFile:
    """The body of a registered unit, from the options the cluster stores."""
    return UnitFile.from_options(unit.get("options") or [])


# -- submit / load / start: checking every argument first --------------------------------------


@dataclass
class Item:
    """One unit argument of submit/load/start, and what the command will do with it."""

    arg: str
    name: str
    existing: Record | None = None
    file: UnitFile | None = None  # body to create the unit with, or to replace it with
    create: bool = False
    replace: bool = False
    is_global: bool = False


def read_unit_file(path: str) -> UnitFile:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise FleetctlError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise FleetctlError(f"cannot read unit file {path}: {exc.strerror or exc}") from None
    try:
        return parse_unit_file(text, path)
    except UnitFileError as exc:
        raise FleetctlError(str(exc)) from None


def validate(ctx: Context, name: str, file: UnitFile, label: str) -> bool:
    """The model's checks of a unit about to be stored; warnings are printed; returns
    whether it is global."""
    try:
        unit, warnings = build_unit(name, file, filename=label)
    except (UnitFileError, UnitNameError) as exc:
        raise FleetctlError(str(exc)) from None
    for warning in warnings:
        ctx.warn(f"WARNING: {warning}")
    return unit.requirements.global_


def _template_body(ctx: Context, item: Item, units: Units) -> tuple[UnitFile, str]:
    """The body of a new instance: its template from the cluster, else from a local file
    next to the argument."""
    info = parse_unit_name(item.name)
    template = info.template or ""
    registered = units.get(template)
    local = template_path(item.arg, template)
    if registered is not None:
        file = file_of(registered)
        if local_unit_path(local) is not None and read_unit_file(local) != file:
            ctx.warn(
                f"WARNING: Unit {template} in registry differs from local template unit file {local}. "
                "Add --replace to override."
            )
        return file, f"{item.name} (from template {template})"
    if local_unit_path(local) is not None:
        return read_unit_file(local), local
    raise FleetctlError(
        f"unable to find unit {item.name}: no file {item.arg}, and its template {template} is neither "
        f"in the cluster nor at {local}"
    )


def _local_body(item: Item) -> tuple[UnitFile, str] | None:
    """The local file to compare a registered unit with: its own file, or for an instance
    the template next to it."""
    path = local_unit_path(item.arg)
    if path is not None:
        return read_unit_file(path), path
    info = parse_unit_name(item.name)
    if info.is_instance:
        local = template_path(item.arg, info.template or "")
        if local_unit_path(local) is not None:
            return read_unit_file(local), local
    return None


def plan_units(ctx: Context, args: Sequence[str], command: str, replace: bool) -> list[Item]:
    """Resolve and check every argument of submit/load/start; raises :class:`Failed`
    (after printing every problem) when any is wrong, before anything changes."""
    target = TARGET[command]
    units = Units(ctx)
    errors: list[str] = []
    items: list[Item] = []
    for arg in expand_file_globs(args):
        if has_glob(arg) and local_unit_path(arg) is None:
            matches = match_names(arg, units.names())
            if not matches:
                errors.append(f"no local unit file or unit in the cluster matches {arg}")
            items.extend(Item(name, name) for name in matches)
            continue
        try:
            items.append(Item(arg, unit_name(arg)))
        except FleetctlError as exc:
            errors.append(str(exc))
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.name not in seen:
            seen.add(item.name)
            unique.append(item)
    items = unique
    existing = units.get_many([item.name for item in items])
    for item in items:
        item.existing = existing[item.name]
        try:
            _plan_one(ctx, item, units, command, target, replace)
        except FleetctlError as exc:
            errors.append(str(exc))
    if errors:
        report(ctx, errors)
        raise Failed("nothing was changed")
    return items


def _plan_one(ctx: Context, item: Item, units: Units, command: str, target: str, replace: bool) -> None:
    if item.existing is None:
        path = local_unit_path(item.arg)
        if path is not None:
            item.file, label = read_unit_file(path), path
        elif parse_unit_name(item.name).is_instance:
            item.file, label = _template_body(ctx, item, units)
        else:
            tried = " or ".join(dict.fromkeys(_candidates(item.arg)))
            raise FleetctlError(
                f"unable to find unit {item.name}: it is not in the cluster and there is no file {tried}"
            )
        item.is_global = validate(ctx, item.name, item.file, label)
        item.create = True
        problem = check_transition(None, DesiredState(target), name=item.name, command=command)
        if problem:
            raise FleetctlError(problem)
        return
    current = item.existing.get("desiredState") or "inactive"
    item.is_global = is_global(item.existing)
    local = _local_body(item)
    if local is not None and local[0] != file_of(item.existing):
        file, label = local
        if not replace:
            ctx.warn(
                f"WARNING: Unit {item.name} in registry differs from local unit file {label}. "
                "Add --replace to override."
            )
        elif current not in REPLACE_FROM[command]:
            ctx.warn(
                f"WARNING: cannot replace unit {item.name} in state {current} with {command}; use the "
                "command for that state (e.g. fleetctl start --replace)"
            )
        else:
            item.is_global = validate(ctx, item.name, file, label)
            item.file = file
            item.replace = True
    if command == "submit":
        return  # submitting a unit that exists changes nothing (but --replace)
    problem = check_transition(DesiredState(current), DesiredState(target), name=item.name, command=command)
    if problem:
        raise FleetctlError(problem)


def _candidates(arg: str) -> list[str]:
    return local_file_candidates(arg)


__all__ = [
    "REPLACE_FROM",
    "TARGET",
    "Failed",
    "Item",
    "Units",
    "file_of",
    "plan_units",
    "read_unit_file",
    "report",
    "resolve_names",
    "validate",
]
