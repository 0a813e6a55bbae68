"""Shared pytest configuration: real etcd fixtures available to every test folder."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from fleetlab.etcd import EtcdCluster, EtcdNotFound


def _start_cluster(size: int) -> EtcdCluster:
    try:
        cluster = EtcdCluster(size=size)
    except EtcdNotFound as exc:  # pragma: no cover - CI installs etcd
        pytest.skip(str(exc))
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """One real single-member etcd for the whole run; tests isolate by key prefix."""
    cluster = _start_cluster(1)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A fresh real 3-member etcd cluster, for tests that take members away."""
    cluster = _start_cluster(3)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def key_prefix() -> str:
    """A prefix of its own per test, so tests sharing the session etcd never see each other."""
    return f"/test-{uuid.uuid4().hex[:12]}/"
