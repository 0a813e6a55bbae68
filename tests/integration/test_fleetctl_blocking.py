"""fleetctl's blocking commands against a running cluster: the real engine and agents
(with the simulated service manager, fleetlab.simcluster) on a real etcd, and
fleetd's real API, all in one background event loop."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetctl_support import Fleet, canonical, fleetctl, write_units

from fleetlab.etcd import EtcdCluster
from fleetlab.simcluster import SimCluster
from fleetlab.wait import wait_until

pytestmark = pytest.mark.integration

SERVICE = "[Unit]\nDescription=u %n\n\n[Service]\nExecStart=/bin/sleep infinity\n"
CHANGED = "[Unit]\nDescription=changed\n\n[Service]\nExecStart=/bin/sleep 1000\n"
GLOBAL = "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n"


class Cluster:
    def __init__(self, fleet: Fleet, sim: SimCluster, env: dict[str, str]) -> None:
        self.fleet = fleet
        self.sim = sim
        self.env = env

    def machine_ids(self) -> list[str]:
        return sorted(self.sim.machines)

    def starts(self, name: str) -> int:
        return sum(m.manager.starts.get(name, 0) for m in self.sim.machines.values())


@pytest.fixture
def cluster(fleet: Fleet, etcd: EtcdCluster, key_prefix: str) -> Iterator[Cluster]:
    sim = SimCluster(tuple(etcd.endpoints), key_prefix)
    try:
        fleet.run(sim.add_machine({"role": "a"}))
        fleet.run(sim.add_machine({"role": "b"}))
        fleet.run(sim.add_engine())
        api = fleet.add_api(sorted(sim.machines)[0])
        yield Cluster(fleet, sim, {"FLEETCTL_ENDPOINT": api.unix})
    finally:
        fleet.run(sim.close())


LINE = re.compile(r"^Unit (\S+) (\w+)(?: on ([0-9a-f]{8})\.\.\.)?$")


def parse_lines(out: str) -> dict[str, tuple[str, str | None]]:
    result = {}
    for line in out.splitlines():
        match = LINE.match(line)
        assert match, line
        result[match.group(1)] = (match.group(2), match.group(3))
    return result


def test_load_and_unload_six_units(cluster: Cluster, tmp_path: Path) -> None:
    names = [f"six{i}.service" for i in range(6)]
    write_units(tmp_path, dict.fromkeys(names, SERVICE))
    result = fleetctl("load", *names, env=cluster.env, cwd=tmp_path)
    assert result.code == 0, result.err
    lines = parse_lines(result.out)
    assert sorted(lines) == names
    short_ids = {m[:8] for m in cluster.machine_ids()}
    assert all(state == "loaded" and machine in short_ids for state, machine in lines.values())
    assert all(cluster.starts(n) == 0 for n in names)
    result = fleetctl("unload", "six*", env=cluster.env)
    assert result.code == 0, result.err
    assert parse_lines(result.out) == dict.fromkeys(names, ("inactive", None))
    result = fleetctl("list-units", "--no-legend", env=cluster.env)
    assert result.out == ""


def test_start_stop_restart_and_destroy_three_units(cluster: Cluster, tmp_path: Path) -> None:
    names = ["one.service", "two.service", "three.service"]
    write_units(tmp_path, dict.fromkeys(names, SERVICE))
    result = fleetctl("start", *names, env=cluster.env, cwd=tmp_path)
    assert result.code == 0, result.err
    lines = parse_lines(result.out)
    assert {n: s for n, (s, _) in lines.items()} == dict.fromkeys(names, "launched")
    assert sorted(cluster.sim.placement()) == sorted(names)
    listed = fleetctl("list-units", "--no-legend", "--fields=unit,active,sub", env=cluster.env).out
    assert listed == "one.service\tactive\trunning\nthree.service\tactive\trunning\ntwo.service\tactive\trunning\n"

    result = fleetctl("stop", "one", "two", env=cluster.env)
    assert result.code == 0, result.err
    assert {n: s for n, (s, _) in parse_lines(result.out).items()} == {"one.service": "loaded", "two.service": "loaded"}
    assert sorted(cluster.sim.placement()) == ["three.service"]

    before = cluster.starts("three.service")
    result = fleetctl("restart", "three", env=cluster.env)
    assert result.code == 0, result.err
    assert [line.split()[2] for line in result.out.splitlines()] == ["loaded", "launched"]
    assert cluster.starts("three.service") == before + 1
    # restart of a stopped unit starts it
    result = fleetctl("restart", "one", env=cluster.env)
    assert result.code == 0 and parse_lines(result.out)["one.service"][0] == "launched"

    result = fleetctl("destroy", *names, env=cluster.env)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"Destroyed {n}" for n in names]
    assert cluster.sim.placement() == {}
    assert fleetctl("list-units", "--no-legend", env=cluster.env).out == ""


def test_start_many_units_at_once(cluster: Cluster, tmp_path: Path) -> None:
    names = [f"many{i:02d}.service" for i in range(25)]
    write_units(tmp_path, dict.fromkeys(names, SERVICE))
    result = fleetctl("start", "many*.service", env=cluster.env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert {n: s for n, (s, _) in parse_lines(result.out).items()} == dict.fromkeys(names, "launched")
    assert sorted(cluster.sim.placement()) == names
    result = fleetctl("destroy", "many*", env=cluster.env)
    assert result.code == 0 and len(result.out.splitlines()) == 25
    assert cluster.sim.placement() == {}


def test_restart_of_a_global_unit_restarts_it_everywhere(cluster: Cluster, tmp_path: Path) -> None:
    write_units(tmp_path, {"everywhere.service": GLOBAL})
    result = fleetctl("start", "everywhere.service", env=cluster.env, cwd=tmp_path)
    assert result.out == "Triggered global unit everywhere.service start\n"
    listed = lambda: fleetctl("list-units", "--no-legend", "--fields=active", env=cluster.env).out  # noqa: E731
    # polled from the test's thread (never inside the loop: the API runs there)
    wait_until(lambda: listed() == "active\nactive\n", 10, "the global unit to run on both machines")
    before = {m.id: m.manager.starts.get("everywhere.service", 0) for m in cluster.sim.machines.values()}
    result = fleetctl("restart", "everywhere", "--block-attempts=20", env=cluster.env)
    assert result.code == 0, result.err
    assert sorted(result.out.splitlines()) == sorted(
        f"Unit everywhere.service launched on {m[:8]}..." for m in cluster.machine_ids()
    )
    after = {m.id: m.manager.starts.get("everywhere.service", 0) for m in cluster.sim.machines.values()}
    assert all(after[m] == before[m] + 1 for m in before), (before, after)


def test_start_replace_runs_the_new_body(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "app.service"
    path.write_text(SERVICE)
    assert fleetctl("start", "app.service", env=cluster.env, cwd=tmp_path).code == 0
    path.write_text(CHANGED)
    result = fleetctl("start", "--replace", "app.service", env=cluster.env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert parse_lines(result.out)["app.service"][0] == "launched"
    assert fleetctl("cat", "app", env=cluster.env).out == canonical(CHANGED)
    running = [m for m in cluster.sim.machines.values() if "app.service" in m.running()]
    assert len(running) == 1
    assert running[0].manager.files["app.service"] == cluster.fleet.units()["app.service"].file


def test_unplaceable_unit_reports_the_engines_reason(cluster: Cluster, tmp_path: Path) -> None:
    write_units(
        tmp_path, {"mars.service": "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineMetadata=region=mars\n"}
    )
    result = fleetctl("start", "--block-attempts=3", "mars.service", env=cluster.env, cwd=tmp_path)
    assert result.code == 1
    assert "Unit mars.service cannot be placed:" in result.err
    assert "timed out waiting for unit mars.service to report state launched: it cannot be placed:" in result.err
    assert "region" in result.err
