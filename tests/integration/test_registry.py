"""The registry against a real etcd: units, machines, states, leadership, batching."""

from __future__ import annotations

import asyncio

import pytest

from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd import Etcd, EtcdConfig, EtcdError, Resync
from fleetd.registry.registry import MachineIdInUse, NotLeader, Registry, UnitExists, UnitNotFound
from fleetlab.etcd import EtcdCluster
from fleetlab.wait import eventually, wait_until_async

pytestmark = pytest.mark.integration

BODY = parse_unit_file("[Service]\nExecStart=/bin/sleep infinity\n")
GLOBAL_BODY = parse_unit_file("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n")


def unit(name: str, desired: DesiredState = DesiredState.INACTIVE) -> StoredUnit:
    return StoredUnit(name, BODY, desired)


async def test_create_refuses_duplicates_and_leaves_the_original(registry: Registry) -> None:
    await registry.create_unit(unit("a.service"), is_global=False)
    other = StoredUnit("a.service", GLOBAL_BODY, DesiredState.LAUNCHED)
    with pytest.raises(UnitExists):
        await registry.create_unit(other, is_global=True)
    stored = await registry.get_unit("a.service")
    assert stored == unit("a.service")
    assert (await registry.global_units())[0] == {}


async def test_desired_state_and_global_copy(registry: Registry) -> None:
    await registry.create_unit(StoredUnit("g.service", GLOBAL_BODY, DesiredState.INACTIVE), is_global=True)
    await registry.set_desired_state("g.service", DesiredState.LAUNCHED)
    globals_, _ = await registry.global_units()
    assert globals_["g.service"].desired is DesiredState.LAUNCHED
    assert (await registry.get_unit("g.service")).desired is DesiredState.LAUNCHED  # type: ignore[union-attr]
    with pytest.raises(UnitNotFound):
        await registry.set_desired_state("missing.service", DesiredState.LOADED)


async def test_destroy_removes_unit_and_global_copy(registry: Registry) -> None:
    await registry.create_unit(StoredUnit("g.service", GLOBAL_BODY, DesiredState.INACTIVE), is_global=True)
    assert await registry.destroy_unit("g.service")
    assert await registry.get_unit("g.service") is None
    assert (await registry.global_units())[0] == {}
    assert not await registry.destroy_unit("g.service")


async def test_bulk_create_batches_past_the_txn_limit(registry: Registry) -> None:
    await registry.create_unit(unit("u0007.service", DesiredState.LAUNCHED), is_global=False)
    await registry.create_units((unit(f"u{i:04}.service"), False) for i in range(300))
    units = await registry.units()
    assert len(units) == 300
    # an existing unit is not overwritten by the bulk create
    assert next(u for u in units if u.name == "u0007.service").desired is DesiredState.LAUNCHED


async def test_machine_registration_refuses_a_live_duplicate(registry: Registry) -> None:
    etcd = registry.etcd
    lease_a = await etcd.grant(30)
    lease_b = await etcd.grant(30)
    machine = MachineState("a" * 32, "10.0.0.1", {"region": "eu"})
    await registry.register_machine(machine, lease_a)
    # same lease may re-register (metadata change)
    await registry.register_machine(MachineState("a" * 32, "10.0.0.1", {"region": "us"}), lease_a)
    with pytest.raises(MachineIdInUse, match="already registered.*10.0.0.1"):
        await registry.register_machine(MachineState("a" * 32, "10.0.0.2", {}), lease_b)
    assert [m.metadata for m in await registry.machines()] == [{"region": "us"}]
    await etcd.revoke(lease_a)
    await registry.register_machine(MachineState("a" * 32, "10.0.0.2", {}), lease_b)
    assert [m.public_ip for m in await registry.machines()] == ["10.0.0.2"]


async def test_lease_carries_machine_and_states(registry: Registry) -> None:
    etcd = registry.etcd
    lease = await etcd.grant(30)
    await registry.register_machine(MachineState("b" * 32), lease)
    await registry.publish_states(
        "b" * 32, lease, [UnitState("x.service", "b" * 32, "h", "loaded", "active", "running")]
    )
    assert len(await registry.unit_states()) == 1
    await etcd.revoke(lease)
    assert await registry.machines() == []
    assert await registry.unit_states() == []


