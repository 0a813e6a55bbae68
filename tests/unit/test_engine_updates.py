"""Rolling updates driven by the engine leader, on the in-memory registry.

Machines are simulated by publishing unit states: a fake agent reports each instance with
its current body's hash, ``activating`` for a moment after a body change, then ``active``
(or ``failed`` for a body that cannot run). The tests wait for the record's outcome with
deadlines, and check what the engine wrote: units, revisions, the record, the history.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from fleetd.engine.engine import Engine
from fleetd.history import HistoryRecorder
from fleetd.model.history import EventKind
from fleetd.model.state import StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile, parse_unit_file
from fleetd.model.update import Phase, UpdateState, check_params
from fleetd.registry import MemoryRegistry
from fleetd.settings import Settings
from fleetlab.wait import eventually, wait_until_async

FAST = Settings(
    agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.05, engine_resync_interval=3600, debounce=0.001
)
OLD = parse_unit_file("[Service]\nExecStart=/bin/sleep 1000\n")
NEW = parse_unit_file("[Service]\nExecStart=/bin/sleep 2000\n")
BAD = parse_unit_file("[Service]\nExecStart=/bin/false\n")
NAMES = [f"web@{i}.service" for i in (1, 2, 3)]
MACHINE = "a" * 32


@dataclass
class FakeAgents:
    """Publishes a state for every instance: its body's hash, ``activating`` for
    ``start_delay`` seconds after the body changed, then ``active`` (``failed`` for a body
    running /bin/false). Records, at each look, how many instances were active."""

    registry: MemoryRegistry
    start_delay: float = 0.05
    lease: int = 0
    active_counts: list[int] = field(default_factory=list)

    async def run(self) -> None:
        self.lease = await self.registry.grant_lease(3600)
        seen: dict[str, tuple[str, float]] = {}
        published: dict[str, UnitState] = {}
        loop = asyncio.get_running_loop()
        while True:
            changed = []
            for name in NAMES:
                unit = await self.registry.get_unit(name)
                assert unit is not None
                digest = unit.file.hash()
                if seen.get(name, ("", 0.0))[0] != digest:
                    seen[name] = (digest, loop.time())
                state = _state(unit.file, loop.time() - seen[name][1] >= self.start_delay)
                new = UnitState(name, MACHINE, digest, "loaded", state, "running" if state == "active" else "dead")
                if published.get(name) != new:
                    published[name] = new
                    changed.append(new)
            if changed:
                await self.registry.publish_states(MACHINE, self.lease, changed)
            self.active_counts.append(sum(1 for s in published.values() if s.active_state == "active"))
            await asyncio.sleep(0.005)


def _state(file: UnitFile, started: bool) -> str:
    if not started:
        return "activating"
    return "failed" if "/bin/false" in file.contents else "active"


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[MemoryRegistry, FakeAgents]]:
    registry = MemoryRegistry()
    await registry.create_unit(StoredUnit("web@.service", OLD, DesiredState.INACTIVE, 1), False, "test")
    for name in NAMES:
        await registry.create_unit(StoredUnit(name, OLD, DesiredState.LAUNCHED, 1), False, "test")
    agents = FakeAgents(registry)
    task = asyncio.create_task(agents.run())
    try:
        yield registry, agents
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def engine(registry: MemoryRegistry, name: str = "e1") -> AsyncIterator[Engine]:
    runner = Engine(registry, name, FAST, history=HistoryRecorder(registry))
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def final_record(registry: MemoryRegistry, name: str = "web@.service", timeout: float = 10) -> object:
    async def done() -> object:
        found = await registry.get_update(name)
        return found[0] if found is not None and found[0].state.final else None

    return await eventually(done, timeout, f"the update of {name} to end", 0.01)


async def bodies(registry: MemoryRegistry) -> dict[str, tuple[str, int]]:
    found = {}
    for name in ["web@.service", *NAMES]:
        unit = await registry.get_unit(name)
        assert unit is not None
        found[name] = (unit.file.hash(), unit.revision)
    return found


async def test_a_rolling_update_replaces_one_instance_at_a_time_and_finishes(
    cluster: tuple[MemoryRegistry, FakeAgents],
) -> None:
    registry, agents = cluster
    await wait_until_async(lambda: agents.active_counts and agents.active_counts[-1] == 3, 5, "3 active")
    agents.active_counts.clear()  # from here on
    params = check_params(max_parallel=1, min_healthy=0.05, healthy_deadline=5)
    async with engine(registry) as runner:
        await registry.begin_update("web@.service", NEW, params, 1.0)
        record = await final_record(registry)
        history = list(runner.history.buffer)  # type: ignore[union-attr]
    assert record.state is UpdateState.FINISHED  # type: ignore[attr-defined]
    assert all(p.phase is Phase.HEALTHY for p in record.instances.values())  # type: ignore[attr-defined]
    # every instance and the template on the new body, each replaced once
    assert await bodies(registry) == {name: (NEW.hash(), 2) for name in ["web@.service", *NAMES]}
    kept = await registry.unit_revision("web@2.service", 2)
    assert kept is not None and kept.origin == "update"
    # never fewer than two active: one instance at a time was replaced
    assert min(agents.active_counts) == 2 and agents.active_counts[-1] == 3
    kinds = [(e.event, e.unit) for e in history]
    assert kinds[0] == (EventKind.UPDATE_STARTED, "web@.service")
    assert kinds[-1] == (EventKind.UPDATE_FINISHED, "web@.service")
    changed = [unit for kind, unit in kinds if kind is EventKind.REVISION_CHANGED]
    assert changed == [*NAMES, "web@.service"]


async def test_an_instance_that_is_not_healthy_in_time_reverts_what_was_changed(
    cluster: tuple[MemoryRegistry, FakeAgents],
) -> None:
    registry, _ = cluster
    params = check_params(max_parallel=2, min_healthy=0.05, healthy_deadline=0.5)
    async with engine(registry) as runner:
        await registry.begin_update("web@.service", BAD, params, 1.0)
        record = await final_record(registry)
        history = list(runner.history.buffer)  # type: ignore[union-attr]
    assert record.state is UpdateState.REVERTED  # type: ignore[attr-defined]
    assert "web@1.service was not healthy within 0.5s" in record.reason  # type: ignore[attr-defined]
    assert "failed" in record.reason  # type: ignore[attr-defined]
    now = await bodies(registry)
    # the two it changed went back (a third revision, the old body); the third and the
    # template were never touched
    assert now == {
        "web@.service": (OLD.hash(), 1),
        "web@1.service": (OLD.hash(), 3),
        "web@2.service": (OLD.hash(), 3),
        "web@3.service": (OLD.hash(), 1),
    }
    back = await registry.unit_revision("web@1.service", 3)
    assert back is not None and back.origin == "update revert"
    reverted = [e for e in history if e.event is EventKind.UPDATE_REVERTED]
    assert len(reverted) == 1 and "not healthy within" in reverted[0].reason


async def test_without_auto_revert_the_update_stops_and_leaves_the_instances(
    cluster: tuple[MemoryRegistry, FakeAgents],
) -> None:
    registry, _ = cluster
    params = check_params(max_parallel=1, min_healthy=0.05, healthy_deadline=0.3, auto_revert=False)
    async with engine(registry):
        await registry.begin_update("web@.service", BAD, params, 1.0)
        record = await final_record(registry)
    assert record.state is UpdateState.FAILED  # type: ignore[attr-defined]
    assert (await bodies(registry))["web@1.service"] == (BAD.hash(), 2)
    assert (await bodies(registry))["web@2.service"] == (OLD.hash(), 1)


async def test_a_new_leader_resumes_the_update_from_its_record_without_doubling_a_step(
    cluster: tuple[MemoryRegistry, FakeAgents],
) -> None:
    registry, agents = cluster
    agents.start_delay = 0.2
    params = check_params(max_parallel=1, min_healthy=0.1, healthy_deadline=10)
    async with engine(registry, "e1") as first:
        await wait_until_async(first.leading.is_set, 5, "e1 to lead")
        await registry.begin_update("web@.service", NEW, params, 1.0)

        async def one_done() -> bool:
            found = await registry.get_update("web@.service")
            return found is not None and found[0].counts()["healthy"] >= 1

        await eventually(one_done, 10, "one instance updated", 0.01)
        lease = first.leadership.lease  # type: ignore[union-attr]
        async with engine(registry, "e2") as second:
            # e1's lease ends (partitioned, say): e2 takes over; e1's next step is refused
            registry.expire_lease(lease)
            await wait_until_async(lambda: second.leading.is_set(), 5, "e2 to lead")
            record = await final_record(registry)
            assert second.updater is not None and second.updater.steps >= 1
    assert record.state is UpdateState.FINISHED  # type: ignore[attr-defined]
    # each instance was replaced exactly once, whoever led
    assert await bodies(registry) == {name: (NEW.hash(), 2) for name in ["web@.service", *NAMES]}
    assert [r.revision for r in await registry.revisions("web@1.service")] == [1, 2]


async def test_an_unreadable_record_is_reported_and_other_updates_go_on(
    cluster: tuple[MemoryRegistry, FakeAgents], caplog: pytest.LogCaptureFixture
) -> None:
    registry, _ = cluster
    registry.corrupt_update("db.service")
    params = check_params(max_parallel=3, min_healthy=0, healthy_deadline=5)
    async with engine(registry) as runner:
        await registry.begin_update("web@.service", NEW, params, 1.0)
        record = await final_record(registry)
        assert runner.leading.is_set()
    assert record.state is UpdateState.FINISHED  # type: ignore[attr-defined]
    assert "rolling update of db.service: unreadable record" in caplog.text


async def test_the_leader_exports_how_many_updates_are_in_progress(cluster: tuple[MemoryRegistry, FakeAgents]) -> None:
    registry, _ = cluster
    params = check_params(max_parallel=1, min_healthy=0.3, healthy_deadline=10)
    async with engine(registry) as runner:
        runner.metrics.engine = runner

        def gauge() -> float | None:
            return runner.metrics.registry.get_sample_value("fleet_engine_updates_in_progress")

        await wait_until_async(lambda: gauge() == 0, 5, "the leader to export 0 updates")
        await registry.begin_update("web@.service", NEW, params, 1.0)
        await wait_until_async(lambda: gauge() == 1, 5, "one update in progress")
        await final_record(registry)
        await wait_until_async(lambda: gauge() == 0, 5, "none in progress once it finished")


async def test_an_update_of_many_instances_goes_a_step_at_a_time_and_reads_their_states_at_once() -> None:
    from fleetd.engine.updates import FEW, Updater
    from fleetd.model.update import STEP_UNITS

    registry = MemoryRegistry()
    names = [f"big@{i}.service" for i in range(1, 2 * STEP_UNITS + 1)]
    assert len(names) > FEW
    for name in names:
        await registry.create_unit(StoredUnit(name, OLD, DesiredState.LAUNCHED, 1), False, "test")
    lease = await registry.grant_lease(600)
    leadership = await registry.acquire_leadership("e1", lease)
    assert leadership is not None
    now = [100.0]
    updater = Updater(registry, leadership, None, clock=lambda: now[0])
    params = check_params(max_parallel=len(names), min_healthy=1, healthy_deadline=60)
    await registry.begin_update("big@.service", NEW, params, now[0])

    async def counts() -> dict[str, int]:
        found = await registry.get_update("big@.service")
        assert found is not None
        return found[0].counts()

    await updater.pass_once()
    assert (await counts())["updating"] == STEP_UNITS  # one transaction's worth
    await updater.pass_once()
    assert (await counts())["updating"] == len(names)
    active = [UnitState(name, MACHINE, NEW.hash(), "loaded", "active", "running") for name in names]
    await registry.publish_states(MACHINE, lease, active)
    requests = registry.requests
    await updater.pass_once()  # seen active: the clock starts
    assert registry.requests - requests < 10  # the states in one read, not one each
    now[0] += 1.5
    await updater.pass_once()  # healthy, and the update finishes
    await updater.pass_once()
    found = await registry.get_update("big@.service")
    assert found is not None and found[0].state is UpdateState.FINISHED
    assert {(await registry.get_unit(name)).revision for name in names} == {2}  # type: ignore[union-attr]
