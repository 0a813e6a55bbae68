"""Rolling updates: the record that drives one, and every decision taken on it.

A rolling update replaces the body of a unit's launched instances a few at a time (or of
one plain unit), waits for each replaced instance to be healthy, and stops (reverting
what it changed, unless told not to) when one is not healthy in time. The engine leader
drives it from a record in the registry (:class:`UpdateRecord`): every step it takes is
written there, so a new leader resumes where the last one stopped, and a client that
started the update only follows the record.

Everything here is pure: which instances to replace next (:func:`next_step`), whether an
instance is healthy (:func:`observe`), whether the deadline passed, what to revert. The
engine (``fleetd/engine/updates.py``) reads the record and the instances' states, asks
:func:`next_step`, and writes what it answers in one conditional, fenced transaction.

The health rule: an instance is healthy once its machine has reported it ``active`` in
systemd, running the new body (its published hash is the target's), without a break for
``min_healthy`` seconds. With ``Type=notify`` systemd says ``active`` only after
``READY=1``, so a service that is still starting is not counted. If an instance is not
healthy within ``healthy_deadline`` seconds of its replace, the update stops.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from fleetd.model.history import EventKind, HistoryEvent, event_time, revision_changed
from fleetd.model.names import parse_unit_name
from fleetd.model.requirements import parse_requirements
from fleetd.model.state import StoredUnit, UnitState
from fleetd.model.unit import DesiredState, build_unit
from fleetd.model.unitfile import UnitFile

# defaults and bounds of the parameters (seconds); the bounds keep a hostile or mistyped
# request from parking an update for years or hammering the cluster
DEFAULT_MAX_PARALLEL = 1
DEFAULT_MIN_HEALTHY = 10.0
DEFAULT_HEALTHY_DEADLINE = 300.0
MAX_PARALLEL_LIMIT = 1000
MAX_MIN_HEALTHY = 3600.0
MAX_HEALTHY_DEADLINE = 86400.0
# how many instances one update may name (a record is one etcd value: at most ~1 MiB)
MAX_INSTANCES = 2000
MAX_REASON_CHARS = 1000
MAX_BODIES = 64
# units one step replaces at most: a step is one etcd transaction (at most 128 operations,
# a unit's replace up to five); a larger max_parallel or revert takes several steps
STEP_UNITS = 20

ORIGIN_UPDATE = "update"
ORIGIN_ROLLBACK = "rollback"
ORIGIN_REVERT = "update revert"


class UpdateState(StrEnum):
    """Where an update stands. ``pending``: written by a client, not yet taken up by the
    engine; ``running``: being rolled out; ``reverting``: stopped, the changed instances
    returning to their previous bodies; the rest are final."""

    PENDING = "pending"
    RUNNING = "running"
    REVERTING = "reverting"  # stopped; returning the changed instances, a batch a step
    FINISHED = "finished"
    REVERTED = "reverted"
    FAILED = "failed"  # stopped without revert (--no-auto-revert)

    @property
    def final(self) -> bool:
        return self in (UpdateState.FINISHED, UpdateState.REVERTED, UpdateState.FAILED)


class Phase(StrEnum):
    """One instance's progress: ``pending`` (still on its previous body), ``updating``
    (replaced at ``since``, not yet healthy), ``healthy`` (healthy at ``since``),
    ``reverted`` (returned to its previous body at ``since``)."""

    PENDING = "pending"
    UPDATING = "updating"
    HEALTHY = "healthy"
    REVERTED = "reverted"


@dataclass(frozen=True)
class UpdateParams:
    max_parallel: int = DEFAULT_MAX_PARALLEL
    min_healthy: float = DEFAULT_MIN_HEALTHY
    healthy_deadline: float = DEFAULT_HEALTHY_DEADLINE
    auto_revert: bool = True


@dataclass(frozen=True)
class InstanceProgress:
    """An instance in an update: the revision and body hash it had before (what a revert
    returns it to: the body is in the record's ``bodies``), its phase and since when."""

    previous_revision: int
    previous_hash: str
    phase: Phase = Phase.PENDING
    since: float = 0.0


@dataclass(frozen=True)
class UpdateRecord:
    """One update of ``name`` (a template or a plain unit) to the body ``target``.

    ``instances`` are the units whose body changes (a template's launched instances, or
    the plain unit itself), in the order they are replaced; ``bodies`` holds each previous
    body by hash (instances of one template share theirs). ``template`` is True when
    ``name`` is a template: its own body becomes the target when the update finishes.
    ``kind`` is ``update`` or ``rollback`` (then ``target_revision`` is the revision whose
    body is the target)."""

    name: str
    target: UnitFile
    instances: Mapping[str, InstanceProgress]
    bodies: Mapping[str, UnitFile]
    params: UpdateParams = field(default_factory=UpdateParams)
    template: bool = False
    kind: str = ORIGIN_UPDATE
    target_revision: int | None = None
    state: UpdateState = UpdateState.PENDING
    reason: str = ""
    created: float = 0.0
    changed: float = 0.0
    origin: str = ""

    @property
    def target_hash(self) -> str:
        return self.target.hash()

    def counts(self) -> dict[str, int]:
        """How many instances are in each phase (every phase listed)."""
        found = {str(p): 0 for p in Phase}
        for progress in self.instances.values():
            found[str(progress.phase)] += 1
        return found


class UpdateError(ValueError):
    """A request for an update that cannot be carried out; the message says why."""


class UpdateNotFound(UpdateError):
    """The unit, or the revision to roll back to, does not exist (or is no longer kept)."""


# -- creating one --------------------------------------------------------------------------


def check_params(
    max_parallel: Any = DEFAULT_MAX_PARALLEL,
    min_healthy: Any = DEFAULT_MIN_HEALTHY,
    healthy_deadline: Any = DEFAULT_HEALTHY_DEADLINE,
    auto_revert: Any = True,
) -> UpdateParams:
    """Validated parameters (``UpdateError`` naming the bad one): they come from a client."""
    if isinstance(max_parallel, float) and max_parallel.is_integer() and abs(max_parallel) < 2**53:
        max_parallel = int(max_parallel)  # JSON's 3.0 is a whole number (JSON Schema agrees)
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int):
        raise UpdateError("maxParallel must be a whole number")
    if not 1 <= max_parallel <= MAX_PARALLEL_LIMIT:
        raise UpdateError(f"maxParallel must be between 1 and {MAX_PARALLEL_LIMIT}")
    for label, value, low, high in (
        ("minHealthy", min_healthy, 0.0, MAX_MIN_HEALTHY),
        ("healthyDeadline", healthy_deadline, 0.1, MAX_HEALTHY_DEADLINE),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UpdateError(f"{label} must be a number of seconds")
        if not low <= value <= high:
            raise UpdateError(f"{label} must be between {low:g} and {high:g} seconds")
    if not isinstance(auto_revert, bool):
        raise UpdateError("autoRevert must be true or false")
    # a deadline shorter than min_healthy is allowed (each bound alone is checked): such an
    # update stops at its first instance, which is what was asked
    return UpdateParams(max_parallel, float(min_healthy), float(healthy_deadline), auto_revert)


@dataclass(frozen=True)
class Current:
    """A unit as it is when an update is asked for: what :func:`new_update` needs of it."""

    name: str
    file: UnitFile
    revision: int
    launched: bool
    is_global: bool = False


def current_of(unit: StoredUnit) -> Current:
    """What an update needs of a stored unit. A global unit is one whose body says
    ``Global=true`` (for a template, each instance's own reading of it)."""
    try:
        is_global = parse_requirements(unit.file, unit.name)[0].global_
    except ValueError:
        is_global = False  # unreadable [X-Fleet]: the engine reports it; it is no global unit
    return Current(unit.name, unit.file, unit.revision, unit.desired is DesiredState.LAUNCHED, is_global)


def check_target(name: str, target: UnitFile) -> None:
    """The target body must be one the unit could be submitted with (``UpdateError``)."""
    try:
        unit, _ = build_unit(name, target)
    except ValueError as exc:
        raise UpdateError(f"the new body of {name}: {exc}") from None
    if unit.requirements.global_:
        raise UpdateError(f"the new body of {name} makes it a global unit: a rolling update cannot do that")


def new_update(
    name: str,
    target: UnitFile,
    named: Current | None,
    instances: Iterable[Current],
    params: UpdateParams,
    now: float,
    *,
    kind: str = ORIGIN_UPDATE,
    target_revision: int | None = None,
    origin: str = "",
) -> UpdateRecord:
    """The record of a new update of ``name`` (``named``: the unit itself, None when it
    does not exist) to ``target``; ``instances``: a template's instances (ignored for a
    plain unit). Refuses (``UpdateError``) what a rolling update cannot do: a global unit
    (it runs on every machine at once: not supported yet), a unit that does not exist, a
    plain unit that is not launched (there is nothing to watch become healthy), an
    instance (update its template), the body it already has."""
    info = parse_unit_name(name)
    if info.is_instance:
        raise UpdateError(f"{name} is an instance of {info.template}: update the template, {info.template}")
    instances = list(instances)
    # a template need not be stored: instances started from a local template file are
    # units of their own (the template is then left absent when the update finishes)
    if named is None and not (info.is_template and instances):
        raise UpdateNotFound(f"unit {name} not found")
    if (named is not None and named.is_global) or any(i.is_global for i in instances):
        raise UpdateError(f"a rolling update of a global unit ({name}) is not supported yet")
    if info.is_template:
        chosen = sorted((i for i in instances if i.launched), key=lambda i: _instance_key(i.name))
    else:
        assert named is not None
        if not named.launched:
            raise UpdateError(f"unit {name} is not launched: a rolling update needs running instances")
        chosen = [named]
    if len(chosen) > MAX_INSTANCES:
        raise UpdateError(f"{len(chosen)} instances: at most {MAX_INSTANCES} in one update")
    same = named is None or named.file.hash() == target.hash()
    if same and all(i.file.hash() == target.hash() for i in chosen):
        raise UpdateError(f"{name} already has this body")
    bodies: dict[str, UnitFile] = {}
    progress: dict[str, InstanceProgress] = {}
    for instance in chosen:
        digest = instance.file.hash()
        bodies.setdefault(digest, instance.file)
        progress[instance.name] = InstanceProgress(instance.revision, digest)
    if len(bodies) > MAX_BODIES:
        raise UpdateError(f"the instances have {len(bodies)} different bodies: at most {MAX_BODIES}")
    return UpdateRecord(
        name,
        target,
        progress,
        bodies,
        params,
        info.is_template,
        kind,
        target_revision,
        UpdateState.PENDING,
        "",
        now,
        now,
        origin[:200],
    )


def _instance_key(name: str) -> tuple[int, int, str]:
    """web@2 before web@10: instances in the order people number them."""
    instance = name.split("@", 1)[1].rsplit(".", 1)[0] if "@" in name else name
    return (0, int(instance), name) if instance.isdigit() and len(instance) < 18 else (1, 0, name)


# -- health --------------------------------------------------------------------------------


def observe(
    record: UpdateRecord, states: Mapping[str, Sequence[UnitState]], active_since: Mapping[str, float], now: float
) -> dict[str, float]:
    """Since when each instance being updated has been seen healthy-so-far (active in
    systemd on the target body), without a break; an instance not seen so now is left out
    (its clock starts again when it is). ``active_since`` is the previous observation,
    kept by the caller between calls; ``states`` an instance's published states."""
    target = record.target_hash
    seen: dict[str, float] = {}
    for name, progress in record.instances.items():
        if progress.phase is not Phase.UPDATING:
            continue
        here = states.get(name, ())
        if here and all(s.active_state == "active" and s.hash == target for s in here):
            seen[name] = active_since.get(name, now)
    return seen


def describe(states: Sequence[UnitState], target_hash: str) -> str:
    """What an instance was last seen doing, for the reason an update stopped."""
    if not states:
        return "no machine reports it"
    parts = []
    for s in states:
        body = "the new body" if s.hash == target_hash else f"body {s.hash[:7]}"
        parts.append(f"{s.active_state}/{s.sub_state} on {s.machine_id[:8]} with {body}")
    return "; ".join(parts)


# -- the next step -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What to write: the record as it becomes (None: nothing changes), the units whose
    body to replace with the given body (their history events follow once written,
    since only the write knows their revision), the events to record, and the origin of
    those replaces."""

    record: UpdateRecord | None = None
    replaces: Mapping[str, UnitFile] = field(default_factory=dict)
    origin: str = ""
    events: Sequence[HistoryEvent] = ()


def next_step(
    record: UpdateRecord,
    active_since: Mapping[str, float],
    now: float,
    states: Mapping[str, Sequence[UnitState]] | None = None,
) -> Step:
    """The engine's next move on ``record`` at ``now``; ``active_since`` from
    :func:`observe`, ``states`` only to say why an update stopped."""
    if record.state.final:
        return Step()
    events: list[HistoryEvent] = []
    if record.state is UpdateState.PENDING:
        record = replace(record, state=UpdateState.RUNNING, changed=now)
        events.append(_event(record, EventKind.UPDATE_STARTED, now, _started_reason(record)))
    if record.state is UpdateState.REVERTING:
        return _revert(record, now, events)
    params = record.params
    instances = dict(record.instances)
    for name, progress in instances.items():
        since = active_since.get(name)
        if progress.phase is Phase.UPDATING and since is not None and now - since >= params.min_healthy:
            instances[name] = replace(progress, phase=Phase.HEALTHY, since=now)
    late = [
        name for name, p in instances.items() if p.phase is Phase.UPDATING and now - p.since > params.healthy_deadline
    ]
    if late:
        name = late[0]
        seen = describe((states or {}).get(name, ()), record.target_hash)
        reason = f"{name} was not healthy within {params.healthy_deadline:g}s of its replace ({seen})"
        return _stop(replace(record, instances=instances), reason[:MAX_REASON_CHARS], now, events)
    updating = sum(1 for p in instances.values() if p.phase is Phase.UPDATING)
    pending = [name for name, p in instances.items() if p.phase is Phase.PENDING]
    if not pending and updating == 0:
        done = replace(record, instances=instances, state=UpdateState.FINISHED, changed=now)
        events.append(_event(done, EventKind.UPDATE_FINISHED, now, f"{len(instances)} instances on the new body"))
        replaces = {record.name: record.target} if record.template else {}
        return Step(done, replaces, record.kind, events)
    chosen = pending[: min(STEP_UNITS, max(0, params.max_parallel - updating))]
    for name in chosen:
        instances[name] = replace(instances[name], phase=Phase.UPDATING, since=now)
    changed = instances != dict(record.instances) or bool(events)
    if not changed:
        return Step()
    new = replace(record, instances=instances, changed=now)
    return Step(new, dict.fromkeys(chosen, record.target), record.kind, events)


def _stop(record: UpdateRecord, reason: str, now: float, events: list[HistoryEvent]) -> Step:
    """Stop the update: revert every instance it changed to its previous body (the one
    known to work; as fast as steps allow, not max_parallel at a time), or leave them."""
    if not record.params.auto_revert:
        failed = replace(record, state=UpdateState.FAILED, reason=reason, changed=now)
        events.append(_event(failed, EventKind.UPDATE_FINISHED, now, f"stopped without revert: {reason}"))
        return Step(failed, {}, record.kind, events)
    return _revert(replace(record, state=UpdateState.REVERTING, reason=reason, changed=now), now, events)


def _revert(record: UpdateRecord, now: float, events: list[HistoryEvent]) -> Step:
    """Return up to :data:`STEP_UNITS` changed instances to their previous bodies; once
    none is left the update is ``reverted``."""
    instances = dict(record.instances)
    replaces: dict[str, UnitFile] = {}
    for name, progress in instances.items():
        if len(replaces) == STEP_UNITS:
            break
        if progress.phase in (Phase.UPDATING, Phase.HEALTHY):
            replaces[name] = record.bodies[progress.previous_hash]
            instances[name] = replace(progress, phase=Phase.REVERTED, since=now)
    left = any(p.phase in (Phase.UPDATING, Phase.HEALTHY) for p in instances.values())
    state = UpdateState.REVERTING if left else UpdateState.REVERTED
    reverted = replace(record, instances=instances, state=state, changed=now)
    if not left:
        count = sum(1 for p in instances.values() if p.phase is Phase.REVERTED)
        events.append(_event(reverted, EventKind.UPDATE_REVERTED, now, f"{count} instances reverted: {record.reason}"))
    return Step(reverted, replaces, ORIGIN_REVERT, events)


def _started_reason(record: UpdateRecord) -> str:
    what = f"rollback to revision {record.target_revision}" if record.kind == ORIGIN_ROLLBACK else "update"
    p = record.params
    return (
        f"{what} of {len(record.instances)} instances to body {record.target.short_hash} "
        f"(max parallel {p.max_parallel}, min healthy {p.min_healthy:g}s, deadline {p.healthy_deadline:g}s)"
    )


def _event(record: UpdateRecord, kind: EventKind, now: float, reason: str) -> HistoryEvent:
    return HistoryEvent(now, kind, record.name, "", reason[:MAX_REASON_CHARS], record.target_revision)


def replaced_events(revisions: Mapping[str, int], origin: str, now: float) -> list[HistoryEvent]:
    """``revision-changed`` for each unit an update step replaced, with its new revision."""
    return [revision_changed(name, number, origin, now) for name, number in revisions.items()]


# -- the stored form -----------------------------------------------------------------------


def encode_update(record: UpdateRecord) -> dict[str, Any]:
    p = record.params
    return {
        "name": record.name,
        "kind": record.kind,
        "template": record.template,
        "target": record.target.to_options(),
        "targetRevision": record.target_revision,
        "params": {
            "maxParallel": p.max_parallel,
            "minHealthy": p.min_healthy,
            "healthyDeadline": p.healthy_deadline,
            "autoRevert": p.auto_revert,
        },
        "bodies": {digest: body.to_options() for digest, body in record.bodies.items()},
        "instances": [
            {
                "name": name,
                "previousRevision": i.previous_revision,
                "previousHash": i.previous_hash,
                "phase": str(i.phase),
                "since": i.since,
            }
            for name, i in record.instances.items()
        ],
        "state": str(record.state),
        "reason": record.reason,
        "created": record.created,
        "changed": record.changed,
        "origin": record.origin,
    }


def _number(data: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number")
    return float(value)


def _text(data: Mapping[str, Any], key: str, limit: int, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{key} must be a string of at most {limit} characters")
    return value


def decode_update(data: Any) -> UpdateRecord:
    """An update record read back: ``ValueError`` naming what is wrong with one this code
    did not write (the engine reports it and leaves it alone)."""
    if not isinstance(data, dict):
        raise ValueError("an update record must be a JSON object")
    name = _text(data, "name", 256)
    info = parse_unit_name(name)  # UnitNameError is a ValueError
    kind = data.get("kind")
    if kind not in (ORIGIN_UPDATE, ORIGIN_ROLLBACK):
        raise ValueError(f"kind must be {ORIGIN_UPDATE!r} or {ORIGIN_ROLLBACK!r}")
    template = data.get("template")
    if template is not info.is_template:
        raise ValueError("template must say whether the name is a template's")
    target = _file(data.get("target"), "target")
    target_revision = data.get("targetRevision")
    if target_revision is not None and (
        isinstance(target_revision, bool) or not isinstance(target_revision, int) or target_revision < 1
    ):
        raise ValueError("targetRevision must be null or a whole number of at least 1")
    raw = data.get("params")
    if not isinstance(raw, dict):
        raise ValueError("params must be an object")
    try:
        params = check_params(
            raw.get("maxParallel"), raw.get("minHealthy"), raw.get("healthyDeadline"), raw.get("autoRevert")
        )
    except UpdateError as exc:
        raise ValueError(f"params: {exc}") from None
    raw_bodies = data.get("bodies")
    if not isinstance(raw_bodies, dict) or len(raw_bodies) > MAX_BODIES:
        raise ValueError(f"bodies must be an object of at most {MAX_BODIES} bodies")
    bodies = {}
    for digest, options in raw_bodies.items():
        body = _file(options, f"body {str(digest)[:40]}")
        if body.hash() != digest:
            raise ValueError(f"body {str(digest)[:40]} does not have that hash")
        bodies[digest] = body
    raw_instances = data.get("instances")
    if not isinstance(raw_instances, list) or len(raw_instances) > MAX_INSTANCES:
        raise ValueError(f"instances must be a list of at most {MAX_INSTANCES}")
    instances: dict[str, InstanceProgress] = {}
    for index, item in enumerate(raw_instances):
        if not isinstance(item, dict):
            raise ValueError(f"instance {index} must be an object")
        instance = _text(item, "name", 256)
        got = parse_unit_name(instance)
        expected = name if not info.is_template else None
        if (expected and instance != expected) or (info.is_template and got.template != name):
            raise ValueError(f"instance {index} ({instance[:64]!r}) is not an instance of {name}")
        if instance in instances:
            raise ValueError(f"instance {instance} is listed twice")
        previous = item.get("previousRevision")
        if isinstance(previous, bool) or not isinstance(previous, int) or previous < 0:
            raise ValueError(f"instance {instance}: previousRevision must be a whole number")
        digest = _text(item, "previousHash", 40)
        if digest not in bodies:
            raise ValueError(f"instance {instance}: its previous body is not in bodies")
        try:
            phase = Phase(item.get("phase"))
        except ValueError:
            raise ValueError(f"instance {instance}: unknown phase") from None
        instances[instance] = InstanceProgress(previous, digest, phase, _number(item, "since"))
    try:
        state = UpdateState(data.get("state"))
    except ValueError:
        raise ValueError("unknown state") from None
    return UpdateRecord(
        name,
        target,
        instances,
        bodies,
        params,
        info.is_template,
        kind,
        target_revision,
        state,
        _text(data, "reason", MAX_REASON_CHARS),
        _number(data, "created"),
        _number(data, "changed"),
        _text(data, "origin", 200),
    )


def _file(options: Any, what: str) -> UnitFile:
    if not isinstance(options, list):
        raise ValueError(f"{what} must be a list of options")
    body = UnitFile.from_options(options)  # UnitFileError is a ValueError
    if not body.options:
        raise ValueError(f"{what} is empty")
    return body


def update_json(record: UpdateRecord) -> dict[str, Any]:
    """The API's form: the stored one with the target's hash and the phase counts, the
    times in RFC 3339 beside the numbers (people read one, programs the other)."""
    body = encode_update(record)
    body["targetHash"] = record.target_hash
    body["counts"] = record.counts()
    body["createdAt"] = event_time(record.created)
    body["changedAt"] = event_time(record.changed)
    return body


__all__ = [
    "ORIGIN_REVERT",
    "ORIGIN_ROLLBACK",
    "ORIGIN_UPDATE",
    "Current",
    "InstanceProgress",
    "Phase",
    "Step",
    "UpdateError",
    "UpdateNotFound",
    "UpdateParams",
    "UpdateRecord",
    "UpdateState",
    "check_params",
    "check_target",
    "current_of",
    "decode_update",
    "describe",
    "encode_update",
    "new_update",
    "next_step",
    "observe",
    "replaced_events",
    "update_json",
]
