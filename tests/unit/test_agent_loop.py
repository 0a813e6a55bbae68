"""The agent loop on the in-memory registry: the order of its systemd actions and their
reasons, registration, adoption after a restart, lease loss, metadata and global units.

The service manager is the in-memory one; every assertion is about what it was asked to
do or what the agent published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from fleetd.agent.agent import Agent
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile, parse_unit_file
from fleetd.registry import Leadership, MemoryRegistry, PlacementEvent
from fleetd.settings import Settings
from fleetlab.simulated import SimulatedManager
from fleetlab.wait import eventually, wait_until_async

FAST = Settings(agent_ttl=30, engine_ttl=30, agent_reconcile_interval=30, debounce=0.001)
ME = "a" * 32
BODY = parse_unit_file("[Service]\nExecStart=/bin/sleep infinity\n")
NEW_BODY = parse_unit_file("[Service]\nExecStart=/bin/sleep 1000\n")


class RecordingManager(SimulatedManager):
    """Remembers each call as (verb, names), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, list[str]]] = []

    async def load(self, units: Mapping[str, UnitFile]) -> None:
        self.log.append(("load", sorted(units)))
        await super().load(units)

    async def unload(self, names: Sequence[str]) -> None:
        self.log.append(("unload", sorted(names)))
        await super().unload(names)

    async def start(self, names: Sequence[str]) -> None:
        self.log.append(("start", sorted(names)))
        await super().start(names)

    async def stop(self, names: Sequence[str]) -> None:
        self.log.append(("stop", sorted(names)))
        await super().stop(names)


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


async def engine_term(registry: MemoryRegistry) -> Leadership:
    leadership = await registry.acquire_leadership("test-engine", await registry.grant_lease(30))
    assert leadership is not None
    return leadership


def scheduled(name: str, desired: DesiredState = DesiredState.LAUNCHED, body: UnitFile = BODY) -> ScheduledUnit:
    return ScheduledUnit(name, body, desired)


async def running(agent: Agent, tasks: list[asyncio.Task[None]]) -> Agent:
    tasks.append(asyncio.create_task(agent.run()))
    await wait_until_async(agent.ready.is_set, 5, f"agent {agent.machine_id[:8]} ready")
    return agent


@pytest.fixture
async def tasks() -> AsyncIterator[list[asyncio.Task[None]]]:
    started: list[asyncio.Task[None]] = []
    yield started
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


# -- the plan, carried out ------------------------------------------------------------------


async def test_actions_run_in_fleets_order_with_their_reasons(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]], caplog: pytest.LogCaptureFixture
) -> None:
    term = await engine_term(registry)
    manager = RecordingManager()
    # what systemd has before the agent starts: two units fleet left behind
    await manager.load({"stale.service": BODY, "running.service": BODY, "changed.service": BODY})
    await manager.start(["running.service", "changed.service"])
    manager.log.clear()
    await registry.apply_schedule(
        term,
        [
            (ME, scheduled("new.service")),
            (ME, scheduled("running.service", DesiredState.LOADED)),
            (ME, scheduled("changed.service", body=NEW_BODY)),
        ],
        [],
    )
    caplog.set_level(logging.INFO, logger="fleetd.agent.agent")
    await running(Agent(registry, manager, MachineState(ME), FAST), tasks)
    assert manager.log == [
        ("unload", ["changed.service", "stale.service"]),
        ("load", ["changed.service", "new.service"]),
        ("stop", ["running.service"]),
        ("start", ["changed.service", "new.service"]),
    ]
    lines = [r.getMessage() for r in caplog.records]
    assert "agent: unload stale.service: not scheduled on this machine" in lines
    assert any(line.startswith("agent: unload changed.service: unit file changed") for line in lines)
    assert "agent: stop running.service: desired state is loaded" in lines
    assert "agent: start new.service: desired state is launched" in lines


