"""What aetcd lacks, added by subclassing it: TLS connections, lease compares, and
watches that fail when etcd refuses them instead of hanging.

Kept apart from :mod:`fleetd.registry.etcd` so that module reads as the connection logic
(endpoints, failover, retries, resumable watches) and this one as the library patches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aetcd
import aetcd.client
import aetcd.exceptions
import aetcd.rpc
import aetcd.rtypes
import aetcd.transactions
import aetcd.watcher
from aetcd import rpc

if TYPE_CHECKING:
    from fleetd.registry.etcd import EtcdConfig


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


class WatchRefused(aetcd.exceptions.ClientError):
    """etcd refused to create a watch (no or expired auth token, or no read permission)."""


class Watcher(aetcd.watcher.Watcher):
    """aetcd's watcher, except that a watch etcd refuses fails instead of hanging forever.

    etcd answers a watch create request it does not permit with a response that is both
    ``created`` and ``canceled``; aetcd ignores ``canceled`` and returns a watch that never
    yields anything (and files it under the request's watch id, 0).
    """

    async def _handle_response(self, response: Any) -> None:
        if response.created and response.canceled:
            async with self._lock:
                if self._new_callback is not None:
                    self._new_callback.error = WatchRefused(response.cancel_reason or "etcd canceled the watch")
                    self._new_callback_ready.notify_all()
            return
        await super()._handle_response(response)


class LeaseCompare(aetcd.transactions.BaseCompare):
    """Compare a key's lease id (etcd supports it; aetcd has no class for it)."""

    def build_compare(self, compare: Any) -> None:
        compare.target = rpc.Compare.LEASE
        compare.lease = int(self.value)


class Client(aetcd.Client):
    """aetcd's client, connecting over TLS when configured (aetcd itself only does plaintext)."""

    def __init__(self, config: EtcdConfig, host: str, port: int) -> None:
        super().__init__(
            host=host,
            port=port,
            username=config.username,
            password=config.password,
            timeout=max(1, int(round(config.request_timeout))),
            options={
                "grpc.keepalive_time_ms": 5000,
                "grpc.keepalive_timeout_ms": 3000,
                "grpc.keepalive_permit_without_calls": 1,
                "grpc.initial_reconnect_backoff_ms": 200,
                "grpc.max_reconnect_backoff_ms": 1000,
                "grpc.max_receive_message_length": 64 * 1024 * 1024,
            },
        )
        self._config = config

    @aetcd.client._handle_errors  # type: ignore[attr-defined]
    @aetcd.client._ensure_connected  # type: ignore[attr-defined]
    async def get_page(self, start: bytes, end: bytes, limit: int, keys_only: bool = False) -> Any:
        """A range read of at most ``limit`` keys in key order (aetcd has no limit)."""
        request = rpc.RangeRequest(key=start, range_end=end, limit=limit, keys_only=keys_only)
        response = await self.kvstub.Range(request, timeout=self._timeout, metadata=self.metadata)
        return aetcd.rtypes.GetRange(response.header, response.kvs, response.more, response.count)

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        await self._open()
        watcher: Any = self._watcher  # set by aetcd's connect; untyped there
        if watcher is not None and not isinstance(watcher, Watcher):
            # Not set up yet (aetcd starts its stream on the first watch): replace it.
            self._watcher = Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)

    async def _open(self) -> None:
        if not self._config.uses_tls:
            await super().connect()
            return
        import grpc  # only for the credentials object

        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self._config.ca_file),
            private_key=_read(self._config.key_file),
            certificate_chain=_read(self._config.cert_file),
        )
        original = rpc.insecure_channel

        def secure(target: str, options: Any = None) -> Any:
            return rpc.secure_channel(target, credentials, options=options)

        # aetcd builds its channel with rpc.insecure_channel; swap in a secure one for
        # this connect only (no await runs between the swap and the channel creation).
        aetcd.rpc.insecure_channel = secure  # type: ignore[assignment]
        try:
            await super().connect()
        finally:
            aetcd.rpc.insecure_channel = original  # type: ignore[assignment]
