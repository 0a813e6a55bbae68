"""The batch rules (fleetd.model.batch): every entry validated and decided before anything
is written, every problem named per unit."""

from __future__ import annotations

from typing import Any

import pytest

from fleetd.model.batch import BatchError, decide_all, parse_batch, templates_to_read
from fleetd.model.limits import MAX_UNIT_BYTES
from fleetd.model.state import StoredUnit
from fleetd.model.submit import Action, Refusal
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file

BODY = parse_unit_file("[Service]\nExecStart=/bin/sleep infinity\n")
OPTIONS = BODY.to_options()


def problems_of(body: Any) -> dict[str, Refusal]:
    with pytest.raises(BatchError) as refused:
        parse_batch(body)
    return {p.name: p.kind for p in refused.value.problems}


def test_a_valid_batch_keeps_the_order_and_the_replace_flag() -> None:
    batch = parse_batch(
        {
            "units": [
                {"name": "a.service", "desiredState": "launched", "options": OPTIONS},
                {"name": "b@1.service", "desiredState": "loaded"},
                # fleet's client leaves out an empty value
                {"name": "c.service", "options": [{"section": "Service", "name": "ExecStart"}, *OPTIONS]},
            ],
            "destroy": ["d.service"],
            "replace": True,
        }
    )
    assert [s.name for s in batch.submissions] == ["a.service", "b@1.service", "c.service"]
    assert all(s.replace for s in batch.submissions)
    assert batch.submissions[1].unit is None and batch.submissions[2].desired_missing
    assert batch.destroy == ("d.service",) and len(batch) == 4
    assert len(parse_batch({})) == 0


def test_every_problem_is_named_per_unit() -> None:
    huge = [{"section": "Service", "name": "X", "value": "x" * MAX_UNIT_BYTES}]
    problems = problems_of(
        {
            "units": [
                {"name": "ok.service", "desiredState": "launched", "options": OPTIONS},
                {"name": "bad name", "desiredState": "launched", "options": OPTIONS},
                {"name": "t@.service", "desiredState": "launched", "options": OPTIONS},  # a template cannot run
                {"name": "s.service", "desiredState": "running"},
                {"name": "big.service", "options": huge},
                {"name": "ok.service", "desiredState": "loaded"},  # twice
                "not an object",
                {"desiredState": "loaded"},
            ],
            "destroy": ["ok.service", 7],
            "replace": "yes",
        }
    )
    assert problems == {
        "replace": Refusal.INVALID,
        "bad name": Refusal.INVALID,
        "t@.service": Refusal.INVALID,
        "s.service": Refusal.INVALID,
        "big.service": Refusal.INVALID,
        "ok.service": Refusal.INVALID,
        "units[6]": Refusal.INVALID,
        "units[7]": Refusal.INVALID,
        "destroy[1]": Refusal.INVALID,
    }
    assert problems_of([]) == {"body": Refusal.INVALID}
    assert problems_of({"units": {}, "destroy": "x"}) == {"units": Refusal.INVALID, "destroy": Refusal.INVALID}


def test_decide_all_refuses_the_whole_batch_with_every_refusal() -> None:
    batch = parse_batch(
        {
            "units": [
                {"name": "new.service", "desiredState": "launched", "options": OPTIONS},
                {"name": "web@1.service", "desiredState": "launched"},
                {"name": "old.service", "desiredState": "launched"},
                {"name": "broken.service", "desiredState": "loaded"},
            ]
        }
    )
    existing = {"old.service": StoredUnit("old.service", BODY, DesiredState.LOADED)}
    assert templates_to_read(batch.submissions, existing) == {"web@.service"}
    with pytest.raises(BatchError) as refused:
        decide_all(batch.submissions, existing, {}, {"broken.service": "unit broken.service: not JSON"})
    error = refused.value
    assert {p.name: p.kind for p in error.problems} == {
        "web@1.service": Refusal.NOT_FOUND,
        "broken.service": Refusal.CONFLICT,
    }
    assert error.kind is Refusal.NOT_FOUND and "nothing was changed" in error.message
    template = StoredUnit("web@.service", BODY, DesiredState.INACTIVE)
    decisions = decide_all(batch.submissions[:3], existing, {"web@.service": template})
    assert [d.action for d in decisions] == [Action.CREATE, Action.CREATE, Action.SET_DESIRED]
