"""The engine and the agent record their decisions in the history (in-memory registry).

A unit placed, a machine lost and its unit moved, with the reasons; a unit started and one
that failed on the agent's side. Waits are conditions with deadlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fleetd.engine.engine import Engine
from fleetd.history import HistoryRecorder
from fleetd.model.history import EventKind, HistoryEvent
from fleetd.model.state import MachineState, StoredUnit
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry import MemoryRegistry
from fleetd.settings import Settings
from fleetlab.wait import eventually

FAST = Settings(
    agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.05, engine_resync_interval=3600, debounce=0.001
)
BODY = parse_unit_file("[Service]\nExecStart=/bin/sleep infinity\n")
A, B = "a" * 32, "b" * 32


@pytest.fixture
async def leading() -> AsyncIterator[tuple[MemoryRegistry, Engine]]:
    registry = MemoryRegistry()
    engine = Engine(registry, "e1", FAST, history=HistoryRecorder(registry))
    tasks = [asyncio.create_task(engine.run()), asyncio.create_task(engine.history.run())]  # type: ignore[union-attr]
    try:
        yield registry, engine
    finally:
        engine.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def history(registry: MemoryRegistry) -> list[HistoryEvent]:
    events, _, _ = await registry.events()
    return events


async def test_the_engine_records_placement_machine_loss_and_the_move(
    leading: tuple[MemoryRegistry, Engine],
) -> None:
    registry, _ = leading
    leases = {}
    for machine in (A, B):
        leases[machine] = await registry.grant_lease(30)
        await registry.register_machine(MachineState(machine, f"10.0.0.{len(leases)}"), leases[machine])
    await registry.create_unit(StoredUnit("web.service", BODY, DesiredState.LAUNCHED), is_global=False)

    async def kinds() -> list[EventKind]:
        return [e.event for e in await history(registry)]

    await eventually(lambda: _has(registry, EventKind.PLACED), 5, "a placed event")
    [placed] = [e for e in await history(registry) if e.event is EventKind.PLACED]
    assert placed.unit == "web.service" and placed.machine in (A, B) and placed.reason
    registry.expire_lease(leases[placed.machine])  # the unit's machine is lost
    await eventually(lambda: _has(registry, EventKind.MOVED), 5, "a moved event")
    events = await history(registry)
    other = B if placed.machine == A else A
    lost = [e for e in events if e.event is EventKind.MACHINE_LOST]
    [moved] = [e for e in events if e.event is EventKind.MOVED]
    assert [e.machine for e in lost] == [placed.machine]
    assert moved.machine == other and moved.reason.startswith(f"from {placed.machine[:8]}: ")
    assert (await kinds()).index(EventKind.MACHINE_LOST) < (await kinds()).index(EventKind.MOVED)


async def test_an_unplaceable_unit_is_recorded_with_its_reason(leading: tuple[MemoryRegistry, Engine]) -> None:
    registry, _ = leading
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(A, "10.0.0.1", {"role": "web"}), lease)
    body = parse_unit_file("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=role=db\n")
    await registry.create_unit(StoredUnit("db.service", body, DesiredState.LAUNCHED), is_global=False)
    await eventually(lambda: _has(registry, EventKind.UNPLACEABLE), 5, "an unplaceable event")
    [event] = [e for e in await history(registry) if e.event is EventKind.UNPLACEABLE]
    assert event.unit == "db.service" and "role=db" in event.reason


async def _has(registry: MemoryRegistry, kind: EventKind) -> bool:
    return any(e.event is kind for e in await history(registry))


async def test_the_agent_records_starts_and_failures_with_their_reasons() -> None:
    from fleetd.agent.agent import Agent
    from fleetd.model.state import ScheduledUnit, SystemdState
    from fleetlab.simulated import SimulatedManager

    registry = MemoryRegistry()
    manager = SimulatedManager()
    manager.refused_starts["bad.service"] = "Unit bad.service has a bad setting"
    recorder = HistoryRecorder(registry)
    agent = Agent(registry, manager, MachineState(A), FAST, history=recorder)
    tasks = [asyncio.create_task(agent.run()), asyncio.create_task(recorder.run())]
    try:
        term = await registry.acquire_leadership("test-engine", await registry.grant_lease(30))
        assert term is not None
        placements = [(A, ScheduledUnit(n, BODY, DesiredState.LAUNCHED)) for n in ("good.service", "bad.service")]
        await registry.apply_schedule(term, placements, [])
        await eventually(lambda: _has(registry, EventKind.STARTED), 5, "a started event")
        await eventually(lambda: _has(registry, EventKind.FAILED), 5, "a failed event")
        events = await history(registry)
        [started] = [e for e in events if e.event is EventKind.STARTED]
        [failed] = [e for e in events if e.event is EventKind.FAILED]
        assert (started.unit, started.machine, started.reason) == ("good.service", A, "desired state is launched")
        assert failed.unit == "bad.service" and "bad setting" in failed.reason
        # systemd reports a running unit failed: recorded once
        manager._set("good.service", SystemdState("loaded", "failed", "failed"))
        manager._set("good.service", SystemdState("loaded", "failed", "failed"))
        await eventually(
            lambda: _count(registry, EventKind.FAILED, "good.service"), 5, "the unit's failure in the history"
        )
        assert await _count(registry, EventKind.FAILED, "good.service") == 1
    finally:
        agent.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _count(registry: MemoryRegistry, kind: EventKind, unit: str) -> int | None:
    found = sum(1 for e in await history(registry) if e.event is kind and e.unit == unit)
    return found or None
