"""The rules for creating, replacing and re-targeting a unit (fleetd.model.submit), which
fleetd's API and fleetctl's etcd driver both follow: tested once here, without I/O."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleetd.model.state import StoredUnit
from fleetd.model.submit import (
    Action,
    Refusal,
    SubmitError,
    decide,
    desired_state,
    gave_up,
    submission,
    template_to_read,
)
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file

SERVICE = parse_unit_file("[Service]\nExecStart=/bin/sleep infinity\n")
OTHER = parse_unit_file("[Service]\nExecStart=/bin/sleep 1000\n")
GLOBAL = parse_unit_file("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n")
TEMPLATE = parse_unit_file("[Service]\nExecStart=/bin/echo %i\n\n[X-Fleet]\nConflicts=%p@*.service\n")
INACTIVE, LOADED, LAUNCHED = DesiredState.INACTIVE, DesiredState.LOADED, DesiredState.LAUNCHED


def refusal(call: Callable[..., object], *args: object, **kwargs: object) -> SubmitError:
    """The refusal ``call(*args, **kwargs)`` raises."""
    with pytest.raises(SubmitError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_desired_state_is_required_and_one_of_three() -> None:
    assert desired_state("launched") is LAUNCHED
    assert refusal(desired_state, None).message == "desiredState is required (inactive, loaded or launched)"
    bad = refusal(desired_state, "running")
    assert bad.kind is Refusal.INVALID and "invalid desiredState 'running'" in str(bad)


def test_options_none_or_empty_mean_no_new_body() -> None:
    assert submission("a.service", LOADED, None).unit is None
    assert submission("a.service", LOADED, []).unit is None
    built = submission("g.service", LOADED, GLOBAL.to_options(), replace=True)
    assert built.unit is not None and built.unit.file == GLOBAL and built.replace


def test_bad_options_and_templates_are_invalid() -> None:
    not_a_list = refusal(submission, "a.service", LOADED, {"x": 1})
    assert not_a_list.message == "options must be a list of {section, name, value}"
    bad = refusal(submission, "a.service", LOADED, [{"section": "Service"}])
    assert bad.kind is Refusal.INVALID and bad.message.startswith("unit a.service: option 0")
    template = refusal(submission, "web@.service", LAUNCHED, TEMPLATE.to_options())
    assert template.message.startswith("cannot activate template web@.service")
    assert submission("web@.service", INACTIVE, TEMPLATE.to_options()).unit is not None


def test_a_new_unit_is_created_with_its_global_flag() -> None:
    decision = decide(submission("g.service", LAUNCHED, GLOBAL.to_options()), None)
    assert decision.action is Action.CREATE and decision.is_global
    assert decision.stored == StoredUnit("g.service", GLOBAL, LAUNCHED, 1)  # revision 1


def test_an_instance_without_options_comes_from_its_template() -> None:
    request = submission("web@1.service", LAUNCHED, None)
    assert template_to_read(request, None) == "web@.service"
    decision = decide(request, None, StoredUnit("web@.service", TEMPLATE, INACTIVE))
    assert decision.action is Action.CREATE and decision.stored == StoredUnit("web@1.service", TEMPLATE, LAUNCHED, 1)
    missing = refusal(decide, request, None, None)
    assert missing.kind is Refusal.NOT_FOUND and "neither does its template web@.service" in missing.message


def test_no_template_is_read_when_not_needed() -> None:
    existing = StoredUnit("web@1.service", TEMPLATE, LOADED)
    assert template_to_read(submission("web@1.service", LAUNCHED, None), existing) is None
    assert template_to_read(submission("web@1.service", LAUNCHED, TEMPLATE.to_options()), None) is None
    assert template_to_read(submission("a.service", LAUNCHED, None), None) is None


def test_a_plain_unit_without_options_must_exist() -> None:
    gone = refusal(decide, submission("a.service", LOADED, None), None)
    assert gone.kind is Refusal.NOT_FOUND
    assert gone.message == "unit a.service does not exist; send its options to create it"


def test_another_body_needs_replace() -> None:
    existing = StoredUnit("a.service", SERVICE, LAUNCHED, 4)
    conflict = refusal(decide, submission("a.service", LAUNCHED, OTHER.to_options()), existing)
    assert conflict.kind is Refusal.CONFLICT and conflict.message.endswith("use --replace")
    decision = decide(submission("a.service", LOADED, OTHER.to_options(), replace=True), existing)
    assert decision.action is Action.REPLACE and decision.stored == StoredUnit("a.service", OTHER, LOADED, 5)


def test_the_same_body_only_changes_the_desired_state() -> None:
    existing = StoredUnit("a.service", SERVICE, LOADED)
    assert decide(submission("a.service", LAUNCHED, SERVICE.to_options()), existing).action is Action.SET_DESIRED
    assert decide(submission("a.service", LAUNCHED, None), existing).action is Action.SET_DESIRED
    assert decide(submission("a.service", LOADED, None), existing).action is Action.NOTHING


def test_every_state_is_reachable_from_every_other() -> None:
    for current in DesiredState:
        for target in DesiredState:
            decision = decide(submission("a.service", target, None), StoredUnit("a.service", SERVICE, current))
            assert decision.action is (Action.NOTHING if current is target else Action.SET_DESIRED)


def test_giving_up_is_busy() -> None:
    busy = gave_up("a.service")
    assert busy.kind is Refusal.BUSY and busy.message == "unit a.service kept changing while being updated; try again"


def test_without_a_desired_state_a_new_unit_is_inactive() -> None:
    # fleet's client submits a unit with its options only
    request = submission("a.service", desired_state(None, required=False), SERVICE.to_options())
    assert request.desired_missing and request.desired is INACTIVE
    decision = decide(request, None)
    assert decision.action is Action.CREATE and decision.stored == StoredUnit("a.service", SERVICE, INACTIVE, 1)
    assert desired_state("", required=False) is None
    assert refusal(desired_state, None).kind is Refusal.INVALID


def test_without_a_desired_state_a_replaced_unit_keeps_its_own() -> None:
    existing = StoredUnit("a.service", SERVICE, LAUNCHED, 4)
    decision = decide(submission("a.service", None, OTHER.to_options(), replace=True), existing)
    assert decision.action is Action.REPLACE and decision.stored == StoredUnit("a.service", OTHER, LAUNCHED, 5)


def test_without_a_desired_state_an_existing_unit_cannot_be_retargeted() -> None:
    existing = StoredUnit("a.service", SERVICE, LOADED)
    for options in (None, SERVICE.to_options()):
        conflict = refusal(decide, submission("a.service", None, options), existing)
        assert conflict.kind is Refusal.CONFLICT and "must provide desiredState" in conflict.message


def test_a_change_of_desired_state_keeps_the_revision() -> None:
    existing = StoredUnit("a.service", SERVICE, LOADED, 3)
    decision = decide(submission("a.service", LAUNCHED, None), existing)
    assert decision.action is Action.SET_DESIRED and decision.stored.revision == 3
    decision = decide(submission("a.service", LAUNCHED, SERVICE.to_options()), existing)  # the same body
    assert decision.stored.revision == 3


def test_the_origin_rides_with_the_decision() -> None:
    request = submission("a.service", LAUNCHED, SERVICE.to_options(), origin="API (fleetctl)")
    assert decide(request, None).origin == "API (fleetctl)"
