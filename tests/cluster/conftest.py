"""Fixtures for tests on real namespaced systemd hosts (fleetlab.hosts).

One lab with three hosts per test module keeps the suite fast (a host boots in ~0.3 s);
tests that need a lab of their own (cleanup, sweep) get one from ``lab_factory``. Labs
come from ``open_lab``, so a concurrent run on the same machine takes the next free
bridge/subnet instead of failing; use ``lab.bridge_ip``, not a literal address.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from fleetlab.fleetcluster import FleetCluster
from fleetlab.hosts import Host, HostLab, check_supported, default_binds, open_lab


@pytest.fixture(scope="session")
def hosts_supported() -> None:
    """Skip (with the reason) where hosts cannot run: not root, no systemd, no cgroup2.

    ``FLEET_REQUIRE_CLUSTER=1`` (set in CI) turns the skip into a failure.
    """
    reason = check_supported()
    if reason is not None:
        if os.environ.get("FLEET_REQUIRE_CLUSTER", "") not in ("", "0"):
            pytest.fail(f"systemd test hosts required but unavailable: {reason}")
        pytest.skip(f"systemd test hosts unavailable: {reason}")


@pytest.fixture(scope="module")
def lab(hosts_supported: None) -> Iterator[HostLab]:
    """A lab (bridge up, no hosts yet) shared by one test module."""
    lab = open_lab("pytest", binds=default_binds())
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def hosts(lab: HostLab) -> list[Host]:
    """Three running hosts h1..h3 of the module's lab."""
    t0 = time.monotonic()
    hs = lab.start_hosts(["h1", "h2", "h3"], timeout=60)
    print(
        f"\n3 hosts running after {time.monotonic() - t0:.2f}s; boot times: "
        + ", ".join(f"{h.name} {h.boot_time:.2f}s" for h in hs)
    )
    return hs


@pytest.fixture
def lab_factory(hosts_supported: None) -> Iterator[Callable[..., HostLab]]:
    """Open extra labs (next free slot); whatever a test leaves open is closed after it."""
    labs: list[HostLab] = []

    def make(prefix: str = "pytest-own", **kwargs: object) -> HostLab:
        kwargs.setdefault("binds", default_binds())
        lab = open_lab(prefix, **kwargs)  # type: ignore[arg-type]
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


@pytest.fixture(scope="module")
def cluster(hosts_supported: None, request: pytest.FixtureRequest) -> Iterator[FleetCluster]:
    """A real fleet shared by one test module: etcd plus 3 hosts running fleetd, metadata
    role=web, web, db. The module sets ``TTL`` (agent_ttl, seconds) and ``LAB_PREFIX``."""
    ttl = float(request.module.TTL)
    with FleetCluster(
        size=3,
        lab_prefix=request.module.LAB_PREFIX,
        agent_ttl=f"{ttl:g}s",
        metadata=[{"role": "web"}, {"role": "web"}, {"role": "db"}],
    ) as fc:
        yield fc
