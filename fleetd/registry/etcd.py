"""The etcd v3 connection: endpoints with failover, TLS, credentials, resumable watches.

A thin layer over ``aetcd`` that adds what the registry needs and aetcd lacks: several
endpoints (a connection failure moves on to the next one), TLS with client certificates,
and watches that survive a disconnect by resuming from the revision after the last event
seen. When etcd has compacted that revision away, the watch reports ``Resync`` so the
caller reloads its view from a fresh read instead of silently missing changes.

Only the registry package uses this module; nothing else may import aetcd or grpc.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import aetcd.transactions
import aetcd.utils

from fleetd.registry.aetcd_client import Client, LeaseCompare, WatchRefused
from fleetd.registry.errors import Resync

log = logging.getLogger(__name__)

# etcd's default --max-txn-ops is 128: every batched write stays at or below this.
MAX_TXN_OPS = 128
# etcd's default --max-request-bytes is 1.5 MiB; a batched write stays under 1 MiB of keys
# and values, which leaves room for the request's own framing. One record bigger than this
# is still sent alone (etcd then refuses it, and says so).
MAX_TXN_BYTES = 1024 * 1024
# What one operation costs beyond its key and value (protobuf framing, lease, op type).
OP_OVERHEAD = 32


def op_size(key: str, value: bytes | None = None) -> int:
    """The bytes one put or delete adds to a transaction, for splitting batches."""
    return len(key.encode()) + (len(value) if value else 0) + OP_OVERHEAD


def chunks(sizes: Sequence[int], max_ops: int = MAX_TXN_OPS, max_bytes: int = MAX_TXN_BYTES) -> list[range]:
    """Split items of the given sizes, in order, into runs that fit one transaction: at
    most ``max_ops`` items and ``max_bytes`` bytes (an item bigger than that goes alone)."""
    result: list[range] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_ops or used + size > max_bytes):
            result.append(range(start, index))
            start, used = index, 0
        used += size
    if start < len(sizes):
        result.append(range(start, len(sizes)))
    return result


EtcdError = aetcd.exceptions.ClientError
ConnectionLost = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError)


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach etcd. ``endpoints`` are URLs (``http://host:port`` or ``https://...``)."""

    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    request_timeout: float = 1.0

    @property
    def uses_tls(self) -> bool:
        return bool(self.ca_file or self.cert_file) or any(e.startswith("https://") for e in self.endpoints)

    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each endpoint; a missing port means etcd's 2379."""
        result = []
        for endpoint in self.endpoints:
            parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            if not parts.hostname:
                raise ValueError(f"etcd endpoint {endpoint!r} has no host")
            result.append((parts.hostname, parts.port or 2379))
        return result


