"""What a request to create, replace or re-target a unit does, decided in one place.

Two writers change units: fleetd's API (``PUT /fleet/v1/units/<name>``) and fleetctl's
``--driver etcd``, which writes the registry itself. Both must accept and refuse exactly
the same requests with the same messages, so the rules live here and each writer only does
its I/O: read the stored unit (and, when :func:`template_to_read` says so, its template),
ask :func:`decide`, carry out the :class:`Decision`, and start again if the registry says
someone else changed the unit in between. Pure: no I/O.

The rules, in the order they are applied:

1. ``desiredState`` must be one of fleet's three states (:func:`desired_state`).
2. A template (``foo@.service``) can only be ``inactive``.
3. Options, when sent, must form a valid unit; ``[]`` means "no new body", as in fleet.
   A valid unit keeps the contract of docs/units.md: its name passes
   :func:`~fleetd.model.names.validate_unit_name` and its file renders to text that parses
   back to the same options (:meth:`~fleetd.model.unitfile.UnitFile.check`).
4. A unit that does not exist is created: from the options, or for an instance sent
   without options from its template's body; the new state must be reachable from nothing.
5. A unit that exists with a different body is refused unless ``replace`` is asked for.
6. Otherwise only its desired state changes, when the transition is allowed; a stored
   body that breaks the contract (written by an older client) may only be made inactive.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.names import parse_unit_name
from fleetd.model.state import StoredUnit
from fleetd.model.unit import DesiredState, Unit, build_unit, check_transition, instance_from_template
from fleetd.model.unitfile import UnitFile

# How often a writer re-reads and decides again when the unit changed under it before
# giving up with :func:`gave_up`.
MAX_ATTEMPTS = 5


class Refusal(StrEnum):
    """Why a request is refused; the API answers 400, 404, 409 and 503 respectively."""

    INVALID = "invalid"  # the request itself is wrong
    NOT_FOUND = "not-found"  # it names a unit (or template) that does not exist
    CONFLICT = "conflict"  # the unit exists with another body and replace was not asked
    BUSY = "busy"  # the unit kept changing while the request was applied


class SubmitError(ValueError):
    """A refused request: ``kind`` says which rule refused it, the message says why."""

    def __init__(self, kind: Refusal, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


class Action(StrEnum):
    """The one write a decision calls for."""

    CREATE = "create"  # store a new unit; the registry refuses if it appeared meanwhile
    REPLACE = "replace"  # swap the stored body (and set the desired state)
    SET_DESIRED = "set-desired"  # change only the desired state
    NOTHING = "nothing"  # already as asked


@dataclass(frozen=True)
class Submission:
    """A validated request: the unit's name, the desired state, the unit built from the
    request's options (``None``: no new body was sent) and whether ``replace`` was asked."""

    name: str
    desired: DesiredState
    unit: Unit | None
    replace: bool = False
    warnings: tuple[str, ...] = ()
    # no desiredState was sent (fleet's client on submit): ``desired`` is then inactive for a
    # new unit, a replaced unit keeps its desired state, and a mere re-target is refused
    desired_missing: bool = False
    # who asked (kept with a new revision): set by the API or the etcd driver
    origin: str = ""


@dataclass(frozen=True)
class Decision:
    """What to write. ``stored`` is the unit as it should be afterwards; ``is_global``
    (for a create or replace) is what the registry needs to index it; ``warnings`` come
    from building an instance from its template (the request's own are on the submission)."""

    action: Action
    stored: StoredUnit
    is_global: bool = False
    warnings: tuple[str, ...] = ()
    # who asked, kept with a new revision (e.g. "API (fleetctl)", "rollback to 3")
    origin: str = ""


def desired_state(value: Any, *, required: bool = True) -> DesiredState | None:
    """The request's ``desiredState``: one of inactive, loaded, launched; when not
    ``required``, absent (``None`` or ``""``, as fleet's client omits it) is ``None``."""
    if not required and value in (None, ""):
        return None
    if value is None:
        raise SubmitError(Refusal.INVALID, "desiredState is required (inactive, loaded or launched)")
    try:
        return DesiredState(value)
    except (ValueError, TypeError):
        shown = repr(value)
        shown = shown if len(shown) <= 64 else shown[:61] + "..."  # a body may be a megabyte
        raise SubmitError(
            Refusal.INVALID, f"invalid desiredState {shown}: expected inactive, loaded or launched"
        ) from None


def _check(current: DesiredState | None, target: DesiredState, name: str) -> None:
    problem = check_transition(current, target, name=name)
    if problem:
        raise SubmitError(Refusal.INVALID, problem)


