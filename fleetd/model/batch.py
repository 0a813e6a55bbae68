"""Many units in one request: the batch form of ``PUT /units/<name>`` and ``DELETE``.

A batch names units to create, replace or re-target (each exactly as the body of
``PUT /fleet/v1/units/<name>``) and units to destroy. It is all or nothing *as decided*:
every entry is validated (:func:`parse_batch`) and, against the units as stored, decided
(:func:`decide_all`) before anything is written, and a single problem refuses the whole
batch with every problem named per unit (:class:`BatchError`). Only then does the
registry write, in as few transactions as etcd's limits allow (see
:meth:`fleetd.registry.registry.Registry.submit_many` for what that leaves atomic).

The rules for one unit are :mod:`fleetd.model.submit`'s, unchanged: a batch of one is the
same request as one PUT. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetd.model.errors import UnitNameError
from fleetd.model.limits import MAX_UNIT_BYTES, options_size, too_large
from fleetd.model.names import parse_unit_name
from fleetd.model.state import StoredUnit
from fleetd.model.submit import (
    Action,
    Decision,
    Refusal,
    Submission,
    SubmitError,
    decide,
    desired_state,
    submission,
    template_to_read,
)

# What the answer says was done to each unit: the decision's action, or a destroy's outcome.
ACTION_WORDS = {
    Action.CREATE: "created",
    Action.REPLACE: "replaced",
    Action.SET_DESIRED: "changed",
    Action.NOTHING: "unchanged",
}
DESTROYED = "destroyed"
ABSENT = "absent"  # asked to destroy a unit that does not exist: nothing to do, not an error

# When problems of several kinds refuse a batch, the answer is the first of these kinds
# present: a request that is wrong in itself is reported before one that lost a race.
_SEVERITY = (Refusal.INVALID, Refusal.NOT_FOUND, Refusal.CONFLICT, Refusal.BUSY)
# how many problems the summary message spells out (all are in ``problems``)
_SUMMARY_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """Why one entry of a batch is refused. ``name`` is the unit's name as sent, or
    ``units[i]``/``destroy[i]`` when the entry has no usable name."""

    name: str
    kind: Refusal
    message: str


class BatchError(SubmitError):
    """A refused batch, with every problem per unit.

    ``written`` names units already written when the refusal came: empty unless another
    writer changed some of the batch's units between its transactions and a unit decided
    again was then refused (what a batch larger than one transaction can meet).
    """

    def __init__(self, problems: Sequence[Problem], written: Sequence[str] = ()) -> None:
        kinds = {p.kind for p in problems}
        kind = next((k for k in _SEVERITY if k in kinds), Refusal.INVALID)
        shown = "; ".join(f"{p.name}: {p.message}" for p in problems[:_SUMMARY_PROBLEMS])
        more = len(problems) - _SUMMARY_PROBLEMS
        if more > 0:
            shown += f"; and {more} more"
        done = (
            f" ({len(written)} units were already written before the refusal)" if written else " (nothing was changed)"
        )
        super().__init__(kind, f"batch refused, {len(problems)} problem{'s' * (len(problems) != 1)}{done}: {shown}")
        self.problems = tuple(problems)
        self.written = tuple(written)


@dataclass(frozen=True)
class Batch:
    """A validated batch: the units to write (in the order sent) and the names to destroy."""

    submissions: tuple[Submission, ...] = ()
    destroy: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.submissions) + len(self.destroy)


def _entry_name(entry: Any) -> str:
    """A unit entry's ``name``, or a ``destroy`` entry (a name itself), checked."""
    name = entry.get("name") if isinstance(entry, dict) else entry
    if not isinstance(name, str) or not name:
        raise SubmitError(Refusal.INVALID, "needs a unit name (a non-empty string)")
    try:
        parse_unit_name(name)
    except UnitNameError as exc:
        raise SubmitError(Refusal.INVALID, str(exc)) from None
    return name


def _unit_entry(entry: Any, replace: bool) -> Submission:
    """One entry of ``units``: a PUT body with its ``name``, checked as PUT checks it."""
    if not isinstance(entry, dict):
        raise SubmitError(Refusal.INVALID, "must be an object {name, desiredState, options}")
    name = _entry_name(entry)
    options = entry.get("options")
    if isinstance(options, list):  # fleet's client leaves out an empty value ("omitempty")
        options = [{**o, "value": ""} if isinstance(o, dict) and "value" not in o else o for o in options]
        problem = too_large(options_size(options), MAX_UNIT_BYTES, f"unit {name}")
        if problem:
            raise SubmitError(Refusal.INVALID, problem)
    target = desired_state(entry.get("desiredState"), required=False)
    return submission(name, target, options, replace=replace)


