"""Fixtures for tests against a real etcd: a connected registry under a private prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

# the fleetctl tests' fixtures (a fleet of APIs over one registry, the loop they run in)
from fleetctl_support import fleet, loop  # noqa: F401

from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import EtcdRegistry, connect
from fleetlab.etcd import EtcdCluster
from fleetlab.simcluster import SimCluster


@pytest.fixture
async def sim(etcd: EtcdCluster, key_prefix: str) -> AsyncIterator[SimCluster]:
    """Simulated machines and engines (real Agent and Engine loops) on the real etcd."""
    cluster = SimCluster(tuple(etcd.endpoints), key_prefix)
    try:
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture
async def registry(etcd: EtcdCluster, key_prefix: str) -> AsyncIterator[EtcdRegistry]:
    registry = connect(EtcdConfig(endpoints=tuple(etcd.endpoints), request_timeout=5), key_prefix)
    try:
        yield registry
    finally:
        await registry.close()