async def test_leadership_fences_a_deposed_engine(registry: Registry) -> None:
    etcd = registry.etcd
    lease1 = await etcd.grant(30)
    lease2 = await etcd.grant(30)
    first = await registry.acquire_leadership("m1", lease1)
    assert first is not None
    assert await registry.acquire_leadership("m2", lease2) is None
    placement = ScheduledUnit("a.service", BODY, DesiredState.LAUNCHED)
    await registry.apply_schedule(first, [("m1", placement)], [])
    assert await registry.placements() == {"a.service": ["m1"]}
    # the first engine's lease expires (revoked here); m2 takes over
    await etcd.revoke(lease1)
    second = await registry.acquire_leadership("m2", lease2)
    assert second is not None and await registry.leader() == "m2"
    with pytest.raises(NotLeader):
        await registry.apply_schedule(first, [("m1", ScheduledUnit("b.service", BODY, DesiredState.LAUNCHED))], [("m1", "a.service")])
    assert await registry.placements() == {"a.service": ["m1"]}
    # even the same machine winning again is a new term: an old proof stays fenced
    await etcd.revoke(lease2)
    lease3 = await etcd.grant(30)
    third = await registry.acquire_leadership("m1", lease3)
    assert third is not None and third.create_revision != first.create_revision
    with pytest.raises(NotLeader):
        await registry.apply_schedule(first, [], [("m1", "a.service")])
    await registry.apply_schedule(third, [], [("m1", "a.service")])
    assert await registry.placements() == {}


async def test_watch_resumes_after_etcd_restart(key_prefix: str) -> None:
    cluster = EtcdCluster()
    cluster.start()
    client = Etcd(EtcdConfig(endpoints=tuple(cluster.endpoints), request_timeout=2))
    try:
        rev = await client.revision()
        seen: list[str] = []
        got_two = asyncio.Event()

        async def consume() -> None:
            async for batch in client.watch_prefix(key_prefix, rev + 1, retry_delay=0.1):
                seen.extend(e.key.rsplit("/", 1)[1] for e in batch)
                if len(seen) >= 2:
                    got_two.set()

        task = asyncio.create_task(consume())
        await client.put(f"{key_prefix}one", b"1")
        await wait_until_async(lambda: seen, 10, "the watch to deliver the first put")
        cluster.stop()
        # written while the watcher is disconnected: must still arrive, exactly once
        cluster.start()
        other = Etcd(EtcdConfig(endpoints=tuple(cluster.endpoints), request_timeout=2))
        await other.put(f"{key_prefix}two", b"2")
        await other.close()
        async with asyncio.timeout(20):
            await got_two.wait()
        assert seen == ["one", "two"]
        task.cancel()
    finally:
        await client.close()
        cluster.close()


async def test_watch_reports_compaction_as_resync(registry: Registry, key_prefix: str) -> None:
    etcd = registry.etcd
    start = await etcd.revision()
    for i in range(3):
        await etcd.put(f"{key_prefix}k", str(i).encode())
    latest = await etcd.revision()
    await (await etcd.client()).compact(latest)
    with pytest.raises(Resync):
        async with asyncio.timeout(10):
            async for _ in etcd.watch_prefix(key_prefix, start + 1):
                pass


async def test_failover_to_the_next_endpoint(etcd3: EtcdCluster, key_prefix: str) -> None:
    client = Etcd(EtcdConfig(endpoints=tuple(etcd3.endpoints), request_timeout=2))
    try:
        await client.put(f"{key_prefix}a", b"1")
        etcd3.stop_member(etcd3.members[0])

        # the client moves to the next endpoint; if member 0 led, wait out the election
        async def written() -> bool:
            try:
                await client.put(f"{key_prefix}b", b"2")
            except EtcdError:
                return False
            return True

        await eventually(written, 15, "a write after losing one member", 0.1)
        got = await client.get(f"{key_prefix}b")
        assert got is not None and got.value == b"2"
    finally:
        await client.close()


async def test_a_connection_that_will_not_close_does_not_stall_reconnection(
    etcd: EtcdCluster, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetd.registry import etcd as etcd_module

    client = Etcd(EtcdConfig(endpoints=tuple(etcd.endpoints), request_timeout=2))
    try:
        await client.put(f"{key_prefix}a", b"1")
        stuck = await client.client()
        never = asyncio.Event()

        async def hang() -> None:  # as aetcd's close can, when its peer vanished
            await never.wait()

        monkeypatch.setattr(stuck, "close", hang)
        monkeypatch.setattr(etcd_module, "CLOSE_TIMEOUT", 0.2, raising=False)
        async with asyncio.timeout(5):
            await client.failover()
            await client.put(f"{key_prefix}b", b"2")
        assert await client.client() is not stuck
        got = await client.get(f"{key_prefix}b")
        assert got is not None and got.value == b"2"
    finally:
        await client.close()