async def test_schedule_changes_are_followed_and_states_published(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    term = await engine_term(registry)
    manager = RecordingManager()
    await running(Agent(registry, manager, MachineState(ME), FAST), tasks)
    await registry.apply_schedule(term, [(ME, scheduled("web.service"))], [])

    async def published() -> list[str] | None:
        states = await registry.unit_states("web.service")
        return [s.active_state for s in states] or None

    assert await eventually(published, 5, "web.service's state") == ["active"]
    await registry.apply_schedule(term, [], [(ME, "web.service")])
    await wait_until_async(lambda: "web.service" not in manager.files, 5, "web.service unloaded")
    assert await eventually(lambda: _none_published(registry), 5, "web.service's state removed")


async def _none_published(registry: MemoryRegistry) -> bool:
    return await registry.unit_states() == []


# -- registration ---------------------------------------------------------------------------------


async def test_a_restarted_agent_adopts_its_registration_and_restarts_nothing(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]], tmp_path: Path
) -> None:
    term = await engine_term(registry)
    manager = SimulatedManager()  # stands for systemd, which outlives fleetd
    lease_file = str(tmp_path / "agent.lease")
    first = await running(Agent(registry, manager, MachineState(ME), FAST, lease_file=lease_file), tasks)
    await registry.apply_schedule(term, [(ME, scheduled("pinned.service"))], [])
    await wait_until_async(lambda: manager.starts.get("pinned.service") == 1, 5, "pinned.service started")
    lease = first.status.lease
    tasks.pop().cancel()  # fleetd killed: no leave
    # another fleetd with the same machine id is refused while the registration lives
    impostor = Agent(registry, SimulatedManager(), MachineState(ME), FAST)
    tasks.append(asyncio.create_task(impostor.run()))
    await wait_until_async(lambda: impostor.status.error, 5, "the impostor to be refused")
    assert "already registered" in (impostor.status.error or "")
    tasks.pop().cancel()
    second = await running(Agent(registry, manager, MachineState(ME), FAST, lease_file=lease_file), tasks)
    assert second.status.lease == lease and second.status.registered
    assert manager.starts["pinned.service"] == 1
    assert await registry.machine_lease(ME) == lease