def _build(name: str, file: UnitFile) -> tuple[Unit, tuple[str, ...]]:
    try:
        unit, warnings = build_unit(name, file)
    except (UnitFileError, UnitNameError) as exc:
        raise SubmitError(Refusal.INVALID, str(exc)) from None
    return unit, tuple(warnings)


def submission(
    name: str, desired: DesiredState | None, options: object, *, replace: bool = False, origin: str = ""
) -> Submission:
    """Validate a request (rules 2 and 3). ``options`` is the API's list of
    ``{section, name, value}``; ``None`` or ``[]`` means no new body (fleet's own client
    sends ``[]`` that way)."""
    try:
        info = parse_unit_name(name)
    except UnitNameError as exc:
        raise SubmitError(Refusal.INVALID, str(exc)) from None
    missing = desired is None
    target = DesiredState.INACTIVE if desired is None else desired
    if info.is_template and target is not DesiredState.INACTIVE:
        _check(None, target, name)  # "cannot activate template ..."
    if options is None or options == []:
        return Submission(name, target, None, replace, desired_missing=missing, origin=origin)
    if not isinstance(options, list):
        raise SubmitError(Refusal.INVALID, "options must be a list of {section, name, value}")
    try:
        file = UnitFile.from_options(options)
    except UnitFileError as exc:
        raise SubmitError(Refusal.INVALID, f"unit {name}: {exc}") from None
    unit, warnings = _build(name, file)
    return Submission(name, target, unit, replace, warnings, missing, origin)


def template_to_read(request: Submission, existing: StoredUnit | None) -> str | None:
    """The template whose body :func:`decide` needs: only for an instance that does not
    exist and was sent without options. ``None``: no template is needed."""
    if existing is not None or request.unit is not None:
        return None
    info = parse_unit_name(request.name)
    return (info.template or None) if info.is_instance else None


def _from_template(name: str, template: StoredUnit | None) -> tuple[Unit, tuple[str, ...]]:
    """A new unit sent without options: an instance is made from its template."""
    info = parse_unit_name(name)
    if not info.is_instance:
        raise SubmitError(Refusal.NOT_FOUND, f"unit {name} does not exist; send its options to create it")
    template_name = info.template or ""
    if template is None:
        raise SubmitError(
            Refusal.NOT_FOUND,
            f"unit {name} does not exist and neither does its template {template_name}; "
            f"submit {template_name} first or send the instance's options",
        )
    return _build(name, instance_from_template(name, template.file))


def decide(request: Submission, existing: StoredUnit | None, template: StoredUnit | None = None) -> Decision:
    """Rules 4 to 6: what to write, given the unit as stored now (``None``: absent) and,
    when :func:`template_to_read` named one, that template as stored (``None``: absent).
    Raises :class:`SubmitError` for a refusal."""
    name = request.name
    if existing is None:
        target = request.desired  # inactive when not sent, as fleet creates it
        warnings: tuple[str, ...] = ()
        if request.unit is not None:
            unit = request.unit
        else:
            unit, warnings = _from_template(name, template)
        _check(None, target, name)
        stored = StoredUnit(name, unit.file, target, 1)
        return Decision(Action.CREATE, stored, unit.requirements.global_, warnings, request.origin)
    if request.unit is not None and request.unit.file != existing.file:
        if not request.replace:
            raise SubmitError(Refusal.CONFLICT, f"unit {name} already exists with different contents; use --replace")
        target = existing.desired if request.desired_missing else request.desired
        _check(existing.desired, target, name)
        unit = request.unit
        stored = StoredUnit(name, unit.file, target, existing.revision + 1)
        return Decision(Action.REPLACE, stored, unit.requirements.global_, (), request.origin)
    target = request.desired
    if request.desired_missing:
        raise SubmitError(Refusal.CONFLICT, f"unit {name}: must provide desiredState to update existing unit")
    _check(existing.desired, target, name)
    if target is not DesiredState.INACTIVE and (problem := existing.file.problem()):
        raise SubmitError(
            Refusal.INVALID, f"unit {name} as stored cannot run: {problem}; destroy it and submit it again"
        )
    action = Action.NOTHING if existing.desired is target else Action.SET_DESIRED
    return Decision(action, StoredUnit(name, existing.file, target, existing.revision))


def gave_up(name: str) -> SubmitError:
    """The refusal after :data:`MAX_ATTEMPTS` decisions were overtaken by other writers."""
    return SubmitError(Refusal.BUSY, f"unit {name} kept changing while being updated; try again")


__all__ = [
    "MAX_ATTEMPTS",
    "Action",
    "Decision",
    "Refusal",
    "SubmitError",
    "Submission",
    "decide",
    "desired_state",
    "gave_up",
    "submission",
    "template_to_read",
]