def parse_batch(body: Any) -> Batch:
    """A batch body ``{"units": [...], "destroy": [...], "replace": bool}`` validated
    entirely: raises :class:`BatchError` naming every entry that is wrong (invalid names,
    options, templates asked to run, desired states, units over the size limit, a name
    given twice), else returns the batch. Fields other than these are ignored."""
    if not isinstance(body, dict):
        raise BatchError([Problem("body", Refusal.INVALID, 'must be a JSON object {"units": [...], "destroy": [...]}')])
    problems: list[Problem] = []
    replace = body.get("replace", False)
    if replace is None:
        replace = False
    if not isinstance(replace, bool):
        problems.append(Problem("replace", Refusal.INVALID, "must be true or false"))
        replace = False
    units = body.get("units")
    destroy = body.get("destroy")
    for field, value in (("units", units), ("destroy", destroy)):
        if value is not None and not isinstance(value, list):
            problems.append(Problem(field, Refusal.INVALID, "must be a list"))
    submissions: list[Submission] = []
    names: list[str] = []
    seen: dict[str, str] = {}

    def once(name: str, label: str) -> bool:
        if name in seen:
            problems.append(Problem(name, Refusal.INVALID, f"named twice ({seen[name]} and {label})"))
            return False
        seen[name] = label
        return True

    for index, entry in enumerate(units if isinstance(units, list) else []):
        label = f"units[{index}]"
        try:
            request = _unit_entry(entry, replace)
        except SubmitError as exc:
            name = entry.get("name") if isinstance(entry, dict) else None
            shown = name if isinstance(name, str) and name and len(name) <= 256 else label
            problems.append(Problem(shown, exc.kind, exc.message))
            continue
        if once(request.name, label):
            submissions.append(request)
    for index, entry in enumerate(destroy if isinstance(destroy, list) else []):
        label = f"destroy[{index}]"
        try:
            if not isinstance(entry, str):
                raise SubmitError(Refusal.INVALID, "must be a unit name (a string)")
            name = _entry_name(entry)
        except SubmitError as exc:
            problems.append(Problem(label, exc.kind, exc.message))
            continue
        if once(name, label):
            names.append(name)
    if problems:
        raise BatchError(problems)
    return Batch(tuple(submissions), tuple(names))


def templates_to_read(requests: Sequence[Submission], existing: Mapping[str, StoredUnit | None]) -> set[str]:
    """The templates :func:`decide_all` needs: those of new instances sent without options."""
    wanted = (template_to_read(r, existing.get(r.name)) for r in requests)
    return {name for name in wanted if name}


def decide_all(
    requests: Sequence[Submission],
    existing: Mapping[str, StoredUnit | None],
    templates: Mapping[str, StoredUnit | None] | None = None,
    unreadable: Mapping[str, str] | None = None,
) -> list[Decision]:
    """:func:`~fleetd.model.submit.decide` for every request against the units as stored
    (``existing``: name -> unit, absent or ``None`` when there is none) and the templates
    :func:`templates_to_read` named. ``unreadable``: name -> why, for stored records that
    cannot be read (such a unit can only be destroyed). Raises :class:`BatchError` with
    every refusal when any is refused; else the decisions, in the requests' order."""
    decisions: list[Decision] = []
    problems: list[Problem] = []
    templates = templates or {}
    unreadable = unreadable or {}
    for request in requests:
        if request.name in unreadable:
            reason = unreadable[request.name]
            problems.append(Problem(request.name, Refusal.CONFLICT, f"{reason}; destroy the unit and submit it again"))
            continue
        current = existing.get(request.name)
        wanted = template_to_read(request, current)
        try:
            decisions.append(decide(request, current, templates.get(wanted) if wanted else None))
        except SubmitError as exc:
            problems.append(Problem(request.name, exc.kind, exc.message))
    if problems:
        raise BatchError(problems)
    return decisions


__all__ = [
    "ABSENT",
    "ACTION_WORDS",
    "DESTROYED",
    "Batch",
    "BatchError",
    "Problem",
    "decide_all",
    "parse_batch",
    "templates_to_read",
]
