"""Rolling updates on real hosts: etcd and three systemd machines running fleetd.

fleetctl (a process of its own, on the first host's API) updates three instances of a
template, one at a time, while a sampler asks every host's systemd which instances are
active: never fewer than two may be. An update whose body cannot stay up is reverted by
the engine, and fleetctl exits 1 naming the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlab.fleetcluster import FleetCluster, FleetHost
from fleetlab.wait import wait_until

pytestmark = pytest.mark.cluster

TTL = 3.0  # agent_ttl of the module's cluster (fixture `cluster` in conftest.py)
LAB_PREFIX = "fupd"
ROOT = Path(__file__).resolve().parents[2]
NAMES = ["web@1.service", "web@2.service", "web@3.service"]
# one instance per host (Conflicts), each a plain long-running service
BODY = """[Unit]
Description={version} %i

[Service]
ExecStart=/bin/sh -c 'exec sleep infinity'

[X-Fleet]
Conflicts=web@*.service
"""
# starts, then exits with an error after a second: never healthy for two
DIES = """[Unit]
Description=dies %i

[Service]
ExecStart=/bin/sh -c 'sleep 1; exit 3'

[X-Fleet]
Conflicts=web@*.service
"""


def fleetctl(
    cluster: FleetCluster, cwd: Path, *args: str, timeout: float = 60, host: FleetHost | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    env["PYTHONPATH"] = str(ROOT)
    env["FLEETCTL_ENDPOINT"] = (host or cluster.hosts[0]).endpoint
    return subprocess.run(
        [sys.executable, "-m", "fleetctl.main", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def descriptions(cluster: FleetCluster) -> dict[str, str]:
    """Instance -> the Description systemd shows for it where it is active (its body)."""
    found: dict[str, str] = {}
    for host in cluster.hosts:
        text = host.host.systemctl("show", "-p", "Id,ActiveState,Description", *NAMES).stdout
        for block in text.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if props.get("ActiveState") == "active":
                found[props["Id"]] = props.get("Description", "")
    return found


class Sampler:
    """Counts the active instances across the hosts, as often as systemd answers."""

    def __init__(self, cluster: FleetCluster) -> None:
        self.cluster = cluster
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.counts.append(len(descriptions(self.cluster)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def launched(cluster: FleetCluster, tmp_path: Path) -> Iterator[Path]:
    """web@1..3 running v1, one per host; destroyed afterwards."""
    (tmp_path / "web@.service").write_text(BODY.format(version="v1"))
    result = fleetctl(cluster, tmp_path, "start", *NAMES)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(descriptions(cluster)) == 3, 30, "three instances active")
    try:
        yield tmp_path
    finally:
        fleetctl(cluster, tmp_path, "destroy", *NAMES)
        wait_until(lambda: not descriptions(cluster), 30, "the instances gone")


def revisions(cluster: FleetCluster) -> dict[str, int]:
    """Each instance's revision (the template is not stored: the instances were started
    from a local template file, as fleet users do)."""
    return {name: cluster.api(f"/fleet/v1/units/{name}")["revision"] for name in NAMES}


def test_a_rolling_update_keeps_two_of_three_instances_active_throughout(cluster: FleetCluster, launched: Path) -> None:
    (launched / "web@.service").write_text(BODY.format(version="v2"))
    started = time.monotonic()
    with Sampler(cluster) as sampler:
        result = fleetctl(cluster, launched, "update", "--max-parallel=1", "--min-healthy=1s", "web@.service")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "finished" in result.stdout
    counts = sampler.counts
    print(f"\nrolling update of 3 instances: {took:.1f}s, {len(counts)} samples, min active {min(counts)}")
    assert len(counts) >= 10, counts  # the sampler saw the update happen
    assert min(counts) >= 2, counts
    assert 2 in counts, "no instance was ever seen restarting: the samples missed the update"
    # every instance runs the new body on its host, and the cluster says revision 2
    wait_until(lambda: set(descriptions(cluster).values()) == {f"v2 {i}" for i in (1, 2, 3)}, 10, "v2 everywhere")
    assert revisions(cluster) == dict.fromkeys(NAMES, 2)


def test_an_update_that_cannot_stay_up_is_reverted_and_fleetctl_says_why(cluster: FleetCluster, launched: Path) -> None:
    (launched / "web@.service").write_text(DIES)
    started = time.monotonic()
    result = fleetctl(cluster, launched, "update", "--min-healthy=2s", "--healthy-deadline=5s", "web@.service")
    took = time.monotonic() - started
    print(f"\nunhealthy update reverted after {took:.1f}s: {result.stderr.strip()}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stopped and was reverted" in result.stderr
    assert "web@1.service was not healthy within 5s" in result.stderr
    # every instance is back on v1 and active; the one that was changed has a third revision
    wait_until(
        lambda: descriptions(cluster) == {name: f"v1 {name[4]}" for name in NAMES}, 20, "every instance on v1, active"
    )
    assert revisions(cluster) == {"web@1.service": 3, "web@2.service": 1, "web@3.service": 1}
    history = fleetctl(cluster, launched, "history", "-o", "json", "web@.service", "web@1.service")
    assert "update-reverted" in history.stdout and "update revert" in history.stdout


def test_the_engine_leader_lost_mid_update_the_next_one_finishes_it_without_repeating_a_step(
    cluster: FleetCluster, launched: Path
) -> None:
    (launched / "web@.service").write_text(BODY.format(version="v2"))
    with Sampler(cluster) as sampler:
        result = fleetctl(cluster, launched, "update", "--no-block", "--min-healthy=2s", "web@.service")
        assert result.returncode == 0, result.stderr

        def one_healthy() -> bool:
            return cluster.api("/fleet/v1/updates/web@.service")["counts"]["healthy"] >= 1

        wait_until(one_healthy, 30, "one instance healthy")
        leader_id = cluster.engine_leader()
        leader = next(h for h in cluster.hosts if h.machine_id == leader_id)
        leader.kill_fleetd()  # SIGKILL: its engine lease runs out; systemd restarts it after 1 s
        other = next(h for h in cluster.hosts if h is not leader)
        follow = fleetctl(cluster, launched, "update-status", "--wait", "web@.service", host=other)
    print(
        f"\nleader {leader.name} killed mid-update; the update {follow.stdout.strip()!r}; "
        f"new leader {cluster.engine_leader()}; min active {min(sampler.counts)} over {len(sampler.counts)} samples"
    )
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert "finished" in follow.stdout
    assert min(sampler.counts) >= 2, sampler.counts
    wait_until(lambda: set(descriptions(cluster).values()) == {f"v2 {i}" for i in (1, 2, 3)}, 20, "v2 everywhere")
    assert revisions(cluster) == dict.fromkeys(NAMES, 2)  # each instance replaced exactly once
