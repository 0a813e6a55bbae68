"""The engine loop on the in-memory registry: election, step-down, fencing, resync,
unplaceable reasons and machine loss, in milliseconds and without etcd.

The fake's time does not pass: a lease ends when a test says so, so every scenario is
driven by the event it is about, and the tests wait for its consequence with a deadline.
The contract suite (tests/integration/test_registry_contract.py) keeps the fake honest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fleetd.engine.engine import Engine
from fleetd.model.state import MachineState, StoredUnit
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry import MemoryRegistry, Resync, UnitEvent
from fleetd.settings import Settings
from fleetlab.simcluster import SimCluster
from fleetlab.wait import eventually, wait_until_async

FAST = Settings(
    agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.05, engine_resync_interval=3600, debounce=0.001
)
SLEEP = "[Service]\nExecStart=/bin/sleep infinity\n"
BODY = parse_unit_file(SLEEP)


def fleet(*lines: str) -> str:
    return SLEEP + "[X-Fleet]\n" + "".join(line + "\n" for line in lines)


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    cluster = SimCluster.in_memory(FAST)
    try:
        yield cluster
    finally:
        await cluster.close()


async def leader_of(sim: SimCluster) -> Engine:
    found = await wait_until_async(sim.leader, 5, "an engine to lead")
    return found.engine


async def placed(registry: MemoryRegistry, name: str) -> list[str] | None:
    return (await registry.placements()).get(name)


# -- election -----------------------------------------------------------------------------


async def test_one_engine_leads_and_a_standby_takes_over_when_its_lease_ends(sim: SimCluster) -> None:
    first = await sim.add_engine("e1")
    await leader_of(sim)
    second = await sim.add_engine("e2")
    await asyncio.sleep(0.05)  # the standby had time to (wrongly) claim leadership
    assert sim.leader() is first and not second.engine.leading.is_set()
    assert await sim.memory.leader() == "e1"  # type: ignore[union-attr]
    lease = first.engine.leadership.lease  # type: ignore[union-attr]
    await sim.crash_engine(first)
    sim.memory.expire_lease(lease)  # type: ignore[union-attr]
    assert await leader_of(sim) is second.engine
    assert await sim.memory.leader() == "e2"  # type: ignore[union-attr]


async def test_a_leader_whose_lease_ends_steps_down_and_campaigns_again() -> None:
    settings = Settings(engine_ttl=0.6, agent_ttl=30, engine_reconcile_interval=0.05, debounce=0.001)
    sim = SimCluster.in_memory(settings)
    try:
        engine = (await sim.add_engine("e1")).engine
        await leader_of(sim)
        first_term = engine.leadership.create_revision  # type: ignore[union-attr]
        sim.memory.expire_lease(engine.leadership.lease)  # type: ignore[union-attr]
        # its keepalive (every 0.2 s) finds the lease gone: a new term, with a new proof
        await wait_until_async(lambda: engine.stats.terms == 2 and engine.leading.is_set(), 5, "a second term")
        assert engine.leadership is not None and engine.leadership.create_revision != first_term
    finally:
        await sim.close()


# -- fencing -----------------------------------------------------------------------------------


async def test_a_deposed_engine_cannot_write(sim: SimCluster) -> None:
    registry = sim.memory
    assert registry is not None
    await sim.add_machine()
    deposed = (await sim.add_engine("old")).engine
    await leader_of(sim)
    # Its lease ends and another engine wins before the old one notices (a partition):
    # its keepalive is 10 s away, its watches still deliver, so it will try to plan.
    registry.expire_lease(deposed.leadership.lease)  # type: ignore[union-attr]
    usurper = await registry.acquire_leadership("new", await registry.grant_lease(30))
    assert usurper is not None
    await registry.create_unit(StoredUnit("a.service", BODY, DesiredState.LAUNCHED), is_global=False)
    await wait_until_async(lambda: not deposed.leading.is_set(), 5, "the deposed engine to step down")
    assert await registry.placements() == {}
    assert await registry.leader() == "new"
    assert deposed.stats.writes == 0


# -- placing and reasons -------------------------------------------------------------------------


async def test_units_spread_and_unplaceable_ones_say_why_until_a_machine_fits(sim: SimCluster) -> None:
    registry = sim.memory
    assert registry is not None
    for region in ("us", "us", "eu"):
        await sim.add_machine({"region": region})
    await sim.add_engine()
    for i in range(6):
        await sim.submit(f"web{i}.service", SLEEP)
    await sim.submit("ap.service", fleet("MachineMetadata=region=ap"))
    await wait_until_async(lambda: len(sim.placement()) == 6, 5, "6 units running")
    assert sorted(len([n for n, ids in sim.placement().items() if m in ids]) for m in sim.machines) == [2, 2, 2]
    reason = await eventually(lambda: _reason(registry, "ap.service"), 5, "a reason for ap.service")
    assert "region=ap" in reason
    machine = await sim.add_machine({"region": "ap"})
    await wait_until_async(lambda: sim.where("ap.service") == [machine.id], 5, "ap.service placed on the new machine")
    assert await registry.unplaceable() == {}


async def _reason(registry: MemoryRegistry, name: str) -> str | None:
    return (await registry.unplaceable()).get(name)


async def test_an_invalid_unit_is_reported_and_the_others_still_placed(sim: SimCluster) -> None:
    registry = sim.memory
    assert registry is not None
    await sim.add_machine()
    await sim.add_engine()
    bad = parse_unit_file(fleet("MachineID=abc", "MachineOf=x.service"))  # a refused combination
    await registry.create_unit(StoredUnit("bad.service", bad, DesiredState.LAUNCHED), is_global=False)
    await sim.submit("good.service", SLEEP)
    await wait_until_async(lambda: sim.where("good.service"), 5, "good.service running")
    reason = await eventually(lambda: _reason(registry, "bad.service"), 5, "a reason for bad.service")
    assert reason.startswith("invalid unit")


async def test_machine_loss_moves_only_its_units(sim: SimCluster) -> None:
    for _ in range(3):
        await sim.add_machine()
    await sim.add_engine()
    for i in range(6):
        await sim.submit(f"app{i}.service", SLEEP)
    await wait_until_async(lambda: len(sim.placement()) == 6, 5, "6 units running")
    before = sim.placement()
    victim = next(iter(sim.machines))
    await sim.expire_machine(victim)
    await wait_until_async(
        lambda: len(sim.placement()) == 6 and all(victim not in ids for ids in sim.placement().values()),
        5,
        "the lost machine's units to run elsewhere",
    )
    after = sim.placement()
    assert all(after[name] == ids for name, ids in before.items() if victim not in ids)


async def test_desired_state_changes_follow_through_to_the_machine(sim: SimCluster) -> None:
    registry = sim.memory
    assert registry is not None
    machine = await sim.add_machine()
    await sim.add_engine()
    await sim.submit("svc.service", SLEEP)
    await wait_until_async(lambda: sim.where("svc.service"), 5, "svc.service running")
    await registry.set_desired_state("svc.service", DesiredState.LOADED)
    await wait_until_async(lambda: not sim.where("svc.service"), 5, "svc.service stopped")
    assert "svc.service" in machine.manager.files
    await registry.destroy_unit("svc.service")
    await wait_until_async(lambda: "svc.service" not in machine.manager.files, 5, "svc.service unloaded")
    assert await registry.placements() == {}


# -- resync ------------------------------------------------------------------------------------


class CompactedOnce(MemoryRegistry):
    """A registry whose first unit watch finds its history compacted."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.compacted_watches = 0

    async def read_cluster(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().read_cluster()

    async def watch_units(self, revision: int) -> AsyncIterator[list[UnitEvent]]:
        if self.compacted_watches == 0:
            self.compacted_watches += 1
            raise Resync(revision)
        async for batch in super().watch_units(revision):
            yield batch


async def test_a_compacted_watch_makes_the_leader_reload() -> None:
    registry = CompactedOnce()
    engine = Engine(registry, "e1", FAST)
    task = asyncio.create_task(engine.run())
    try:
        await wait_until_async(lambda: engine.stats.terms >= 2 and engine.leading.is_set(), 5, "a reloaded term")
        assert registry.reads >= 2
        lease = await registry.grant_lease(30)
        await registry.register_machine(MachineState("m" * 32), lease)
        await registry.create_unit(StoredUnit("a.service", BODY, DesiredState.LAUNCHED), is_global=False)
        assert await eventually(lambda: placed(registry, "a.service"), 5, "a.service placed") == ["m" * 32]
    finally:
        engine.stop()
        await asyncio.wait_for(task, 5)


async def test_the_timer_rereads_everything_every_resync_interval() -> None:
    registry = CompactedOnce()
    registry.compacted_watches = 1  # no failure here: only the timer
    settings = Settings(engine_ttl=30, engine_reconcile_interval=0.02, engine_resync_interval=0.05, debounce=0.001)
    engine = Engine(registry, "e1", settings)
    task = asyncio.create_task(engine.run())
    try:
        await wait_until_async(lambda: registry.reads >= 3, 5, "three full reads")
        assert engine.stats.terms == 1  # a resync is a re-read, not a new term
    finally:
        engine.stop()
        await asyncio.wait_for(task, 5)


async def test_a_steady_cluster_is_not_rewritten(sim: SimCluster) -> None:
    registry = sim.memory
    assert registry is not None
    await sim.add_machine()
    engine = (await sim.add_engine()).engine
    await sim.submit("a.service", SLEEP)
    await wait_until_async(lambda: sim.where("a.service"), 5, "a.service running")
    writes, revision = engine.stats.writes, registry.revision
    engine.view.force_resync = True  # a full re-read of an unchanged cluster ...
    engine._dirty.set()
    await wait_until_async(lambda: not engine.view.force_resync, 5, "the re-read")
    await asyncio.sleep(0.05)
    assert engine.stats.writes == writes  # ... writes nothing
    assert all(c.key[0] == "states" for c in registry._history if c.revision > revision)


# -- bursts ------------------------------------------------------------------------------------


class CountingSchedule(MemoryRegistry):
    """Counts the engine's schedule writes (one ``apply_schedule`` per planning pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.applies = 0

    async def apply_schedule(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.applies += 1
        return await super().apply_schedule(*args, **kwargs)


async def test_a_burst_written_in_many_transactions_is_placed_in_one_pass() -> None:
    # fleetctl's 1,000 units reach etcd in many transactions, a few milliseconds apart;
    # the engine must wait for the burst to end and place it all at once (one pass, one
    # schedule write), or every agent gets its share in slices, one daemon-reload each.
    quiet = 0.05
    settings = Settings(
        agent_ttl=30, engine_ttl=30, engine_reconcile_interval=5, engine_resync_interval=3600, debounce=quiet
    )
    registry = CountingSchedule()
    lease = await registry.grant_lease(30)
    machines = [str(i) * 32 for i in range(3)]
    for machine in machines:
        await registry.register_machine(MachineState(machine), lease)
    engine = Engine(registry, "e1", settings)
    task = asyncio.create_task(engine.run())
    try:
        await wait_until_async(lambda: engine.leading.is_set() and engine.stats.plans >= 1, 5, "the first pass")
        plans, applies = engine.stats.plans, registry.applies
        # 8 transactions of 50 units, quiet/5 apart: the burst lasts longer than the
        # quiet window, but no gap in it is as long
        for chunk in range(8):
            names = [f"u{chunk}-{i}.service" for i in range(50)]
            await registry.create_units((StoredUnit(n, BODY, DesiredState.LAUNCHED), False) for n in names)
            await asyncio.sleep(quiet / 5)  # the writer's pace, part of the scenario

        async def all_placed() -> bool:
            return len(await registry.placements()) == 400

        await eventually(all_placed, 5, "400 units placed")
        assert engine.stats.plans - plans == 1
        assert registry.applies - applies == 1
        assert engine.stats.settle_windows > engine.stats.plans  # it did wait the burst out
        placements = await registry.placements()
        counts = sorted(sum(1 for ids in placements.values() if m in ids) for m in machines)
        assert counts == [133, 133, 134]
    finally:
        engine.stop()
        await asyncio.wait_for(task, 5)


def test_a_passes_placements_are_written_grouped_by_machine() -> None:
    # each agent then finds its whole share in as few etcd transactions as possible
    from fleetd.engine.reconcile import ClusterView, schedule_changes
    from fleetd.registry import MachineEvent

    view = ClusterView()
    for machine in ("b" * 32, "a" * 32, "c" * 32):
        view.apply_machine(MachineEvent(machine, MachineState(machine)))
    for i in range(30):
        unit = StoredUnit(f"u{i:02}.service", BODY, DesiredState.LAUNCHED)
        view.apply_unit(UnitEvent(unit.name, unit))
    machines = [machine for machine, _ in schedule_changes(view, {}).puts]
    assert len(machines) == 30
    assert machines == sorted(machines)
