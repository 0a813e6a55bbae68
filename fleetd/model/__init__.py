"""Pure domain model: unit files, names, [X-Fleet] requirements, states.

No I/O and no asyncio here; everything is plain data and functions, so the scheduler and
the CLI can share it and unit tests need nothing but Python.
"""

from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.names import (
    UnitName,
    expand_specifiers,
    is_valid_unit_name,
    mangle_unit_name,
    parse_unit_name,
    validate_unit_name,
)
from fleetd.model.requirements import Requirements, parse_requirements
from fleetd.model.unit import (
    DesiredState,
    Unit,
    build_unit,
    check_transition,
    instance_from_template,
)
from fleetd.model.unitfile import UnitFile, UnitOption, parse_unit_file

__all__ = [
    "DesiredState",
    "Requirements",
    "Unit",
    "UnitFile",
    "UnitFileError",
    "UnitName",
    "UnitNameError",
    "UnitOption",
    "build_unit",
    "check_transition",
    "expand_specifiers",
    "instance_from_template",
    "is_valid_unit_name",
    "mangle_unit_name",
    "parse_requirements",
    "parse_unit_file",
    "parse_unit_name",
    "validate_unit_name",
]
