"""The agent's systemd actions (fleetd.agent.plan): given desired and current state,
expect exactly these tasks, in fleet's order (unloads, loads, stops, starts)."""

from __future__ import annotations

import pytest

from fleetd.agent.plan import AgentTask, Load, Start, Stop, Unload, agent_plan
from fleetd.model.unit import DesiredState

INACTIVE, LOADED, LAUNCHED = DesiredState.INACTIVE, DesiredState.LOADED, DesiredState.LAUNCHED
H1 = "1" * 40
H2 = "2" * 40
CHANGED = "unit file changed (1111111 -> 2222222)"

# (id, desired, current, expected)
CASES: list[tuple[str, dict, dict, list[AgentTask]]] = [
    ("nothing", {}, {}, []),
    (
        "new-launched",
        {"a.service": (LAUNCHED, H1)},
        {},
        [
            Load("a.service", "desired state is launched"),
            Start("a.service", "desired state is launched"),
        ],
    ),
    ("new-loaded", {"a.service": (LOADED, H1)}, {}, [Load("a.service", "desired state is loaded")]),
    ("steady-launched", {"a.service": (LAUNCHED, H1)}, {"a.service": (True, True, H1)}, []),
    ("steady-loaded", {"a.service": (LOADED, H1)}, {"a.service": (True, False, H1)}, []),
    (
        "start-a-loaded-unit",
        {"a.service": (LAUNCHED, H1)},
        {"a.service": (True, False, H1)},
        [
            Start("a.service", "desired state is launched"),
        ],
    ),
    (
        "stop-to-loaded",
        {"a.service": (LOADED, H1)},
        {"a.service": (True, True, H1)},
        [
            Stop("a.service", "desired state is loaded"),
        ],
    ),
    (
        "hash-changed-while-running",
        {"a.service": (LAUNCHED, H2)},
        {"a.service": (True, True, H1)},
        [
            Unload("a.service", CHANGED),
            Load("a.service", CHANGED),
            Start("a.service", "desired state is launched"),
        ],
    ),
    (
        "hash-changed-while-loaded",
        {"a.service": (LOADED, H2)},
        {"a.service": (True, False, H1)},
        [
            Unload("a.service", CHANGED),
            Load("a.service", CHANGED),
        ],
    ),
    (
        "hash-changed-running-but-should-be-loaded",
        {"a.service": (LOADED, H2)},
        {"a.service": (True, True, H1)},
        [
            Unload("a.service", CHANGED),
            Load("a.service", CHANGED),
        ],
    ),
    (
        "unknown-loaded-hash-reloads",
        {"a.service": (LOADED, H2)},
        {"a.service": (True, False, "")},
        [
            Unload("a.service", "unit file changed (unknown -> 2222222)"),
            Load("a.service", "unit file changed (unknown -> 2222222)"),
        ],
    ),
    (
        "no-longer-scheduled-here",
        {},
        {"a.service": (True, True, H1)},
        [
            Unload("a.service", "not scheduled on this machine"),
        ],
    ),
    (
        "desired-inactive",
        {"a.service": (INACTIVE, H1)},
        {"a.service": (True, False, H1)},
        [
            Unload("a.service", "desired state is inactive"),
        ],
    ),
    (
        "running-without-its-file-is-unloaded",
        {},
        {"a.service": (False, True, H1)},
        [
            Unload("a.service", "not scheduled on this machine"),
        ],
    ),
    ("already-gone", {"a.service": (INACTIVE, H1)}, {"a.service": (False, False, H1)}, []),
    (
        "active-but-not-loaded-gets-loaded-not-restarted",
        {"a.service": (LAUNCHED, H1)},
        {"a.service": (False, True, "")},
        [
            Load("a.service", "desired state is launched"),
        ],
    ),
    (
        "plain-strings-and-tuples-are-accepted",
        {"a.service": ("launched", H1)},
        {"a.service": (True, False, H1)},
        [
            Start("a.service", "desired state is launched"),
        ],
    ),
    (
        "fleet-order-unloads-loads-stops-starts",
        {
            "d-new.service": (LAUNCHED, H1),
            "c-stop.service": (LOADED, H1),
            "b-changed.service": (LAUNCHED, H2),
            "e-start.service": (LAUNCHED, H1),
            "f-keep.service": (LAUNCHED, H1),
        },
        {
            "a-gone.service": (True, True, H1),
            "b-changed.service": (True, True, H1),
            "c-stop.service": (True, True, H1),
            "e-start.service": (True, False, H1),
            "f-keep.service": (True, True, H1),
        },
        [
            Unload("a-gone.service", "not scheduled on this machine"),
            Unload("b-changed.service", CHANGED),
            Load("b-changed.service", CHANGED),
            Load("d-new.service", "desired state is launched"),
            Stop("c-stop.service", "desired state is loaded"),
            Start("b-changed.service", "desired state is launched"),
            Start("d-new.service", "desired state is launched"),
            Start("e-start.service", "desired state is launched"),
        ],
    ),
]


@pytest.mark.parametrize(("desired", "current", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_agent_plan(desired: dict, current: dict, expected: list[AgentTask]) -> None:
    assert agent_plan(desired, current) == expected


@pytest.mark.parametrize(("desired", "current", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_agent_plan_reaches_the_desired_state(desired: dict, current: dict, expected: list[AgentTask]) -> None:
    """Simulating the tasks on the current state gives a state that needs no more tasks."""
    state = {name: list(value) for name, value in current.items()}
    for task in agent_plan(desired, current):
        if isinstance(task, Unload):
            state.pop(task.unit, None)
        elif isinstance(task, Load):
            state[task.unit] = [True, state.get(task.unit, [False, False, ""])[1], desired[task.unit][1]]
        elif isinstance(task, Stop):
            state[task.unit][1] = False
        elif isinstance(task, Start):
            state[task.unit][1] = True
    assert agent_plan(desired, {n: tuple(v) for n, v in state.items()}) == []


def test_task_kinds_name_themselves() -> None:
    assert [t.verb for t in (Unload("a", ""), Load("a", ""), Stop("a", ""), Start("a", ""))] == [
        "unload",
        "load",
        "stop",
        "start",
    ]
