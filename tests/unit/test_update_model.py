"""Rolling updates, the pure part: the record, health, the next step, revert, storage."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fleetd.model.history import EventKind
from fleetd.model.state import UnitState
from fleetd.model.unitfile import parse_unit_file
from fleetd.model.update import (
    ORIGIN_REVERT,
    STEP_UNITS,
    Current,
    Phase,
    UpdateError,
    UpdateParams,
    UpdateState,
    check_params,
    decode_update,
    encode_update,
    new_update,
    next_step,
    observe,
    update_json,
)

OLD = parse_unit_file("[Service]\nExecStart=/bin/sleep 1000\n")
NEW = parse_unit_file("[Service]\nExecStart=/bin/sleep 2000\n")


def template_update(count: int = 3, **params: object) -> object:
    named = Current("web@.service", OLD, 1, False)
    instances = [Current(f"web@{i}.service", OLD, 1, True) for i in range(count, 0, -1)]
    instances.append(Current("web@x.service", OLD, 2, False))  # not launched: left alone
    return new_update("web@.service", NEW, named, instances, check_params(**params), 100.0)


def active(name: str, body: object = NEW, state: str = "active") -> list[UnitState]:
    return [UnitState(name, "m" * 32, body.hash(), "loaded", state, "running")]  # type: ignore[attr-defined]


def test_a_template_update_names_its_launched_instances_in_order() -> None:
    record = template_update(12)
    assert list(record.instances)[:3] == ["web@1.service", "web@2.service", "web@3.service"]
    assert "web@10.service" in record.instances and "web@x.service" not in record.instances
    assert record.template and record.state is UpdateState.PENDING
    assert set(record.bodies) == {OLD.hash()}


@pytest.mark.parametrize(
    ("named", "instances", "problem"),
    [
        (None, [], "not found"),
        (Current("web.service", OLD, 1, False), [], "not launched"),
        (Current("web.service", OLD, 1, True, is_global=True), [], "global unit"),
        (Current("web.service", NEW, 1, True), [], "already has this body"),
    ],
)
def test_refused_updates_say_why(named: Current | None, instances: list[Current], problem: str) -> None:
    with pytest.raises(UpdateError, match=problem):
        new_update("web.service", NEW, named, instances, UpdateParams(), 1.0)


def test_an_instance_is_refused_naming_its_template() -> None:
    with pytest.raises(UpdateError, match="web@.service"):
        new_update("web@1.service", NEW, Current("web@1.service", OLD, 1, True), [], UpdateParams(), 1.0)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"max_parallel": 0}, "maxParallel"),
        ({"max_parallel": True}, "maxParallel"),
        ({"max_parallel": 1.5}, "maxParallel"),
        ({"min_healthy": -1}, "minHealthy"),
        ({"min_healthy": float("nan")}, "minHealthy"),
        ({"healthy_deadline": 10**9}, "healthyDeadline"),
        ({"healthy_deadline": "5m"}, "healthyDeadline"),
        ({"auto_revert": "yes"}, "autoRevert"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, object], problem: str) -> None:
    with pytest.raises(UpdateError, match=problem):
        check_params(**params)


def test_at_most_max_parallel_instances_are_replaced_at_once_and_each_waits_to_be_healthy() -> None:
    record = template_update(3, max_parallel=1, min_healthy=10, healthy_deadline=60)
    step = next_step(record, {}, 100.0)
    assert step.record is not None and step.record.state is UpdateState.RUNNING
    assert list(step.replaces) == ["web@1.service"] and step.replaces["web@1.service"] == NEW
    assert [e.event for e in step.events] == [EventKind.UPDATE_STARTED]
    record = step.record
    # nothing more to do while web@1 is not healthy
    assert next_step(record, {}, 105.0).record is None
    seen = observe(record, {"web@1.service": active("web@1.service")}, {}, 105.0)
    assert seen == {"web@1.service": 105.0}
    assert next_step(record, seen, 114.0).record is None  # active for 9 s: not yet
    step = next_step(record, seen, 115.0)
    assert step.record is not None
    assert step.record.instances["web@1.service"].phase is Phase.HEALTHY
    assert list(step.replaces) == ["web@2.service"]


def test_a_break_in_activity_restarts_the_clock() -> None:
    record = next_step(template_update(1, min_healthy=10), {}, 100.0).record
    assert record is not None
    seen = observe(record, {"web@1.service": active("web@1.service")}, {}, 101.0)
    seen = observe(record, {"web@1.service": active("web@1.service", state="activating")}, seen, 105.0)
    assert seen == {}
    seen = observe(record, {"web@1.service": active("web@1.service")}, seen, 106.0)
    assert seen == {"web@1.service": 106.0}
    # the old body running, active, does not count
    assert observe(record, {"web@1.service": active("web@1.service", OLD)}, {}, 106.0) == {}


def test_all_healthy_finishes_and_replaces_the_template_last() -> None:
    record = template_update(2, max_parallel=2, min_healthy=0)
    record = next_step(record, {}, 100.0).record
    assert record is not None
    seen = dict.fromkeys(record.instances, 100.0)
    step = next_step(record, seen, 101.0)
    assert step.record is not None and step.record.state is UpdateState.FINISHED
    assert step.replaces == {"web@.service": NEW}
    assert [e.event for e in step.events] == [EventKind.UPDATE_FINISHED]
    assert next_step(step.record, seen, 102.0).record is None  # final


def test_a_late_instance_stops_the_update_and_reverts_what_was_changed() -> None:
    record = template_update(3, max_parallel=2, min_healthy=1, healthy_deadline=30)
    record = next_step(record, {}, 100.0).record
    assert record is not None
    states = {"web@1.service": active("web@1.service", state="failed")}
    step = next_step(record, {}, 131.0, states)
    assert step.record is not None and step.record.state is UpdateState.REVERTED
    assert step.replaces == {"web@1.service": OLD, "web@2.service": OLD}
    assert step.origin == ORIGIN_REVERT
    assert "web@1.service was not healthy within 30s" in step.record.reason
    assert "failed/running" in step.record.reason
    assert step.record.instances["web@3.service"].phase is Phase.PENDING
    assert [e.event for e in step.events] == [EventKind.UPDATE_REVERTED]


def test_without_auto_revert_a_late_instance_fails_the_update_and_changes_nothing() -> None:
    record = next_step(template_update(1, healthy_deadline=30, auto_revert=False), {}, 100.0).record
    assert record is not None
    step = next_step(record, {}, 131.0)
    assert step.record is not None and step.record.state is UpdateState.FAILED and step.replaces == {}


def test_a_record_survives_storage_and_a_bad_one_is_refused() -> None:
    record = next_step(template_update(3), {}, 100.0).record
    assert record is not None
    stored = json.loads(json.dumps(encode_update(record)))
    assert decode_update(stored) == record
    assert update_json(record)["counts"]["updating"] == 1
    for change, problem in [
        ({"state": "exploded"}, "state"),
        ({"target": "rm -rf"}, "target"),
        ({"instances": [{"name": "db@1.service"}]}, "not an instance"),
        ({"params": {"maxParallel": -3}}, "params"),
        ({"bodies": {"0" * 40: stored["target"]}}, "hash"),
        ({"template": False}, "template"),
    ]:
        with pytest.raises(ValueError, match=problem):
            decode_update({**stored, **change})
    with pytest.raises(ValueError):
        decode_update([])


def test_a_plain_unit_update_replaces_the_unit_itself() -> None:
    record = new_update("db.service", NEW, Current("db.service", OLD, 4, True), [], UpdateParams(), 1.0)
    assert list(record.instances) == ["db.service"] and not record.template
    assert record.instances["db.service"].previous_revision == 4
    step = next_step(record, {}, 2.0)
    assert step.replaces == {"db.service": NEW}
    done = next_step(
        replace(
            step.record, instances={"db.service": replace(step.record.instances["db.service"], phase=Phase.HEALTHY)}
        ),
        {},
        3.0,
    )  # type: ignore[arg-type]
    assert done.record is not None and done.record.state is UpdateState.FINISHED and done.replaces == {}


def test_large_steps_are_split_so_one_transaction_holds_each() -> None:
    record = template_update(50, max_parallel=50, min_healthy=0, healthy_deadline=30)
    step = next_step(record, {}, 100.0)
    assert len(step.replaces) == STEP_UNITS
    record = step.record
    assert record is not None
    step = next_step(record, {}, 100.5)
    assert len(step.replaces) == STEP_UNITS and step.record is not None
    # the deadline passes: the revert also goes a step's worth at a time
    step = next_step(step.record, {}, 200.0)
    assert step.record is not None and step.record.state is UpdateState.REVERTING
    assert len(step.replaces) == STEP_UNITS and not step.events
    step = next_step(step.record, {}, 200.1)
    assert step.record is not None and step.record.state is UpdateState.REVERTED
    assert len(step.replaces) == 2 * STEP_UNITS - STEP_UNITS
    assert [e.event for e in step.events] == [EventKind.UPDATE_REVERTED]
    assert "40 instances reverted" in step.events[0].reason


def test_a_template_that_is_not_stored_updates_its_instances() -> None:
    instances = [Current("web@1.service", OLD, 1, True)]
    record = new_update("web@.service", NEW, None, instances, UpdateParams(), 1.0)
    assert list(record.instances) == ["web@1.service"] and record.template
    with pytest.raises(UpdateError, match="not found"):
        new_update("web@.service", NEW, None, [], UpdateParams(), 1.0)
