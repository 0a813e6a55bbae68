"""The real-etcd fixtures work: a client can write, lease and watch; members can be lost."""

from __future__ import annotations

import asyncio
import os

import aetcd
import aetcd.exceptions
import pytest

from fleetlab.etcd import EtcdCluster, find_etcd_binary, member_healthy
from fleetlab.wait import eventually

pytestmark = pytest.mark.integration


def _client(endpoint: str) -> aetcd.Client:
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=5)


async def test_put_get_and_prefix_isolation(etcd: EtcdCluster, key_prefix: str) -> None:
    async with _client(etcd.endpoints[0]) as client:
        await client.put(f"{key_prefix}a".encode(), b"1")
        got = await client.get(f"{key_prefix}a".encode())
        assert got is not None and got.value == b"1"
        other = await client.get_prefix(b"/test-not-mine/")
        assert list(other) == []


async def test_lease_expiry_deletes_keys(etcd: EtcdCluster, key_prefix: str) -> None:
    async with _client(etcd.endpoints[0]) as client:
        lease = await client.lease(1)
        key = f"{key_prefix}leased".encode()
        await client.put(key, b"x", lease=lease)
        assert await client.get(key) is not None

        async def expired() -> bool:
            return await client.get(key) is None

        await eventually(expired, 10, "the lease to expire and take its key", 0.1)


async def test_watch_sees_a_put(etcd: EtcdCluster, key_prefix: str) -> None:
    async with _client(etcd.endpoints[0]) as client:
        key = f"{key_prefix}w".encode()
        watch = await client.watch(key)
        await client.put(key, b"v")
        async with asyncio.timeout(5):
            async for event in watch:
                assert event.kv.value == b"v"
                break
        await watch.cancel()


async def test_three_members_survive_losing_one(etcd3: EtcdCluster, key_prefix: str) -> None:
    assert len(etcd3.members) == 3
    assert all(member_healthy(url) for url in etcd3.endpoints)
    etcd3.stop_member(etcd3.members[0])
    assert not member_healthy(etcd3.members[0].client_url)
    async with _client(etcd3.endpoints[1]) as client:
        # member 0 may have been the leader: writes succeed once the others elect a new one
        async def written() -> bool:
            try:
                await client.put(f"{key_prefix}k".encode(), b"still")
            except aetcd.exceptions.ClientError:
                return False
            return True

        await eventually(written, 15, "a leader (a write) after losing one member", 0.1)
        got = await client.get(f"{key_prefix}k".encode())
        assert got is not None and got.value == b"still"


def test_stop_and_start_keeps_data_and_close_leaves_nothing(key_prefix: str) -> None:
    cluster = EtcdCluster()
    cluster.start()
    process = cluster.members[0].process
    assert process is not None
    pid = process.pid

    async def put() -> None:
        async with _client(cluster.endpoints[0]) as client:
            await client.put(f"{key_prefix}keep".encode(), b"1")

    async def get() -> bytes | None:
        async with _client(cluster.endpoints[0]) as client:
            got = await client.get(f"{key_prefix}keep".encode())
            return None if got is None else got.value

    asyncio.run(put())
    cluster.stop()
    assert not member_healthy(cluster.endpoints[0])
    cluster.start()
    assert asyncio.run(get()) == b"1"
    base = cluster.base_dir
    new_pid = cluster.members[0].process.pid  # type: ignore[union-attr]
    cluster.close()
    for gone in (pid, new_pid):
        assert not os.path.exists(f"/proc/{gone}") or _is_zombie_free(gone)
    assert not os.path.exists(base)


def _is_zombie_free(pid: int) -> bool:
    """A recycled pid is fine; our etcd must not still be running under it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"etcd" not in cmdline.read()
    except OSError:
        return True


def test_binary_lookup_prefers_etcd_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_etcd_binary()
    monkeypatch.setenv("ETCD_BIN", real)
    assert find_etcd_binary() == real
    monkeypatch.setenv("ETCD_BIN", "/nonexistent/etcd")
    with pytest.raises(Exception, match="ETCD_BIN"):
        find_etcd_binary()