@dataclass(frozen=True)
class KeyValue:
    """One stored key, with the revisions the registry compares against."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    """A put (``value`` set) or a delete (``value`` None) of one key at ``revision``."""

    key: str
    value: bytes | None
    revision: int
    lease: int = 0

    @property
    def deleted(self) -> bool:
        return self.value is None


CLOSE_TIMEOUT = 5.0


async def _close_quietly(client: Client) -> None:
    """Close a connection, giving up after CLOSE_TIMEOUT; errors of a dead one are moot."""
    try:
        await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
    except (TimeoutError, Exception):
        log.debug("closing an etcd connection failed", exc_info=True)


class Etcd:
    """A connection to an etcd cluster through one of several endpoints.

    Every operation goes to the current endpoint; on a connection failure the next
    endpoint is tried, so a cluster survives losing the member a client talked to.
    """

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._addresses = config.addresses()
        self._index = 0
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()
        self.requests = 0  # operations sent, for benchmarks
        # told of every attempt of every request: (operation, seconds, its error or None)
        self.observe: Callable[[str, float, BaseException | None], None] = lambda name, seconds, error: None

    # -- connection ------------------------------------------------------------------

    async def client(self) -> Client:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    host, port = self._addresses[self._index % len(self._addresses)]
                    client = Client(self.config, host, port)
                    await client.connect()
                    self._client = client
        return self._client

    async def failover(self) -> None:
        """Drop the current connection and move to the next endpoint."""
        await self._drop_client(next_endpoint=True)

    async def _drop_client(self, next_endpoint: bool, only: Client | None = None) -> None:
        """Close the current connection (when ``only`` is given: if it is still that one)."""
        async with self._lock:
            if only is not None and self._client is not only:
                return
            old, self._client = self._client, None
            if next_endpoint:
                self._index += 1
        if old is not None:
            # Never wait on it here: closing a connection whose peer vanished can block
            # for good (aetcd's watcher waits to queue its stop on a stream nobody reads),
            # and the caller is about to reconnect, e.g. to keep a lease alive.
            task = asyncio.ensure_future(_close_quietly(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        old, self._client = self._client, None
        if old is not None:
            await _close_quietly(old)
        for task in list(self._closing):
            task.cancel()

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run one client operation, trying each endpoint once on connection failure.

        With credentials, a rejected auth token (etcd forgets a token unused for its
        ``--auth-token-ttl``, 300 s by default, and a restarted member may have forgotten
        it) is renewed once by authenticating again on the same endpoint.
        """
        attempts = len(self._addresses)
        failures = 0
        reauthenticated = False
        while True:
            client = await self.client()
            self.requests += 1
            try:
                return await self._attempt(client, name, *args, **kwargs)
            except asyncio.CancelledError:
                if cancelled_by_caller():
                    raise
                # grpc cancels the calls of a channel another task closed (a failover):
                # a lost connection, not a cancellation of ours
                failures += 1
                if failures >= attempts:
                    raise ChannelClosed(f"etcd {name}: the connection was closed during the call") from None
                await self._drop_client(next_endpoint=True, only=client)
            except ConnectionLost:
                failures += 1
                if failures >= attempts:
                    raise
                log.info("etcd endpoint failed, trying the next one")
                await self.failover()
            except aetcd.exceptions.UnauthenticatedError:
                if self.config.username is None or reauthenticated:
                    raise
                reauthenticated = True
                log.info("etcd rejected the auth token; authenticating again")
                await self._drop_client(next_endpoint=False, only=client)

    async def _attempt(self, client: Client, name: str, *args: Any, **kwargs: Any) -> Any:
        """One attempt of one operation, timed for ``observe`` (fleetd's metrics)."""
        started, error = time.perf_counter(), None
        try:
            return await getattr(client, name)(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.observe(name, time.perf_counter() - started, error)

    # -- key-value -------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        result = await self._call("get", key.encode())
        if result is None:
            return None
        return KeyValue(key, result.value, result.create_revision, result.mod_revision, result.lease)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision the read saw."""
        result = await self._call("get_prefix", prefix.encode())
        items = [KeyValue(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.lease) for kv in result]
        return items, int(result.header.revision)

    async def keys_prefix(self, prefix: str) -> tuple[list[str], int]:
        """Every key under ``prefix`` without its value (etcd sends none), and the revision:
        for records whose key says all a reader needs (a placement is machine and unit)."""
        result = await self._call("get_prefix", prefix.encode(), keys_only=True)
        return [kv.key.decode() for kv in result], int(result.header.revision)

    async def versions_prefix(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its mod revision, without values: for a reader
        that re-reads only the records that changed since it last read them."""
        result = await self._call("get_prefix", prefix.encode(), keys_only=True)
        return {kv.key.decode(): int(kv.mod_revision) for kv in result}

    async def get_page(
        self, start: str, end: str, limit: int, keys_only: bool = False
    ) -> tuple[list[KeyValue], bool, int]:
        """At most ``limit`` keys from ``start`` (inclusive) to ``end`` (exclusive) in key
        order; whether more remain; the revision the read saw."""
        result = await self._call("get_page", start.encode(), end.encode(), limit, keys_only)
        items = [
            KeyValue(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.lease) for kv in result.kvs
        ]
        return items, bool(result.more), int(result.header.revision)

    async def delete_range(self, start: str, end: str) -> int:
        """Delete every key from ``start`` to ``end`` (exclusive); how many were deleted."""
        result = await self._call("delete_range", start.encode(), end.encode())
        return int(getattr(result, "deleted", 0) or 0)

    async def revision(self) -> int:
        """The current store revision (a cheap ranged read of one key)."""
        result = await self._call("get_range", b"\x00", b"\x00\x01")
        return int(result.header.revision)

    async def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        await self._call("put", key.encode(), value, lease=lease)

    async def delete(self, key: str) -> bool:
        return bool(await self._call("delete", key.encode()))

    async def delete_prefix(self, prefix: str) -> None:
        await self._call("delete_prefix", prefix.encode())

    # -- transactions ----------------------------------------------------------------

    def op_put(self, key: str, value: bytes, lease: int | None = None) -> Any:
        return aetcd.transactions.Put(key.encode(), value, lease=lease)

    def op_delete(self, key: str) -> Any:
        return aetcd.transactions.Delete(key.encode())

    def op_delete_prefix(self, prefix: str) -> Any:
        """Delete every key under ``prefix`` (one operation of a transaction)."""
        return aetcd.transactions.Delete(prefix.encode(), range_end=aetcd.utils.prefix_range_end(prefix.encode()))

    def op_get(self, key: str) -> Any:
        return aetcd.transactions.Get(key.encode())

    def cmp_create(self, key: str, revision: int) -> Any:
        return aetcd.transactions.Create(key.encode()) == revision

    def cmp_mod(self, key: str, revision: int) -> Any:
        return aetcd.transactions.Mod(key.encode()) == revision

    def cmp_absent(self, key: str) -> Any:
        return aetcd.transactions.Create(key.encode()) == 0

    def cmp_present(self, key: str) -> Any:
        return aetcd.transactions.Create(key.encode()) > 0

    def cmp_lease(self, key: str, lease: int) -> Any:
        return LeaseCompare(key.encode()) == lease

    def txn_op(self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> Any:
        """A nested transaction, as one operation of an outer one (per-item conditions)."""
        return aetcd.transactions.Txn(list(compare), list(success), list(failure))

    async def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> tuple[bool, list[Any]]:
        if len(success) > MAX_TXN_OPS or len(failure) > MAX_TXN_OPS:
            raise ValueError(f"a transaction holds at most {MAX_TXN_OPS} operations")
        succeeded, responses = await self._call(
            "transaction", compare=list(compare), success=list(success), failure=list(failure)
        )
        return bool(succeeded), responses

    # -- leases ----------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        lease = await self._call("lease", ttl)
        return int(lease.id)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns the TTL left, 0 when the lease no longer exists."""
        reply = await self._call("refresh_lease", lease_id)
        return 0 if reply is None else int(reply.TTL)

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call("revoke_lease", lease_id)
        except aetcd.exceptions.ClientError:
            log.debug("revoking lease %x failed", lease_id, exc_info=True)

    # -- watches ---------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: str, start_revision: int, retry_delay: float = 0.2
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Yield batches of events under ``prefix`` from ``start_revision`` on, forever.

        After a disconnect the watch is re-created from the revision after the last event
        yielded, on the next endpoint if need be. Raises ``Resync`` when that revision has
        been compacted away. Events are yielded in batches (everything already queued) so a
        burst of thousands of changes costs one wake-up of the consumer, not thousands.
        """
        next_revision = start_revision
        delay = retry_delay
        failures = 0
        while True:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            watch = None
            client: Client | None = None
            try:
                client = await self.client()
                self.requests += 1
                try:
                    watch = await client.watch_prefix(prefix.encode(), start_revision=next_revision)
                except asyncio.CancelledError:
                    if cancelled_by_caller():
                        raise
                    raise ChannelClosed("the connection was closed while the watch was created") from None
                pump = asyncio.ensure_future(_pump(watch, queue))
                try:
                    while True:
                        batch = [await queue.get()]
                        while not queue.empty():
                            batch.append(queue.get_nowait())
                        events: list[WatchEvent] = []
                        for item in batch:
                            if isinstance(item, BaseException):
                                raise item
                            events.append(item)
                        if events:
                            next_revision = events[-1].revision + 1
                            delay, failures = retry_delay, 0
                            yield events
                finally:
                    pump.cancel()
            except aetcd.exceptions.RevisionCompactedError as exc:
                raise Resync(int(exc.compacted_revision)) from exc
            except Exception as exc:  # noqa: BLE001 - any stream failure: resume elsewhere
                failures += 1
                # first loss at INFO, the retries of a long outage only at DEBUG
                log.log(
                    logging.INFO if failures == 1 else logging.DEBUG,
                    "watch on %s lost (%s); resuming at revision %d",
                    prefix,
                    exc,
                    next_revision,
                )
                # only the watch whose connection failed moves on: the others sharing it
                # then reconnect to the new one instead of each skipping an endpoint
                await self._drop_client(next_endpoint=True, only=client)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if watch is not None:
                    try:
                        await watch.cancel()
                    except Exception:  # noqa: BLE001 - the stream may already be gone
                        pass


class ChannelClosed(ConnectionError):
    """The connection a call or a watch used was closed under it by another task (a
    failover): grpc then raises CancelledError in tasks that nobody cancelled, which,
    taken at its word, silently ended the loops waiting on those calls."""


def cancelled_by_caller() -> bool:
    """Whether the current task was really asked to stop (a CancelledError it sees is then
    genuine), as opposed to grpc cancelling a call whose channel was closed."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class _StreamEnded(Exception):
    """The watch stream closed without an error; treated like a lost connection."""


async def _pump(watch: Any, queue: asyncio.Queue[Any]) -> None:
    """Move events from an aetcd watch into a queue, converting as they come."""
    try:
        async for event in watch:
            kv = event.kv
            deleted = event.kind == "DELETE"
            queue.put_nowait(
                WatchEvent(
                    key=kv.key.decode(),
                    value=None if deleted else kv.value,
                    revision=int(kv.mod_revision),
                    lease=int(kv.lease),
                )
            )
        queue.put_nowait(_StreamEnded("watch stream ended"))
    except asyncio.CancelledError:
        if cancelled_by_caller():
            raise
        # not us: grpc cancels the streams of a channel another task closed (a failover)
        queue.put_nowait(_StreamEnded("watch stream closed with its connection"))
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer to decide
        queue.put_nowait(exc)


@dataclass
class BatchWriter:
    """Collects puts and deletes and commits them in transactions that stay within etcd's
    limits: at most ``MAX_TXN_OPS`` operations and ``MAX_TXN_BYTES`` bytes each. Splitting
    by count alone let a few large units make one request etcd refuses, forever.

    ``guard`` compares are added to every transaction (the engine's leadership check), so
    a batch either fully applies under the guard or stops at the first refused chunk.
    """

    etcd: Etcd
    guard: Sequence[Any] = ()
    ops: list[Any] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        self.ops.append(self.etcd.op_put(key, value, lease=lease))
        self.sizes.append(op_size(key, value))

    def delete(self, key: str) -> None:
        self.ops.append(self.etcd.op_delete(key))
        self.sizes.append(op_size(key))

    async def commit(self) -> bool:
        """Write every chunk; False as soon as a guarded chunk is refused."""
        ops, sizes, self.ops, self.sizes = self.ops, self.sizes, [], []
        for run in chunks(sizes):
            ok, _ = await self.etcd.txn(self.guard, ops[run.start : run.stop])
            if not ok:
                return False
        return True


__all__ = [
    "MAX_TXN_BYTES",
    "MAX_TXN_OPS",
    "chunks",
    "op_size",
    "BatchWriter",
    "ConnectionLost",
    "Etcd",
    "EtcdConfig",
    "EtcdError",
    "KeyValue",
    "Resync",
    "WatchEvent",
    "WatchRefused",
]
