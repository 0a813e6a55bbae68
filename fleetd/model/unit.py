"""A unit as the cluster knows it, and the rules for changing its desired state.

``build_unit`` is the single entry point from (name, text) to a validated unit, so the API,
fleetctl and tests all refuse the same things with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fleetd.model.errors import UnitNameError
from fleetd.model.names import UnitName, parse_unit_name
from fleetd.model.requirements import Requirements, parse_requirements
from fleetd.model.unitfile import UnitFile, parse_unit_file


class DesiredState(StrEnum):
    """The target state a user asks for (values are fleet's API strings)."""

    INACTIVE = "inactive"  # known to the cluster, not placed
    LOADED = "loaded"  # placed and loaded into systemd, not started
    LAUNCHED = "launched"  # loaded and started


@dataclass(frozen=True)
class Unit:
    """A validated unit: its name, its file and its parsed ``[X-Fleet]`` requirements."""

    name: str
    file: UnitFile
    requirements: Requirements

    @property
    def name_info(self) -> UnitName:
        return parse_unit_name(self.name)

    @property
    def is_template(self) -> bool:
        return self.name_info.is_template

    def hash(self) -> str:
        return self.file.hash()


def build_unit(name: str, source: str | UnitFile, filename: str | None = None) -> tuple[Unit, list[str]]:
    """Validate ``name``, parse ``source`` (text or an already built file) and its
    ``[X-Fleet]`` section; return the unit and any warnings.

    The file must keep the unit-file contract (:meth:`UnitFile.check`: clean UTF-8 text,
    no control characters, and a rendering that parses back to the same options), so a
    unit that would run differently from what it shows is refused here, for every caller:
    the API and fleetctl on submit, the engine and the agent on what they read from etcd.

    Raises :class:`UnitNameError` or :class:`UnitFileError`; errors are labelled with
    ``filename`` when given (the local file a user submitted), else with ``name``.
    """
    parse_unit_name(name)
    label = filename or name
    file = source if isinstance(source, UnitFile) else parse_unit_file(source, label)
    file.check(label)
    requirements, warnings = parse_requirements(file, name, label)
    return Unit(name, file, requirements), warnings


def instance_from_template(instance_name: str, template_file: UnitFile) -> UnitFile:
    """The body of instance ``foo@bar.service``: the template's body, unchanged.

    Specifiers are not expanded in the body (systemd does that on the machine); fleet's own
    ``[X-Fleet]`` values are expanded when the instance's requirements are parsed with
    its own name, so ``%i`` becomes ``bar``.
    """
    if not parse_unit_name(instance_name).is_instance:
        raise UnitNameError(
            f'"{instance_name}" is not a template instance (expected e.g. "foo@bar.service")',
            instance_name,
        )
    return template_file


# command -> (desired state it sets, states it may be issued from; None = unit does not exist)
_S = DesiredState
COMMANDS: dict[str, tuple[DesiredState, frozenset[DesiredState | None]]] = {
    "submit": (_S.INACTIVE, frozenset({None})),
    "load": (_S.LOADED, frozenset({None, _S.INACTIVE, _S.LOADED})),
    "start": (_S.LAUNCHED, frozenset({None, _S.INACTIVE, _S.LOADED, _S.LAUNCHED})),
    "stop": (_S.LOADED, frozenset({_S.LAUNCHED, _S.LOADED})),
    "unload": (_S.INACTIVE, frozenset({_S.LOADED, _S.LAUNCHED, _S.INACTIVE})),
}


def _infer_command(current: DesiredState | None, target: DesiredState) -> str:
    """The fleetctl command that moves ``current`` to ``target``."""
    if target is _S.INACTIVE:
        return "submit" if current is None else "unload"
    if target is _S.LOADED:
        return "stop" if current is _S.LAUNCHED else "load"
    return "start"


def check_transition(
    current: DesiredState | None,
    target: DesiredState,
    *,
    name: str | None = None,
    command: str | None = None,
) -> str | None:
    """Why the desired state may not go from ``current`` to ``target``, or ``None`` if it may.

    ``current`` is ``None`` for a unit that does not exist yet. A template (``name`` like
    ``foo@.service``) can only ever be ``inactive``. ``command`` (submit, load, start, stop,
    unload) applies the table of docs/commands.md, which is stricter than the states alone: e.g.
    ``stop`` of an inactive unit is an error while ``load`` of it is fine. Staying in the
    same state is allowed (a no-op), except ``submit`` of a unit that already exists.
    ``destroy`` is always allowed and is not checked here.
    """
    target = DesiredState(target)
    current = None if current is None else DesiredState(current)
    label = name or "unit"
    if name is not None and target is not _S.INACTIVE and parse_unit_name(name).is_template:
        return f"cannot activate template {name}: start an instance such as {_example(name)}"
    cmd = command or _infer_command(current, target)
    if cmd not in COMMANDS:
        return f"unknown command {cmd!r}"
    sets, allowed_from = COMMANDS[cmd]
    if sets is not target:
        return f"{cmd} sets the desired state to {sets}, not {target}"
    if current in allowed_from:
        return None
    if current is None:
        return f"cannot {cmd} {label}: it does not exist"
    if cmd == "submit":
        return f"{label} already exists"
    return f"cannot {cmd} {label}: its desired state is {current}"


def _example(template: str) -> str:
    parts = parse_unit_name(template)
    return f"{parts.prefix}@1.{parts.suffix}"
