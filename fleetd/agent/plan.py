"""The agent's decision: from what this machine should run to the systemd actions to get there.

Pure, like the engine's plan: the agent loop gathers the desired state (its schedule plus
the global units it runs) and the current state (from systemd), calls :func:`agent_plan`,
and the systemd adapter carries the tasks out in order. The order is fleet's: every
unload, then every load, then every stop, then every start. Unloading first frees names
and conflicting resources before anything new arrives; loading before starting means a
start never finds its unit file missing; stopping before starting lets a replacement take
over a port the old unit held.

A changed unit file (different hash) is an Unload followed by a Load: systemd has no safe
in-place swap of a running unit's definition, and this is what fleet did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import short_hash


class Desired(NamedTuple):
    """What this machine should do with a unit: its desired state and unit-file hash."""

    state: DesiredState
    hash: str


class Current(NamedTuple):
    """What systemd has: whether the unit is loaded (fleet's file in place), active, and
    the hash of the unit file that is loaded."""

    loaded: bool
    active: bool
    hash: str


@dataclass(frozen=True)
class AgentTask:
    """One systemd action on one unit, with the reason (for logs)."""

    unit: str
    reason: str
    # Position of this kind of task in a plan (see the module docstring).
    phase: ClassVar[int] = 0
    verb: ClassVar[str] = ""


@dataclass(frozen=True)
class Unload(AgentTask):
    """Stop the unit if it runs, and remove its unit file."""

    phase: ClassVar[int] = 0
    verb: ClassVar[str] = "unload"


@dataclass(frozen=True)
class Load(AgentTask):
    """Write the unit file and make systemd load it (not started)."""

    phase: ClassVar[int] = 1
    verb: ClassVar[str] = "load"


@dataclass(frozen=True)
class Stop(AgentTask):
    """Stop a loaded unit, keeping it loaded."""

    phase: ClassVar[int] = 2
    verb: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Start(AgentTask):
    """Start a loaded unit."""

    phase: ClassVar[int] = 3
    verb: ClassVar[str] = "start"


def _short(hash_: str) -> str:
    return short_hash(hash_) if hash_ else "unknown"


def _unit_tasks(name: str, desired: Desired | None, current: Current | None) -> list[AgentTask]:
    """The tasks for one unit; see the module docstring for the rules."""
    wanted = desired is not None and desired.state is not DesiredState.INACTIVE
    if not wanted:
        if current is not None and (current.loaded or current.active):
            why = "desired state is inactive" if desired is not None else "not scheduled on this machine"
            return [Unload(name, why)]
        return []
    assert desired is not None
    tasks: list[AgentTask] = []
    active = current.active if current is not None else False
    if current is None or not current.loaded:
        tasks.append(Load(name, f"desired state is {desired.state}"))
    elif current.hash != desired.hash:
        why = f"unit file changed ({_short(current.hash)} -> {_short(desired.hash)})"
        tasks += [Unload(name, why), Load(name, why)]
        active = False
    if desired.state is DesiredState.LAUNCHED and not active:
        tasks.append(Start(name, "desired state is launched"))
    elif desired.state is DesiredState.LOADED and active:
        tasks.append(Stop(name, "desired state is loaded"))
    return tasks


def agent_plan(
    desired: Mapping[str, tuple[DesiredState, str]],
    current: Mapping[str, tuple[bool, bool, str]],
) -> list[AgentTask]:
    """The systemd actions that take ``current`` to ``desired`` on this machine.

    ``desired`` maps a unit to (desired state, hash) for every unit this machine should
    know (an ``inactive`` entry counts as absent); ``current`` maps a unit systemd has to
    (loaded, active, hash). Ordered: unloads, loads, stops, starts, each by unit name.
    """
    tasks: list[AgentTask] = []
    for name in sorted(set(desired) | set(current)):
        want = desired.get(name)
        have = current.get(name)
        tasks += _unit_tasks(
            name,
            Desired(DesiredState(want[0]), want[1]) if want is not None else None,
            Current(*have) if have is not None else None,
        )
    tasks.sort(key=lambda task: task.phase)  # stable: names stay sorted within a phase
    return tasks
