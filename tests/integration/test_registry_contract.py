"""The registry contract: the same cases against the in-memory fake and a real etcd.

The engine and agent loops are unit-tested on :class:`MemoryRegistry`; these cases are
what makes that worth something. Each runs twice, once per implementation, and a case
that passes on one and fails on the other means the fake has drifted from etcd.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from fleetd.model.batch import BatchError
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.submit import Action, Refusal, SubmitError, submission
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry import (
    LeaseNotFound,
    MachineIdInUse,
    MachineNotFound,
    MemoryRegistry,
    NotLeader,
    PlacementEvent,
    Registry,
    Resync,
    UnitEvent,
    UnitExists,
    UnitNotFound,
    UnreadableRecord,
)
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import EtcdRegistry, connect
from fleetd.registry.keys import Keys
from fleetlab.etcd import EtcdCluster

T = TypeVar("T")

BODY = parse_unit_file("[Service]\nExecStart=/bin/sleep infinity\n")
OTHER_BODY = parse_unit_file("[Service]\nExecStart=/bin/sleep 1000\n")
GLOBAL_BODY = parse_unit_file("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n")
M1, M2 = "1" * 32, "2" * 32


def unit(name: str, desired: DesiredState = DesiredState.INACTIVE, body: Any = BODY) -> StoredUnit:
    return StoredUnit(name, body, desired)


@dataclass
class Backend:
    """One implementation under test, with the things only a test may do to it."""

    registry: Registry
    compact: Callable[[], Any]
    corrupt_unit: Callable[[str], Any]
    corrupt_peer_secret: Callable[[], Any]


async def _compact_etcd(registry: EtcdRegistry) -> None:
    etcd = registry._etcd
    await (await etcd.client()).compact(await etcd.revision())


@pytest.fixture(params=["memory", "etcd"])
async def backend(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Backend]:
    if request.param == "memory":
        memory = MemoryRegistry()

        async def compact_memory() -> None:
            memory.compact()

        async def corrupt_memory(name: str) -> None:
            memory.corrupt_unit(name)

        async def corrupt_memory_secret() -> None:
            memory.corrupt_peer_secret("peer secret: 3 bytes, at least 32 are needed")

        yield Backend(memory, compact_memory, corrupt_memory, corrupt_memory_secret)
        return
    request.applymarker(pytest.mark.integration)
    cluster: EtcdCluster = request.getfixturevalue("etcd")
    registry = connect(EtcdConfig(endpoints=tuple(cluster.endpoints), request_timeout=5), key_prefix)

    async def corrupt_etcd(name: str) -> None:
        await registry._etcd.put(Keys(key_prefix).unit(name), b"[]")

    async def corrupt_etcd_secret() -> None:
        await registry._etcd.put(Keys(key_prefix).peer_secret, b"YWJj")  # "abc": far too short

    try:
        yield Backend(registry, lambda: _compact_etcd(registry), corrupt_etcd, corrupt_etcd_secret)
    finally:
        await registry.close()


@pytest.fixture
def registry(backend: Backend) -> Registry:
    return backend.registry


async def next_batch(events: AsyncIterator[list[T]]) -> list[T]:
    async with asyncio.timeout(10):
        return await anext(events)


async def collect(events: AsyncIterator[list[T]], count: int) -> list[T]:
    """The next ``count`` events, however the implementation batches them."""
    found: list[T] = []
    while len(found) < count:
        found.extend(await next_batch(events))
    return found


# -- units ----------------------------------------------------------------------------------


async def test_create_refuses_duplicates_and_leaves_the_original(registry: Registry) -> None:
    await registry.create_unit(unit("a.service"), is_global=False)
    with pytest.raises(UnitExists):
        await registry.create_unit(StoredUnit("a.service", GLOBAL_BODY, DesiredState.LAUNCHED), is_global=True)
    assert await registry.get_unit("a.service") == unit("a.service")
    assert (await registry.global_units())[0] == {}


async def test_units_are_listed_by_name(registry: Registry) -> None:
    for name in ("b.service", "a.service", "c@1.service"):
        await registry.create_unit(unit(name), is_global=False)
    assert [u.name for u in await registry.units()] == ["a.service", "b.service", "c@1.service"]
    assert await registry.get_unit("missing.service") is None


async def test_desired_state_reaches_the_global_copy(registry: Registry) -> None:
    await registry.create_unit(StoredUnit("g.service", GLOBAL_BODY, DesiredState.INACTIVE), is_global=True)
    updated = await registry.set_desired_state("g.service", DesiredState.LAUNCHED)
    assert updated.desired is DesiredState.LAUNCHED
    globals_, _ = await registry.global_units()
    assert globals_["g.service"].desired is DesiredState.LAUNCHED
    assert (await registry.get_unit("g.service")) == updated
    with pytest.raises(UnitNotFound):
        await registry.set_desired_state("missing.service", DesiredState.LOADED)


async def test_destroy_removes_unit_and_global_copy(registry: Registry) -> None:
    await registry.create_unit(StoredUnit("g.service", GLOBAL_BODY, DesiredState.INACTIVE), is_global=True)
    assert await registry.destroy_unit("g.service")
    assert await registry.get_unit("g.service") is None
    assert (await registry.global_units())[0] == {}
    assert not await registry.destroy_unit("g.service")


async def test_replace_swaps_the_body_and_the_global_copy(registry: Registry) -> None:
    await registry.create_unit(StoredUnit("g.service", GLOBAL_BODY, DesiredState.LAUNCHED), is_global=True)
    await registry.replace_unit(unit("g.service", DesiredState.LAUNCHED, OTHER_BODY), is_global=False)
    assert await registry.get_unit("g.service") == unit("g.service", DesiredState.LAUNCHED, OTHER_BODY)
    assert (await registry.global_units())[0] == {}
    await registry.replace_unit(unit("new.service"), is_global=False)  # replace creates
    assert await registry.get_unit("new.service") == unit("new.service")


async def test_bulk_create_skips_existing_units(registry: Registry) -> None:
    await registry.create_unit(unit("u0007.service", DesiredState.LAUNCHED), is_global=False)
    await registry.create_units((unit(f"u{i:04}.service"), False) for i in range(300))
    units = await registry.units()
    assert len(units) == 300
    assert next(u for u in units if u.name == "u0007.service").desired is DesiredState.LAUNCHED


# -- leases and machines ----------------------------------------------------------------------


async def test_machine_registration_refuses_a_live_duplicate(registry: Registry) -> None:
    lease_a = await registry.grant_lease(30)
    lease_b = await registry.grant_lease(30)
    await registry.register_machine(MachineState(M1, "10.0.0.1", {"region": "eu"}), lease_a)
    # the same lease may re-register (a metadata change)
    await registry.register_machine(MachineState(M1, "10.0.0.1", {"region": "us"}), lease_a)
    with pytest.raises(MachineIdInUse, match="already registered.*10.0.0.1"):
        await registry.register_machine(MachineState(M1, "10.0.0.2", {}), lease_b)
    assert [m.metadata for m in await registry.machines()] == [{"region": "us"}]
    assert await registry.machine_lease(M1) == lease_a
    await registry.revoke_lease(lease_a)
    assert await registry.machine_lease(M1) == 0
    await registry.register_machine(MachineState(M1, "10.0.0.2", {}), lease_b)
    assert [m.public_ip for m in await registry.machines()] == ["10.0.0.2"]


async def test_a_lease_carries_its_machine_and_states_away(registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    assert await registry.keepalive(lease) > 0
    await registry.register_machine(MachineState(M2), lease)
    states = [UnitState(n, M2, "h", "loaded", "active", "running") for n in ("x.service", "y.service")]
    await registry.publish_states(M2, lease, states)
    assert await registry.unit_states() == states
    assert await registry.unit_states("y.service") == states[1:]
    await registry.publish_states(M2, lease, [], removed=["x.service"])
    assert await registry.unit_states() == states[1:]
    await registry.revoke_lease(lease)
    assert await registry.machines() == []
    assert await registry.unit_states() == []
    assert await registry.keepalive(lease) == 0
    with pytest.raises(LeaseNotFound):  # a write on the ended lease says so, by its type
        await registry.publish_states(M2, lease, states)
    with pytest.raises(LeaseNotFound):
        await registry.register_machine(MachineState(M2), lease)
    await registry.revoke_lease(lease)  # revoking twice is harmless


async def test_machine_watch_sees_join_and_loss(registry: Registry) -> None:
    read = await registry.read_cluster()
    events = registry.watch_machines(read.revision + 1)
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(M1, "10.0.0.1"), lease)
    joined = await collect(events, 1)
    assert [(e.machine_id, e.machine) for e in joined] == [(M1, MachineState(M1, "10.0.0.1"))]
    await registry.revoke_lease(lease)
    lost = await collect(events, 1)
    assert [(e.machine_id, e.deleted) for e in lost] == [(M1, True)]
    await events.aclose()  # type: ignore[attr-defined]


async def test_dynamic_metadata_is_followed(registry: Registry) -> None:
    assert await registry.dynamic_metadata(M1) == {}
    follow = registry.follow_dynamic_metadata(M1)
    assert await anext(follow) == {}
    assert await registry.update_dynamic_metadata(M1, {"role": "web", "zone": "a"}) == {"role": "web", "zone": "a"}
    async with asyncio.timeout(10):
        assert await anext(follow) == {"role": "web", "zone": "a"}
    assert await registry.update_dynamic_metadata(M1, {}, remove=["role"]) == {"zone": "a"}
    async with asyncio.timeout(10):
        assert await anext(follow) == {"zone": "a"}
    await registry.update_dynamic_metadata(M1, {}, remove=["zone"])
    async with asyncio.timeout(10):
        assert await anext(follow) == {}
    assert await registry.dynamic_metadata(M1) == {}
    assert await registry.all_dynamic_metadata() == {}
    await registry.update_dynamic_metadata(M1, {"a": "1"})
    await registry.update_dynamic_metadata(M2, {"b": "2"})
    assert await registry.all_dynamic_metadata() == {M1: {"a": "1"}, M2: {"b": "2"}}
    await follow.aclose()  # type: ignore[attr-defined]


# -- leadership and the schedule --------------------------------------------------------------


async def test_leadership_fences_a_deposed_engine(registry: Registry) -> None:
    lease1 = await registry.grant_lease(30)
    lease2 = await registry.grant_lease(30)
    first = await registry.acquire_leadership("m1", lease1)
    assert first is not None and await registry.leader() == "m1"
    assert await registry.acquire_leadership("m2", lease2) is None
    await registry.apply_schedule(first, [("m1", ScheduledUnit("a.service", BODY, DesiredState.LAUNCHED))], [])
    assert await registry.placements() == {"a.service": ["m1"]}
    await registry.revoke_lease(lease1)  # the first engine's lease ends; m2 takes over
    async with asyncio.timeout(10):
        await registry.wait_leader_vacant()
    second = await registry.acquire_leadership("m2", lease2)
    assert second is not None and await registry.leader() == "m2"
    with pytest.raises(NotLeader):
        await registry.apply_schedule(first, [("m1", unit("b.service"))], [("m1", "a.service")])
    assert await registry.placements() == {"a.service": ["m1"]}
    # even the same machine winning again is a new term: an old proof stays fenced
    await registry.revoke_lease(lease2)
    third = await registry.acquire_leadership("m1", await registry.grant_lease(30))
    assert third is not None and third.create_revision != first.create_revision
    with pytest.raises(NotLeader):
        await registry.apply_schedule(first, [], [("m1", "a.service")])
    await registry.apply_schedule(third, [], [("m1", "a.service")])
    assert await registry.placements() == {}


async def test_wait_leader_vacant_returns_when_the_leader_goes(registry: Registry) -> None:
    await registry.wait_leader_vacant()  # nobody leads: at once
    lease = await registry.grant_lease(30)
    assert await registry.acquire_leadership("m1", lease) is not None
    waiter = asyncio.ensure_future(registry.wait_leader_vacant())
    await asyncio.sleep(0.2)  # give a wrong implementation the chance to return early
    assert not waiter.done()
    await registry.revoke_lease(lease)
    async with asyncio.timeout(10):
        await waiter
    assert await registry.leader() is None


async def test_schedule_reasons_and_watches(registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    leadership = await registry.acquire_leadership("m1", lease)
    assert leadership is not None
    schedule, revision = await registry.machine_schedule(M1)
    assert schedule == {}
    mine = registry.watch_machine_schedule(M1, revision + 1)
    everything = registry.watch_placements(revision + 1)
    a = ScheduledUnit("a.service", BODY, DesiredState.LAUNCHED)
    b = ScheduledUnit("b.service", BODY, DesiredState.LOADED)
    await registry.apply_schedule(leadership, [(M1, a), (M2, b)], [], {"c.service": "no machine matches"})
    assert await registry.unplaceable() == {"c.service": "no machine matches"}
    assert await registry.placements() == {"a.service": [M1], "b.service": [M2]}
    assert (await registry.machine_schedule(M1))[0] == {"a.service": a}
    assert await collect(mine, 1) == [PlacementEvent(M1, "a.service", a)]
    assert sorted(await collect(everything, 2), key=lambda e: e.name) == [
        PlacementEvent(M1, "a.service", a),
        PlacementEvent(M2, "b.service", b),
    ]
    # a move: the delete and the put land together, deletes first
    await registry.apply_schedule(leadership, [(M1, b)], [(M2, "b.service")], {"c.service": None})
    assert await registry.unplaceable() == {}
    assert await collect(everything, 2) == [PlacementEvent(M2, "b.service"), PlacementEvent(M1, "b.service", b)]
    assert await collect(mine, 1) == [PlacementEvent(M1, "b.service", b)]
    await mine.aclose()  # type: ignore[attr-defined]
    await everything.aclose()  # type: ignore[attr-defined]


async def test_read_cluster_then_watch_misses_nothing(registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(M1), lease)
    await registry.create_unit(unit("a.service", DesiredState.LAUNCHED), is_global=False)
    read = await registry.read_cluster()
    assert [(e.name, e.unit) for e in read.units] == [("a.service", unit("a.service", DesiredState.LAUNCHED))]
    assert [e.machine_id for e in read.machines] == [M1]
    assert read.placements == []
    events = registry.watch_units(read.revision + 1)
    await registry.create_unit(unit("b.service"), is_global=False)
    await registry.set_desired_state("b.service", DesiredState.LOADED)
    await registry.destroy_unit("a.service")
    await registry.destroy_unit("a.service")  # deleting what is gone is no event
    await registry.create_unit(unit("c.service"), is_global=False)
    seen = await collect(events, 4)
    assert seen == [
        UnitEvent("b.service", unit("b.service")),
        UnitEvent("b.service", unit("b.service", DesiredState.LOADED)),
        UnitEvent("a.service"),
        UnitEvent("c.service", unit("c.service")),
    ]
    assert seen[2].deleted
    await events.aclose()  # type: ignore[attr-defined]


async def test_global_unit_watch(registry: Registry) -> None:
    _, revision = await registry.global_units()
    events = registry.watch_global_units(revision + 1)
    await registry.create_unit(unit("plain.service"), is_global=False)  # not a global: no event
    g = StoredUnit("g.service", GLOBAL_BODY, DesiredState.LAUNCHED)
    await registry.create_unit(g, is_global=True)
    await registry.destroy_unit("g.service")
    assert await collect(events, 2) == [UnitEvent("g.service", g), UnitEvent("g.service")]
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_watch_from_compacted_history_asks_for_resync(backend: Backend) -> None:
    registry = backend.registry
    start = (await registry.read_cluster()).revision
    for i in range(3):
        await registry.create_unit(unit(f"u{i}.service"), is_global=False)
    await backend.compact()
    with pytest.raises(Resync):
        await collect(registry.watch_units(start + 1), 3)
    # from the current revision on, watching works again
    fresh = registry.watch_units((await registry.read_cluster()).revision + 1)
    await registry.create_unit(unit("after.service"), is_global=False)
    assert [e.name for e in await collect(fresh, 1)] == ["after.service"]
    await fresh.aclose()  # type: ignore[attr-defined]


async def test_submit_creates_instances_from_templates_and_changes_desired_state(registry: Registry) -> None:
    options = [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep %i"}]
    made = await registry.submit(submission("web@.service", DesiredState.INACTIVE, options))
    assert made.action is Action.CREATE
    instance = await registry.submit(submission("web@1.service", DesiredState.LAUNCHED, None))
    assert instance.action is Action.CREATE  # built from its template
    stored = await registry.get_unit("web@1.service")
    assert stored is not None and stored.desired is DesiredState.LAUNCHED
    assert stored.file.get("Service", "ExecStart") == "/bin/sleep %i"
    stopped = await registry.submit(submission("web@1.service", DesiredState.LOADED, None))
    assert stopped.action is Action.SET_DESIRED
    assert (await registry.get_unit("web@1.service")).desired is DesiredState.LOADED  # type: ignore[union-attr]
    with pytest.raises(SubmitError):
        await registry.submit(submission("nothing.service", DesiredState.LAUNCHED, None))


async def test_metadata_of_several_machines_changes_all_at_once_or_not_at_all(registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(M1), lease)
    await registry.register_machine(MachineState(M2), lease)
    await registry.update_dynamic_metadata(M2, {"old": "x"})
    result = await registry.update_machines_metadata({M1: ({"role": "web"}, []), M2: ({"zone": "a"}, ["old"])})
    assert result == {M1: {"role": "web"}, M2: {"zone": "a"}}
    assert await registry.dynamic_metadata(M1) == {"role": "web"}
    assert await registry.dynamic_metadata(M2) == {"zone": "a"}
    with pytest.raises(MachineNotFound, match="3" * 32):
        await registry.update_machines_metadata({M1: ({"role": "db"}, []), "3" * 32: ({"role": "db"}, [])})
    assert await registry.dynamic_metadata(M1) == {"role": "web"}  # nothing of the refused request
    assert await registry.dynamic_metadata("3" * 32) == {}
    await registry.update_machines_metadata({M1: ({}, ["role"])})
    assert await registry.dynamic_metadata(M1) == {}


async def test_an_unreadable_unit_is_listed_as_such_refused_for_changes_and_destroyable(backend: Backend) -> None:
    registry = backend.registry
    read = await registry.read_cluster()
    events = registry.watch_units(read.revision + 1)
    await backend.corrupt_unit("bad.service")
    await registry.create_unit(unit("good.service"), is_global=False)
    units, errors = await registry.units_with_errors()
    assert [u.name for u in units] == ["good.service"] and list(errors) == ["bad.service"]
    assert await registry.units() == units
    with pytest.raises(UnreadableRecord, match="destroy"):
        await registry.get_unit("bad.service")
    with pytest.raises(UnreadableRecord):
        await registry.set_desired_state("bad.service", DesiredState.LAUNCHED)
    with pytest.raises(UnitExists):
        await registry.create_unit(unit("bad.service"), is_global=False)
    seen = await collect(events, 2)
    assert seen[0].name == "bad.service" and seen[0].unit is None and seen[0].error and not seen[0].deleted
    assert [e.error for e in (await registry.read_cluster()).units if e.name == "bad.service"] == [seen[0].error]
    assert await registry.destroy_unit("bad.service")
    assert await registry.units_with_errors() == ([unit("good.service")], {})
    await registry.create_unit(unit("bad.service"), is_global=False)  # the name is free again
    await events.aclose()  # type: ignore[attr-defined]


# -- between fleetds ------------------------------------------------------------------------


async def test_the_peer_secret_is_created_once_and_shared(backend: Backend) -> None:
    registry = backend.registry
    first, second = await asyncio.gather(registry.peer_secret(), registry.peer_secret())
    assert first == second and len(first) >= 32
    assert await registry.peer_secret() == first  # read back, not made anew
    await backend.corrupt_peer_secret()
    with pytest.raises(UnreadableRecord, match="at least 32"):
        await registry.peer_secret()  # a weak key is refused, never used


# -- batches and waiting for unit changes -------------------------------------------------------------

SERVICE_OPTIONS = BODY.to_options()
GLOBAL_OPTIONS = GLOBAL_BODY.to_options()


async def test_submit_many_decides_every_unit_and_writes_them(registry: Registry) -> None:
    await registry.submit(submission("web@.service", DesiredState.INACTIVE, SERVICE_OPTIONS))
    await registry.create_unit(unit("old.service", DesiredState.LOADED), is_global=False)
    await registry.create_unit(unit("same.service", DesiredState.LAUNCHED), is_global=False)
    decisions = await registry.submit_many(
        [
            submission("new.service", DesiredState.LAUNCHED, SERVICE_OPTIONS),
            submission("web@1.service", DesiredState.LAUNCHED, None),  # from its template
            submission("old.service", DesiredState.LAUNCHED, None),
            submission("same.service", DesiredState.LAUNCHED, None),
            submission("all.service", DesiredState.LAUNCHED, GLOBAL_OPTIONS),
        ]
    )
    assert [(d.stored.name, d.action) for d in decisions] == [
        ("new.service", Action.CREATE),
        ("web@1.service", Action.CREATE),
        ("old.service", Action.SET_DESIRED),
        ("same.service", Action.NOTHING),
        ("all.service", Action.CREATE),
    ]
    stored = {u.name: u for u in await registry.units()}
    assert {name: stored[name].desired for name in ("new.service", "web@1.service", "old.service", "all.service")} == {
        "new.service": DesiredState.LAUNCHED,
        "web@1.service": DesiredState.LAUNCHED,
        "old.service": DesiredState.LAUNCHED,
        "all.service": DesiredState.LAUNCHED,
    }
    assert list((await registry.global_units())[0]) == ["all.service"]
    # a replace of the global unit by a plain one drops its global copy
    replaced = await registry.submit_many(
        [submission("all.service", DesiredState.LOADED, OTHER_BODY.to_options(), replace=True)]
    )
    assert replaced[0].action is Action.REPLACE
    assert (await registry.global_units())[0] == {}
    assert (await registry.get_unit("all.service")) == StoredUnit("all.service", OTHER_BODY, DesiredState.LOADED, 2)


async def test_a_refused_batch_writes_nothing_and_names_every_problem(registry: Registry) -> None:
    await registry.create_unit(unit("a.service", DesiredState.LAUNCHED), is_global=False)
    before = await registry.units()
    with pytest.raises(BatchError) as refused:
        await registry.submit_many(
            [
                submission("b.service", DesiredState.LAUNCHED, SERVICE_OPTIONS),  # fine on its own
                submission("a.service", DesiredState.LAUNCHED, OTHER_BODY.to_options()),  # differs, no replace
                submission("web@2.service", DesiredState.LAUNCHED, None),  # no template
            ]
        )
    problems = {p.name: p.kind for p in refused.value.problems}
    assert problems == {"a.service": Refusal.CONFLICT, "web@2.service": Refusal.NOT_FOUND}
    assert refused.value.written == ()
    assert await registry.units() == before  # b.service was not created either


async def test_a_batch_larger_than_one_transaction_is_written_and_destroyed_whole(registry: Registry) -> None:
    names = [f"many-{i:03d}.service" for i in range(150)]
    requests = [
        submission(name, DesiredState.LOADED, GLOBAL_OPTIONS if i % 10 == 0 else SERVICE_OPTIONS)
        for i, name in enumerate(names)
    ]
    decisions = await registry.submit_many(requests)
    assert all(d.action is Action.CREATE for d in decisions)
    assert [u.name for u in await registry.units()] == names
    assert len((await registry.global_units())[0]) == 15
    # every desired state changes, in batches again (the global copies follow)
    await registry.submit_many([submission(name, DesiredState.LAUNCHED, None) for name in names])
    assert {u.desired for u in await registry.units()} == {DesiredState.LAUNCHED}
    assert {u.desired for u in (await registry.global_units())[0].values()} == {DesiredState.LAUNCHED}
    destroyed = await registry.destroy_units([*names, "never-there.service"])
    assert destroyed == names
    assert await registry.units() == []
    assert (await registry.global_units())[0] == {}
    assert await registry.destroy_units(names) == []


async def test_unit_changes_are_waited_for_after_a_revision(registry: Registry) -> None:
    lease = await registry.grant_lease(30)
    state = UnitState("a.service", M1, "h", "loaded", "active", "running")
    states, revision = await registry.unit_states_at()
    assert states == []
    waiting = asyncio.ensure_future(registry.wait_unit_changes(revision))
    await asyncio.sleep(0.05)  # let the watch start; it must not return before a change
    assert not waiting.done()
    await registry.create_unit(unit("a.service"), is_global=False)  # a unit's body: not a change of state
    await registry.publish_states(M1, lease, [state])
    async with asyncio.timeout(10):
        changed = await waiting
    states, now = await registry.unit_states_at()
    assert states == [state] and revision < changed <= now
    # a change already in the past returns at once; a placement is a change too
    async with asyncio.timeout(10):
        assert await registry.wait_unit_changes(revision) == changed
    leadership = await registry.acquire_leadership(M1, lease)
    assert leadership is not None
    waiting = asyncio.ensure_future(registry.wait_unit_changes(now))
    await registry.apply_schedule(leadership, [(M1, ScheduledUnit("a.service", BODY, DesiredState.LOADED))], [])
    async with asyncio.timeout(10):
        assert await waiting > now
    assert (await registry.unit_states_at("b.service"))[0] == []
    # an index beyond the store's revision is answered at once with the revision
    _, now = await registry.unit_states_at()
    async with asyncio.timeout(10):
        assert await registry.wait_unit_changes(now + 1000) == now


# -- history --------------------------------------------------------------------------------


async def test_events_are_stored_in_order_filtered_paged_and_watched(registry: Registry) -> None:
    from fleetd.model.history import EventKind, HistoryEvent

    _, _, revision = await registry.events()
    watch = registry.watch_events(revision + 1)
    base = 1_800_000_000.0
    written = await registry.record_events(
        [
            HistoryEvent(base, EventKind.PLACED, "a.service", M1, "least loaded of 2 candidates", 1),
            HistoryEvent(base, EventKind.PLACED, "b.service", M2, "", None),  # same microsecond
            HistoryEvent(base + 1, EventKind.MACHINE_LOST, "", M1, "lease expired"),
            HistoryEvent(base + 2, EventKind.MOVED, "a.service", M2, "machine 11111111 lost", 1),
        ]
    )
    assert [e.id for e in written] == sorted(e.id for e in written) and len({e.id for e in written}) == 4
    events, cursor, _ = await registry.events()
    assert events == written and cursor == ""
    only_a, _, _ = await registry.events(unit="a.service")
    assert [e.event for e in only_a] == [EventKind.PLACED, EventKind.MOVED]
    first, cursor, _ = await registry.events(limit=3)
    assert first == written[:3] and cursor == written[2].id
    rest, cursor, _ = await registry.events(after=cursor)
    assert rest == written[3:] and cursor == ""
    assert await collect(watch, 4) == written
    await watch.aclose()  # type: ignore[attr-defined]


async def test_events_are_pruned_by_age_and_count(registry: Registry) -> None:
    from fleetd.model.history import EventKind, HistoryEvent

    base = 1_800_000_000.0
    await registry.record_events([HistoryEvent(base + i, EventKind.STARTED, f"u{i}.service") for i in range(10)])
    assert await registry.prune_events(keep=100, before=base + 3) == 3  # older than base + 3
    events, _, _ = await registry.events()
    assert [e.unit for e in events] == [f"u{i}.service" for i in range(3, 10)]
    assert await registry.prune_events(keep=4, before=0) == 3  # the newest 4 stay
    events, _, _ = await registry.events()
    assert [e.unit for e in events] == [f"u{i}.service" for i in range(6, 10)]


# -- revisions ------------------------------------------------------------------------------


async def test_each_body_is_a_revision_kept_up_to_the_limit_and_gone_with_the_unit(backend: Backend) -> None:
    registry = backend.registry
    bodies = [parse_unit_file(f"[Service]\nExecStart=/bin/sleep {n}\n") for n in range(1, 14)]
    await registry.submit(submission("r.service", DesiredState.LAUNCHED, bodies[0].to_options(), origin="API (test)"))
    await registry.submit(submission("r.service", DesiredState.LOADED, None))  # desired state only: no revision
    assert [r.revision for r in await registry.revisions("r.service")] == [1]
    first = await registry.unit_revision("r.service", 1)
    assert first is not None and (first.file, first.origin) == (bodies[0], "API (test)") and first.time > 0
    for body in bodies[1:]:  # twelve replaces: revisions 2..13, of which the newest 10 stay
        await registry.submit_many([submission("r.service", DesiredState.LOADED, body.to_options(), replace=True)])
    kept = await registry.revisions("r.service")
    assert [r.revision for r in kept] == list(range(4, 14)) and kept[-1].file == bodies[-1]
    assert (await registry.get_unit("r.service")).revision == 13  # type: ignore[union-attr]
    # each replace, by submit or submit_many, is in the history with its revision
    events, _, _ = await registry.events(unit="r.service")
    changed = [(e.revision, e.reason) for e in events if e.event == "revision-changed"]
    assert changed == [(n, f"revision {n} by an unknown client") for n in range(2, 14)]
    assert await registry.unit_revision("r.service", 3) is None
    await registry.destroy_unit("r.service")
    assert await registry.revisions("r.service") == []
    await registry.submit(submission("r.service", DesiredState.LOADED, bodies[0].to_options()))
    assert [r.revision for r in await registry.revisions("r.service")] == [1]  # a new unit starts again


# -- rolling updates --------------------------------------------------------------------------


def _update_record(name: str = "web@.service") -> Any:
    from fleetd.model.update import Current, UpdateParams, new_update

    named = Current(name, BODY, 1, False)
    instances = [Current(f"web@{i}.service", BODY, 1, True) for i in (1, 2)]
    return new_update(name, OTHER_BODY, named, instances, UpdateParams(), 1000.0)


async def _corrupt_update(registry: Registry, name: str) -> None:
    if isinstance(registry, MemoryRegistry):
        registry.corrupt_update(name)
    else:
        assert isinstance(registry, EtcdRegistry)
        await registry._etcd.put(registry._keys.update(name), b'{"name": 7}')


async def test_an_update_record_is_created_once_and_replaced_only_when_read(registry: Registry) -> None:
    from dataclasses import replace

    from fleetd.model.update import UpdateState
    from fleetd.registry.errors import UpdateConflict

    assert await registry.get_update("web@.service") is None
    record = _update_record()
    version = await registry.create_update(record)
    assert await registry.get_update("web@.service") == (record, version)
    with pytest.raises(UpdateConflict):  # one update of a unit at a time
        await registry.create_update(record)
    with pytest.raises(UpdateConflict):  # replacing needs the version read
        await registry.create_update(record, version + 100)
    done = replace(record, state=UpdateState.FINISHED)
    newer = await registry.create_update(done, version)
    assert newer > version and await registry.get_update("web@.service") == (done, newer)
    found, errors = await registry.updates()
    assert found == [(done, newer)] and errors == {}
    assert await registry.update_versions() == {"web@.service": newer}


async def test_an_update_step_is_fenced_conditional_and_replaces_units_with_it(registry: Registry) -> None:
    from dataclasses import replace

    from fleetd.model.update import UpdateState
    from fleetd.registry.errors import UpdateConflict

    for name in ("web@1.service", "web@2.service"):
        await registry.create_unit(StoredUnit(name, BODY, DesiredState.LAUNCHED, 1), False, "test")
    record = _update_record()
    version = await registry.create_update(record)
    lease = await registry.grant_lease(30)
    leadership = await registry.acquire_leadership("m1", lease)
    assert leadership is not None
    running = replace(record, state=UpdateState.RUNNING)
    version2, numbers = await registry.advance_update(
        leadership, running, version, {"web@1.service": OTHER_BODY, "gone@1.service": OTHER_BODY}, "update"
    )
    assert numbers == {"web@1.service": 2} and version2 > version
    changed = await registry.get_unit("web@1.service")
    assert changed == StoredUnit("web@1.service", OTHER_BODY, DesiredState.LAUNCHED, 2)
    kept = await registry.unit_revision("web@1.service", 2)
    assert kept is not None and kept.origin == "update" and kept.file == OTHER_BODY
    assert await registry.get_update("web@.service") == (running, version2)
    # the same step again (a second writer that read the same version) is refused whole
    with pytest.raises(UpdateConflict):
        await registry.advance_update(leadership, running, version, {"web@2.service": OTHER_BODY}, "update")
    assert (await registry.get_unit("web@2.service")) == StoredUnit("web@2.service", BODY, DesiredState.LAUNCHED, 1)
    # a deposed engine writes nothing
    await registry.revoke_lease(lease)
    with pytest.raises(NotLeader):
        await registry.advance_update(leadership, running, version2, {"web@2.service": OTHER_BODY}, "update")
    assert (await registry.get_unit("web@2.service")).revision == 1  # type: ignore[union-attr]
    assert await registry.get_update("web@.service") == (running, version2)


async def test_an_unreadable_update_record_is_reported_not_raised_from_listings(registry: Registry) -> None:
    record = _update_record()
    version = await registry.create_update(record)
    await _corrupt_update(registry, "db.service")
    found, errors = await registry.updates()
    assert found == [(record, version)] and list(errors) == ["db.service"] and "name" in errors["db.service"]
    with pytest.raises(UnreadableRecord):
        await registry.get_update("db.service")