async def test_a_lost_lease_is_replaced_and_everything_republished(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    term = await engine_term(registry)
    settings = Settings(agent_ttl=0.6, agent_reconcile_interval=30, debounce=0.001)  # keepalive every 0.2 s
    agent = await running(Agent(registry, SimulatedManager(), MachineState(ME), settings), tasks)
    await registry.apply_schedule(term, [(ME, scheduled("mine.service"))], [])
    await eventually(lambda: _states(registry), 5, "mine.service published")
    old = agent.status.lease
    registry.expire_lease(old)  # a long etcd outage: entry and states are gone
    assert await registry.machines() == []

    async def back() -> bool:
        return [m.id for m in await registry.machines()] == [ME] and await _states(registry) is not None

    await eventually(back, 5, "the agent to register and publish again")
    assert agent.status.lease != old


async def _states(registry: MemoryRegistry) -> list[str] | None:
    return [s.name for s in await registry.unit_states()] or None


async def test_dynamic_metadata_reaches_the_machine_entry(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    await running(Agent(registry, SimulatedManager(), MachineState(ME, "", {"region": "eu"}), FAST), tasks)
    await registry.update_dynamic_metadata(ME, {"gpu": "yes"})

    async def metadata() -> dict[str, str] | None:
        machines = await registry.machines()
        return dict(machines[0].metadata) if machines and "gpu" in machines[0].metadata else None

    assert await eventually(metadata, 5, "the metadata in the machine entry") == {"region": "eu", "gpu": "yes"}


# -- global units ---------------------------------------------------------------------------------


async def test_global_units_run_where_their_metadata_matches(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    eu = SimulatedManager()
    us = SimulatedManager()
    await running(Agent(registry, eu, MachineState("e" * 32, "", {"region": "eu"}), FAST), tasks)
    await running(Agent(registry, us, MachineState("f" * 32, "", {"region": "us"}), FAST), tasks)
    body = parse_unit_file("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineMetadata=region=eu\n")
    await registry.create_unit(StoredUnit("mon.service", body, DesiredState.LAUNCHED), is_global=True)
    await wait_until_async(lambda: eu.starts.get("mon.service") == 1, 5, "mon.service on the eu machine")
    assert "mon.service" not in us.files
    await registry.destroy_unit("mon.service")
    await wait_until_async(lambda: "mon.service" not in eu.files, 5, "mon.service removed")


async def test_leaving_unloads_and_ends_the_registration(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    term = await engine_term(registry)
    manager = SimulatedManager()
    agent = await running(Agent(registry, manager, MachineState(ME), FAST), tasks)
    await registry.apply_schedule(term, [(ME, scheduled("x.service"))], [])
    await wait_until_async(lambda: "x.service" in manager.files, 5, "x.service loaded")
    agent.stop()
    tasks.pop().cancel()
    await agent.leave(unload_units=True)
    assert manager.files == {}
    assert await registry.machines() == [] and await registry.unit_states() == []


# -- poison isolation -------------------------------------------------------------------------------


async def test_a_unit_that_cannot_be_loaded_holds_up_no_other_and_says_why(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]], caplog: pytest.LogCaptureFixture
) -> None:
    term = await engine_term(registry)
    manager = RecordingManager()
    manager.poison_loads["poison.service"] = "File name too long"
    agent = Agent(registry, manager, MachineState(ME), FAST)
    agent.executor.min_retry, agent.executor.max_retry = 0.05, 0.2
    await running(agent, tasks)
    caplog.set_level(logging.INFO)
    placed = [(ME, scheduled(name)) for name in ("a.service", "poison.service", "z.service")]
    await registry.apply_schedule(term, placed, [])
    await wait_until_async(lambda: {"a.service", "z.service"} <= set(manager.starts), 5, "the healthy units started")

    async def poison_state() -> list[tuple[str, str]] | None:
        states = await registry.unit_states("poison.service")
        return [(s.load_state, s.error) for s in states] or None

    assert await eventually(poison_state, 5, "the poisoned unit's state") == [
        ("error", "load failed: File name too long")
    ]
    # retried with backoff (0.05, 0.1, 0.2, 0.2 ... s), and its failure logged once
    await wait_until_async(lambda: agent.executor.failures["poison.service"].attempts >= 4, 5, "a few retries")
    loads = [names for verb, names in manager.log if verb == "load" and "poison.service" in names]
    assert len(loads) < 20
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "poison.service" in r.getMessage()]
    assert len(warnings) == 1 and not any(r.exc_info for r in warnings)
    # a new body is tried at once; once it loads, the error is gone from its state
    del manager.poison_loads["poison.service"]
    await registry.apply_schedule(term, [(ME, scheduled("poison.service", body=NEW_BODY))], [])
    await wait_until_async(lambda: "poison.service" in manager.starts, 5, "the fixed unit started")
    assert await eventually(poison_state, 5, "the fixed unit's state") == [("loaded", "")]


async def test_a_start_the_service_manager_refuses_shows_in_the_units_state(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    term = await engine_term(registry)
    manager = SimulatedManager()
    manager.refused_starts["bad.service"] = "Unit bad.service has a bad unit file setting."
    await running(Agent(registry, manager, MachineState(ME), FAST), tasks)
    await registry.apply_schedule(term, [(ME, scheduled("bad.service")), (ME, scheduled("good.service"))], [])
    await wait_until_async(lambda: "good.service" in manager.starts, 5, "good.service started")

    async def errors() -> dict[str, str] | None:
        states = {s.name: s.error for s in await registry.unit_states()}
        return states if states.get("bad.service") else None

    assert await eventually(errors, 5, "bad.service's error") == {
        "bad.service": "Unit bad.service has a bad unit file setting.",
        "good.service": "",
    }


# -- supervision ----------------------------------------------------------------------------------


class WatchFailsTwice(MemoryRegistry):
    """A registry whose first two schedule watches die of an unexpected error."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def watch_machine_schedule(self, machine_id: str, revision: int) -> AsyncIterator[list[PlacementEvent]]:
        if self.failures < 2:
            self.failures += 1
            raise RuntimeError("watch stream broke")
        async for batch in super().watch_machine_schedule(machine_id, revision):
            yield batch


async def test_a_dead_task_is_restarted_and_shows_in_the_nodes_health_meanwhile(
    tasks: list[asyncio.Task[None]],
) -> None:
    registry = WatchFailsTwice()
    term = await engine_term(registry)
    manager = SimulatedManager()
    agent = Agent(registry, manager, MachineState(ME), FAST)
    agent.supervisor.min_delay = 0.1
    tasks.append(asyncio.create_task(agent.run()))
    problem = await wait_until_async(
        lambda: (agent.health_error() or "").startswith("task "), 5, "the failure in the node's health"
    )
    assert agent.health_error() == "task agent.schedule is restarting after: RuntimeError: watch stream broke"
    assert problem
    await wait_until_async(lambda: agent.health_error() is None and registry.failures == 2, 5, "the task back")
    await registry.apply_schedule(term, [(ME, scheduled("late.service"))], [])
    await wait_until_async(lambda: "late.service" in manager.starts, 5, "late.service started by the restarted task")
    assert agent.supervisor.tasks["agent.schedule"].restarts == 2


class KeepaliveSaysAlive(MemoryRegistry):
    """A registry whose keepalive claims every lease is alive (as a stale etcd member did
    after a leader was stopped and resumed)."""

    async def keepalive(self, lease: int) -> int:
        await super().keepalive(lease)
        return 30


async def test_an_expired_lease_is_noticed_even_when_keepalives_claim_it_lives(
    tasks: list[asyncio.Task[None]],
) -> None:
    registry = KeepaliveSaysAlive()
    term = await engine_term(registry)
    settings = Settings(agent_ttl=0.6, agent_reconcile_interval=30, debounce=0.001)  # a check every 0.6 s
    agent = await running(Agent(registry, SimulatedManager(), MachineState(ME), settings), tasks)
    await registry.apply_schedule(term, [(ME, scheduled("mine.service"))], [])
    await eventually(lambda: _states(registry), 5, "mine.service published")
    old = agent.status.lease
    registry.expire_lease(old)

    async def back() -> bool:
        return [m.id for m in await registry.machines()] == [ME] and await _states(registry) is not None

    await eventually(back, 5, "the agent to register and publish again")
    assert agent.status.lease != old


# -- bursts ------------------------------------------------------------------------------------


async def test_a_burst_of_placements_in_many_writes_is_loaded_and_started_in_one_pass(
    registry: MemoryRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    # The engine writes a burst in several transactions, a few milliseconds apart. The
    # agent must act once for all of them: one load (one daemon-reload on systemd, whose
    # cost grows with every unit it has loaded) and one batch of starts.
    quiet = 0.05
    settings = Settings(agent_ttl=30, engine_ttl=30, agent_reconcile_interval=30, debounce=quiet)
    term = await engine_term(registry)
    manager = RecordingManager()
    await running(Agent(registry, manager, MachineState(ME), settings), tasks)
    manager.log.clear()
    names = [f"u{i:03}.service" for i in range(200)]
    for chunk in range(8):  # lasts longer than the quiet window, with no gap as long
        await registry.apply_schedule(term, [(ME, scheduled(n)) for n in names[chunk * 25 : (chunk + 1) * 25]], [])
        await asyncio.sleep(quiet / 5)  # the engine's pace, part of the scenario
    await wait_until_async(lambda: len(manager.starts) == 200, 5, "200 units started")
    assert manager.log == [("load", names), ("start", names)]


class CountingStates(MemoryRegistry):
    """Counts the agent's writes of unit states."""

    def __init__(self) -> None:
        super().__init__()
        self.state_writes = 0

    async def publish_states(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.state_writes += 1
        return await super().publish_states(*args, **kwargs)


async def test_states_changing_all_through_a_burst_are_written_in_a_few_batches() -> None:
    # 200 units going activating -> active over ~0.4 s, a change every quiet/5: written
    # every quiet window that was ~20 small transactions; at most every PUBLISH_LIMIT,
    # a handful, and the last states are all there.
    from fleetd.agent.states import PUBLISH_LIMIT, StatePublisher
    from fleetd.model.state import SystemdState

    quiet = 0.02
    registry = CountingStates()
    lease = await registry.grant_lease(30)
    manager = SimulatedManager()
    names = [f"u{i:03}.service" for i in range(200)]
    await manager.load(dict.fromkeys(names, BODY))
    settings = Settings(agent_ttl=30, debounce=quiet)
    publisher = StatePublisher(registry, manager, ME, settings, lambda: lease)
    task = asyncio.create_task(publisher.run())
    try:
        started = asyncio.get_running_loop().time()
        for index in range(0, 200, 2):
            for name in names[index : index + 2]:
                publisher.changed(name, SystemdState("loaded", "activating", "start"))
            await asyncio.sleep(quiet / 5)  # systemd's pace, part of the scenario
            for name in names[index : index + 2]:
                publisher.changed(name, SystemdState("loaded", "active", "running"))
        lasted = asyncio.get_running_loop().time() - started

        async def all_active() -> bool:
            return sum(1 for s in await registry.unit_states() if s.active_state == "active") == 200

        await eventually(all_active, 5, "200 active states written")
        assert lasted > 4 * quiet
        assert registry.state_writes <= lasted / PUBLISH_LIMIT + 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
