"""``fleetctl update`` and ``fleetctl rollback`` against a real etcd, with an engine
carrying the update out and machines simulated by published states (an instance runs
active on whatever body it has, unless that body runs /bin/false: then it failed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetctl_support import Fleet, fleetctl

from fleetd.engine.engine import Engine
from fleetd.model.state import StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.registry import Registry
from fleetd.settings import Settings
from fleetlab.wait import wait_until

pytestmark = pytest.mark.integration

M1 = "d" * 32
V1 = "[Unit]\nDescription=v1\n\n[Service]\nExecStart=/bin/sleep 1000\n"
V2 = "[Unit]\nDescription=v2\n\n[Service]\nExecStart=/bin/sleep 2000\n"
BAD = "[Unit]\nDescription=bad\n\n[Service]\nExecStart=/bin/false\n"
NAMES = ["web@1.service", "web@2.service", "web@3.service"]


async def _agents(registry: Registry) -> None:
    lease = await registry.grant_lease(120)
    while True:
        states = []
        for unit in await registry.units():
            if unit.desired is DesiredState.LAUNCHED:
                active = "failed" if "/bin/false" in unit.file.contents else "active"
                states.append(UnitState(unit.name, M1, unit.hash, "loaded", active, "running"))
        await registry.publish_states(M1, lease, states)
        await asyncio.sleep(0.05)


@pytest.fixture
def cluster(fleet: Fleet) -> Iterator[Fleet]:
    """The template at V1 with three launched instances, an engine and the fake machines."""
    registry = fleet.registry
    assert registry is not None

    async def start() -> list[asyncio.Task[None]]:
        await registry.create_unit(StoredUnit("web@.service", parse_unit_file(V1), DesiredState.INACTIVE, 1), False)
        for name in NAMES:
            await registry.create_unit(StoredUnit(name, parse_unit_file(V1), DesiredState.LAUNCHED, 1), False)
        settings = Settings(agent_ttl=30, engine_ttl=30, engine_reconcile_interval=0.05, debounce=0.001)
        engine = Engine(registry, "engine-under-test", settings)
        return [asyncio.create_task(engine.run()), asyncio.create_task(_agents(registry))]

    tasks = fleet.run(start())

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        yield fleet
    finally:
        fleet.run(stop())


def bodies(fleet: Fleet) -> dict[str, tuple[str, int]]:
    return {name: (unit.file.contents, unit.revision) for name, unit in fleet.units().items()}


def test_update_rolls_every_instance_and_the_template_and_rollback_returns(cluster: Fleet, tmp_path: Path) -> None:
    env = {"FLEETCTL_ENDPOINT": cluster.add_api(M1, token=None).unix}
    (tmp_path / "web@.service").write_text(V2)
    result = fleetctl("update", "--max-parallel=2", "--min-healthy=200ms", "web@.service", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "Update of web@.service to body" in result.out and "3 instances" in result.out
    assert "finished" in result.out
    v2 = parse_unit_file(V2).contents
    assert bodies(cluster) == dict.fromkeys(["web@.service", *NAMES], (v2, 2))
    # back to revision 1's body: a rollback is an update like any other (revision 3 each)
    result = fleetctl("rollback", "--min-healthy=0.1", "web@.service", env=env)
    assert result.code == 0, result.err
    assert "Rollback of web@.service to revision 1" in result.out
    v1 = parse_unit_file(V1).contents
    assert bodies(cluster) == dict.fromkeys(["web@.service", *NAMES], (v1, 3))


def test_an_update_that_cannot_become_healthy_is_reverted_and_fleetctl_says_why(cluster: Fleet, tmp_path: Path) -> None:
    env = {"FLEETCTL_ENDPOINT": cluster.add_api(M1, token=None).unix}
    (tmp_path / "web@.service").write_text(BAD)
    result = fleetctl("update", "--min-healthy=0.2s", "--healthy-deadline=1s", "web@.service", env=env, cwd=tmp_path)
    assert result.code == 1
    assert "stopped and was reverted: web@1.service was not healthy within 1s" in result.err
    assert "failed/running" in result.err
    v1 = parse_unit_file(V1).contents
    now = bodies(cluster)
    assert now["web@1.service"] == (v1, 3)  # replaced, then reverted
    assert now["web@2.service"] == (v1, 1) and now["web@3.service"] == (v1, 1)  # never touched
    assert now["web@.service"] == (v1, 1)


def test_the_etcd_driver_starts_and_follows_an_update_too(cluster: Fleet, tmp_path: Path) -> None:
    env = {"FLEETCTL_DRIVER": "etcd", "FLEETCTL_ENDPOINT": ",".join(cluster.etcd.endpoints)}
    env["FLEETCTL_ETCD_KEY_PREFIX"] = cluster.prefix
    (tmp_path / "web@.service").write_text(V2)
    result = fleetctl("update", "--max-parallel=3", "--min-healthy=0", "web@.service", env=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert all(unit.revision == 2 for unit in cluster.units().values())
    # a second update while none runs is fine; a conflicting one is refused
    (tmp_path / "web@.service").write_text(V1)
    first = fleetctl("update", "--no-block", "--min-healthy=5s", "web@.service", env=env, cwd=tmp_path)
    assert first.code == 0, first.err
    second = fleetctl("update", "--no-block", "web@.service", env=env, cwd=tmp_path)
    assert second.code == 1 and "an update of web@.service is already" in second.err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["update", "--min-healthy=soon", "web@.service"], "invalid duration"),
        (["update", "--max-parallel=0", "web@.service"], "--max-parallel"),
        (["rollback", "--to=0", "web@.service"], "--to"),
        (["update", "nothing@.service"], "cannot read unit file"),
    ],
)
def test_bad_arguments_are_refused(fleet: Fleet, tmp_path: Path, argv: list[str], fragment: str) -> None:
    env = {"FLEETCTL_ENDPOINT": fleet.add_api(M1, token=None).unix}
    (tmp_path / "web@.service").write_text(V2)
    result = fleetctl(*argv, env=env, cwd=tmp_path)
    assert result.code != 0 and fragment in result.err


def test_a_fleetctl_killed_while_following_neither_loses_nor_repeats_the_update(cluster: Fleet, tmp_path: Path) -> None:
    (tmp_path / "web@.service").write_text(V2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    env["FLEETCTL_ENDPOINT"] = cluster.add_api(M1, token=None).unix
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    argv = [sys.executable, "-m", "fleetctl.main", "update", "--min-healthy=0.5s", "web@.service"]
    follower = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert "started: 3 instances" in follower.stdout.readline()  # the record is written
    finally:
        follower.send_signal(signal.SIGKILL)
        follower.wait(10)
    registry = cluster.registry
    assert registry is not None

    def ended() -> str | None:
        found = cluster.run(registry.get_update("web@.service"))
        return str(found[0].state) if found is not None and found[0].state.final else None

    # another fleetctl follows it to its end
    env_api = {"FLEETCTL_ENDPOINT": env["FLEETCTL_ENDPOINT"]}
    result = fleetctl("update-status", "--wait", "web@.service", env=env_api)
    assert result.code == 0 and "finished" in result.out, result.err
    assert wait_until(ended, 20, "the update to end without its fleetctl") == "finished"
    status = fleetctl("update-status", "web@.service", env=env_api)
    assert status.code == 0 and status.out.startswith("update of web@.service to body")
    assert status.out.count("\thealthy\t") == 3
    assert fleetctl("update-status", "-o", "json", "web@.service", env=env_api).out.count('"phase"') == 3
    missing = fleetctl("update-status", "web@1.service", env=env_api)
    assert missing.code == 1 and "unit web@1.service has no update" in missing.err
    # each instance replaced exactly once, then the template
    v2 = parse_unit_file(V2).contents
    assert bodies(cluster) == dict.fromkeys(["web@.service", *NAMES], (v2, 2))
