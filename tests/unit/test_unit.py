"""Units, desired-state transitions and template instances (fleetd.model.unit)."""

from __future__ import annotations

import pytest

from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.unit import DesiredState, Unit, build_unit, check_transition, instance_from_template
from fleetd.model.unitfile import parse_unit_file

INACTIVE, LOADED, LAUNCHED = DesiredState.INACTIVE, DesiredState.LOADED, DesiredState.LAUNCHED
NEW = None

# docs/commands.md, "Which command may change what": command -> desired state, and the
# states it is accepted from.
# (current, command, target, allowed)
TABLE = [
    (NEW, "submit", INACTIVE, True),
    (INACTIVE, "submit", INACTIVE, False),
    (LAUNCHED, "submit", INACTIVE, False),
    (NEW, "load", LOADED, True),
    (INACTIVE, "load", LOADED, True),
    (LOADED, "load", LOADED, True),  # no-op
    (LAUNCHED, "load", LOADED, False),
    (NEW, "start", LAUNCHED, True),
    (INACTIVE, "start", LAUNCHED, True),
    (LOADED, "start", LAUNCHED, True),
    (LAUNCHED, "start", LAUNCHED, True),  # no-op
    (LAUNCHED, "stop", LOADED, True),
    (LOADED, "stop", LOADED, True),  # no-op
    (INACTIVE, "stop", LOADED, False),
    (NEW, "stop", LOADED, False),
    (LOADED, "unload", INACTIVE, True),
    (LAUNCHED, "unload", INACTIVE, True),
    (INACTIVE, "unload", INACTIVE, True),  # no-op
    (NEW, "unload", INACTIVE, False),
]


@pytest.mark.parametrize(("current", "command", "target", "allowed"), TABLE)
def test_command_table(current: DesiredState | None, command: str, target: DesiredState, allowed: bool) -> None:
    result = check_transition(current, target, name="web.service", command=command)
    assert (result is None) is allowed, result
    if not allowed:
        assert "web.service" in result  # type: ignore[operator]


def test_command_error_messages() -> None:
    assert check_transition(INACTIVE, LOADED, name="a.service", command="stop") == (
        "cannot stop a.service: its desired state is inactive"
    )
    assert check_transition(NEW, INACTIVE, name="a.service", command="unload") == (
        "cannot unload a.service: it does not exist"
    )
    assert check_transition(LOADED, INACTIVE, command="submit") == "unit already exists"
    assert "sets the desired state to launched" in str(check_transition(NEW, LOADED, command="start"))
    assert "unknown command" in str(check_transition(NEW, LOADED, command="restart"))


@pytest.mark.parametrize("current", [NEW, INACTIVE, LOADED, LAUNCHED])
@pytest.mark.parametrize("target", [INACTIVE, LOADED, LAUNCHED])
def test_state_changes_without_a_command_are_all_reachable(current: DesiredState | None, target: DesiredState) -> None:
    assert check_transition(current, target) is None


def test_accepts_plain_strings() -> None:
    assert check_transition("launched", "loaded") is None  # type: ignore[arg-type]
    assert check_transition("inactive", "loaded", command="stop") is not None  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_transition(None, "running")  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [LOADED, LAUNCHED])
@pytest.mark.parametrize("current", [NEW, INACTIVE])
def test_templates_cannot_be_loaded_or_started(current: DesiredState | None, target: DesiredState) -> None:
    message = check_transition(current, target, name="foo@.service")
    assert message is not None and message.startswith("cannot activate template foo@.service")
    assert "foo@1.service" in message


def test_templates_may_be_submitted_and_instances_started() -> None:
    assert check_transition(NEW, INACTIVE, name="foo@.service", command="submit") is None
    assert check_transition(NEW, LAUNCHED, name="foo@1.service", command="start") is None


def test_desired_state_values() -> None:
    assert [s.value for s in DesiredState] == ["inactive", "loaded", "launched"]
    assert DesiredState("loaded") is LOADED
    assert f"{LAUNCHED}" == "launched"


def test_build_unit() -> None:
    unit, warnings = build_unit("web.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=on\nX=1\n")
    assert isinstance(unit, Unit)
    assert unit.name == "web.service" and unit.requirements.global_
    assert unit.hash() == unit.file.hash()
    assert not unit.is_template
    assert warnings == ['web.service:5: unknown [X-Fleet] option "X" ignored']


def test_build_unit_from_unitfile_and_filename_label() -> None:
    file = parse_unit_file("[X-Fleet]\nMachineOf=db.service\n")
    unit, _ = build_unit("web.service", file)
    assert unit.file is file and unit.requirements.machine_of == ("db.service",)
    with pytest.raises(UnitFileError) as info:
        build_unit("web.service", "[X-Fleet]\nGlobal=maybe\n", filename="units/web.service")
    assert str(info.value).startswith("units/web.service:2: ")
    with pytest.raises(UnitFileError) as info:
        build_unit("web.service", "Oops=1\n")
    assert str(info.value).startswith("web.service:1: ")


def test_build_unit_validates_the_name() -> None:
    with pytest.raises(UnitNameError):
        build_unit("web", "[Unit]\n")
    template, _ = build_unit("foo@.service", "[Unit]\n")
    assert template.is_template


def test_instance_from_template_expands_instance() -> None:
    template = parse_unit_file(
        "[Service]\nExecStart=/bin/echo %i\n[X-Fleet]\nMachineMetadata=shard=%i\nConflicts=%p@*.service\n"
    )
    body = instance_from_template("web@7.service", template)
    assert body == template  # same body: systemd expands the [Service] specifiers itself
    assert body.get("Service", "ExecStart") == "/bin/echo %i"
    unit, _ = build_unit("web@7.service", body)
    assert unit.requirements.metadata == (("shard", ("7",)),)
    assert unit.requirements.conflicts == ("web@*.service",)
    assert unit.hash() == template.hash()


@pytest.mark.parametrize("name", ["web.service", "web@.service", "bad"])
def test_instance_from_template_needs_an_instance_name(name: str) -> None:
    with pytest.raises(UnitNameError):
        instance_from_template(name, parse_unit_file(""))


def test_template_with_specifiers_in_x_fleet_is_built_and_its_instances_checked() -> None:
    text = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=hostname=%i\nMachineID=%i\n"
    template, warnings = build_unit("metadata@.service", text)
    assert warnings == [] and template.is_template
    body = instance_from_template("metadata@abc123.service", template.file)
    instance, _ = build_unit("metadata@abc123.service", body)
    assert instance.requirements.metadata == (("hostname", ("abc123",)),)
    assert instance.requirements.machine_id == "abc123"
    with pytest.raises(UnitFileError, match="not a machine ID"):
        build_unit("metadata@node1.service", instance_from_template("metadata@node1.service", template.file))
