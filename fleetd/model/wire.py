"""The records of fleet's HTTP API v1, built from model records.

One definition serves both the API server and fleetctl's ``--driver etcd`` (which must
show exactly what the API would), so the two can never drift apart. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.state import MachineState, StoredUnit, UnitState
from fleetd.model.unit import build_unit
from fleetd.model.unitfile import UnitFile

# systemd ActiveStates that count as "launched" for fleet's currentState
LAUNCHED_ACTIVE_STATES = frozenset({"active", "activating", "reloading"})


@lru_cache(maxsize=8192)
def is_global_unit(name: str, file: UnitFile) -> bool:
    """Whether the unit's ``[X-Fleet]`` says ``Global=`` true (an invalid unit: not global)."""
    try:
        unit, _ = build_unit(name, file)
    except (UnitFileError, UnitNameError):
        return False
    return unit.requirements.global_


def current_state(placed: Iterable[str], states: Mapping[str, UnitState]) -> str:
    """fleet's ``currentState``: ``inactive`` unless placed and reported by a machine it is
    placed on; then ``launched`` when systemd has it active (or activating, reloading)
    there, ``loaded`` otherwise. ``states`` maps machine id -> state."""
    reported = [states[machine] for machine in placed if machine in states]
    if not reported:
        return "inactive"
    if any(state.active_state in LAUNCHED_ACTIVE_STATES for state in reported):
        return "launched"
    return "loaded"


def unit_json(unit: StoredUnit, placed: list[str], states: Mapping[str, UnitState]) -> dict[str, Any]:
    """The API's unit object; ``placed``: machines it is scheduled on, ``states``: machine
    id -> its published state of this unit. Global units have no single machine."""
    body = {
        "name": unit.name,
        "options": unit.file.to_options(),
        "desiredState": str(unit.desired),
        "currentState": current_state(placed, states),
        "machineID": placed[0] if placed and not is_global_unit(unit.name, unit.file) else "",
    }
    if unit.revision:  # beyond fleet's Unit (its client ignores fields it does not know)
        body["revision"] = unit.revision
    return body


UNREADABLE = "unreadable"


def unreadable_unit_json(name: str, reason: str) -> dict[str, Any]:
    """A unit whose stored record cannot be read, as listings show it: in fleet's shape
    (fleet's own client still reads the list), with ``currentState`` "unreadable" and the
    reason in ``error``. Nothing runs for it; ``destroy`` removes it."""
    return {
        "name": name,
        "options": [],
        "desiredState": "inactive",
        "currentState": UNREADABLE,
        "machineID": "",
        "error": reason,
    }


def units_json(
    units: Iterable[StoredUnit], placements: Mapping[str, list[str]], states: Iterable[UnitState]
) -> list[dict[str, Any]]:
    """The API's unit objects for ``units``, given every placement (unit name -> machine
    ids) and published state; a list and a one-unit read both show units this way."""
    by_unit = states_by_unit(states)
    return [unit_json(u, sorted(placements.get(u.name, [])), by_unit.get(u.name, {})) for u in units]


def select_states(states: Iterable[UnitState], unit: str | None = None, machine: str | None = None) -> list[UnitState]:
    """The states of ``unit`` on ``machine`` (either ``None``: all), as ``GET /state``'s
    ``unitName`` and ``machineID`` filters choose them."""
    return [s for s in states if (not unit or s.name == unit) and (not machine or s.machine_id == machine)]


def state_json(state: UnitState) -> dict[str, str]:
    """fleet's UnitState object, plus ``error`` (beyond fleet) when fleet could not act on
    the unit on that machine."""
    record = {
        "name": state.name,
        "hash": state.hash,
        "machineID": state.machine_id,
        "systemdLoadState": state.load_state,
        "systemdActiveState": state.active_state,
        "systemdSubState": state.sub_state,
    }
    if state.error:
        record["error"] = state.error
    return record


def machine_json(machine: MachineState) -> dict[str, Any]:
    return {"id": machine.id, "primaryIP": machine.public_ip, "metadata": dict(machine.metadata)}


def states_by_unit(states: Iterable[UnitState]) -> dict[str, dict[str, UnitState]]:
    """unit name -> machine id -> state, the shape ``unit_json`` takes."""
    result: dict[str, dict[str, UnitState]] = {}
    for state in states:
        result.setdefault(state.name, {})[state.machine_id] = state
    return result
