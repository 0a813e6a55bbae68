"""Fixtures for tests against a real etcd: a connected registry under a private prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetd.registry.etcd import Etcd, EtcdConfig
from fleetd.registry.registry import Registry
from fleetlab.etcd import EtcdCluster


@pytest.fixture
async def registry(etcd: EtcdCluster, key_prefix: str) -> AsyncIterator[Registry]:
    client = Etcd(EtcdConfig(endpoints=tuple(etcd.endpoints), request_timeout=5))
    try:
        yield Registry(client, key_prefix)
    finally:
        await client.close()
