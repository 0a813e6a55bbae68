"""Below the registry interface: etcd connections, watches, failover, and records that
the etcd registry cannot read (what the shared contract suite cannot express)."""

from __future__ import annotations

import asyncio

import pytest

from fleetd.model.state import MachineState
from fleetd.registry.etcd import Etcd, EtcdConfig, EtcdError, Resync
from fleetd.registry.etcd_registry import EtcdRegistry
from fleetd.registry.keys import Keys
from fleetd.registry.registry import UnitEvent
from fleetlab.etcd import EtcdCluster
from fleetlab.wait import eventually, wait_until_async

pytestmark = pytest.mark.integration


async def test_unreadable_records_are_reported_and_skipped(registry: EtcdRegistry, key_prefix: str) -> None:
    etcd, keys = registry._etcd, Keys(key_prefix)
    start = await etcd.revision()
    await etcd.put(keys.unit("bad.service"), b"[]")
    await etcd.put(keys.unit("junk.service"), b"junk")
    await etcd.put(keys.machine("m" * 32), b'{"id": 3, "metadata": []}')
    await etcd.put(keys.global_unit("g.service"), b"{}")
    assert await registry.units() == []
    assert await registry.machines() == []
    assert await registry.global_units() == ({}, await etcd.revision())
    read = await registry.read_cluster()
    errors = {e.name: e.error for e in read.units}
    assert all(errors.values()) and sorted(errors) == ["bad.service", "junk.service"]
    assert "expected a JSON object, found list" in (errors["bad.service"] or "")
    assert [e.error is not None for e in read.machines] == [True]
    events = registry.watch_units(start)
    seen = await asyncio.wait_for(anext(events), 10)
    assert [e.name for e in seen] == ["bad.service", "junk.service"]
    assert all(isinstance(e, UnitEvent) and e.unit is None and e.error and not e.deleted for e in seen)
    await events.aclose()
    # a good machine beside the bad record is still listed
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState("a" * 32), lease)
    assert [m.id for m in await registry.machines()] == ["a" * 32]


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


async def test_watch_reports_compaction_as_resync(registry: EtcdRegistry, key_prefix: str) -> None:
    etcd = registry._etcd
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


async def test_large_units_are_written_in_transactions_etcd_accepts(registry: EtcdRegistry) -> None:
    """40 units of 60 KiB: 2.4 MB, over etcd's 1.5 MiB request limit as one transaction."""
    from fleetd.model.state import StoredUnit
    from fleetd.model.unit import DesiredState
    from fleetd.model.unitfile import parse_unit_file

    body = parse_unit_file("[Unit]\nDescription=" + "x" * 60_000 + "\n[Service]\nExecStart=/bin/true\n")
    units = [StoredUnit(f"big{i:02}.service", body, DesiredState.LAUNCHED) for i in range(40)]
    await registry.create_units((u, False) for u in units)
    assert len(await registry.units()) == 40
    lease = await registry.grant_lease(30)
    leadership = await registry.acquire_leadership("m1", lease)
    assert leadership is not None
    await registry.apply_schedule(leadership, [("m1", u) for u in units], [])
    assert len(await registry.placements()) == 40


async def test_a_call_in_flight_when_another_task_fails_over_is_retried_not_cancelled(etcd3: EtcdCluster) -> None:
    """grpc cancels the calls of a channel that is closed under them; the caller must see
    a retry on the next endpoint (or a connection error), never a CancelledError nobody
    asked for: that ended fleetd's loops silently in the chaos run."""
    client = Etcd(EtcdConfig(endpoints=tuple(etcd3.endpoints), request_timeout=5))
    try:
        await client.put("/inflight", b"v")
        etcd3.pause_member(etcd3.members[0])  # the current endpoint hangs
        try:
            call = asyncio.create_task(client.get("/inflight"))
            watch = client.watch_prefix("/inflight", await _revision_elsewhere(etcd3) + 1, retry_delay=0.05)
            watched = asyncio.create_task(anext(watch))
            await asyncio.sleep(0.5)  # both are in flight on the hung endpoint
            await client.failover()  # what another task does when its own call fails
            async with asyncio.timeout(15):
                got = await call
            assert got is not None and got.value == b"v"
            other = Etcd(EtcdConfig(endpoints=tuple(etcd3.endpoints[1:]), request_timeout=5))
            await other.put("/inflight", b"w")
            await other.close()
            async with asyncio.timeout(15):
                events = await watched
            assert [e.value for e in events] == [b"w"]
            await watch.aclose()
        finally:
            etcd3.resume_member(etcd3.members[0])
    finally:
        await client.close()


async def _revision_elsewhere(cluster: EtcdCluster) -> int:
    other = Etcd(EtcdConfig(endpoints=tuple(cluster.endpoints[1:]), request_timeout=5))
    try:
        return await other.revision()
    finally:
        await other.close()
