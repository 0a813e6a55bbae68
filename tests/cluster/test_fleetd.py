"""fleetd on real systemd hosts: fleetd runs inside each host as a socket-activated service.

Everything here is observed where it matters: in each host's own systemd (``systemctl``
inside the host) and through fleetd's HTTP API. Timing assertions use the configured
agent_ttl; waits are conditions with deadlines.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from fleetlab.fleetcluster import FleetCluster, FleetHost, fleetd_log
from fleetlab.wait import wait_until

pytestmark = pytest.mark.cluster

TTL = 3.0  # agent_ttl of the module's cluster (fixture `cluster` in conftest.py)
LAB_PREFIX = "fleetd"
SLEEP_UNIT = "[Unit]\nDescription={name}\n[Service]\nExecStart=/bin/sh -c 'echo started {name}; exec sleep infinity'\n"


def options(text: str) -> list[dict[str, str]]:
    from fleetd.model.unitfile import parse_unit_file

    return parse_unit_file(text).to_options()


def request(
    cluster: FleetCluster, method: str, path: str, body: Any = None, host: FleetHost | None = None
) -> tuple[int, Any]:
    target = host or cluster.live_hosts()[0]
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{target.endpoint}/fleet/v1{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, (json.loads(raw) if raw else None)


def start_unit(cluster: FleetCluster, name: str, text: str | None = None, desired: str = "launched") -> None:
    status, body = request(
        cluster,
        "PUT",
        f"/units/{name}",
        {"name": name, "desiredState": desired, "options": options(text or SLEEP_UNIT.format(name=name))},
    )
    assert status in (201, 204), body


def set_state(cluster: FleetCluster, name: str, desired: str) -> None:
    status, body = request(cluster, "PUT", f"/units/{name}", {"name": name, "desiredState": desired})
    assert status == 204, body


def destroy(cluster: FleetCluster, name: str) -> None:
    status, body = request(cluster, "DELETE", f"/units/{name}")
    assert status in (204, 404), body


def hosts_running(cluster: FleetCluster, name: str) -> list[str]:
    return cluster.where(name)


def test_started_unit_runs_on_exactly_one_host_and_reports_state(cluster: FleetCluster) -> None:
    start_unit(cluster, "hello.service")
    where = wait_until(lambda: hosts_running(cluster, "hello.service"), 20, "hello.service active in a host")
    assert len(where) == 1
    host = next(h for h in cluster.hosts if h.name == where[0])

    def reported() -> bool:
        _, body = request(cluster, "GET", "/state?unitName=hello.service")
        states = body.get("states", [])
        return (
            len(states) == 1
            and states[0]["machineID"] == host.machine_id
            and states[0]["systemdActiveState"] == "active"
        )

    wait_until(reported, 10, "the state of hello.service in the registry")
    assert "started hello.service" in host.host.journal("hello.service")
    destroy(cluster, "hello.service")
    wait_until(lambda: not hosts_running(cluster, "hello.service"), 20, "hello.service gone after destroy")


def test_stop_unload_destroy_and_replace_reach_systemd(cluster: FleetCluster) -> None:
    name = "life.service"
    start_unit(cluster, name)
    (where,) = wait_until(lambda: hosts_running(cluster, name), 20, "life.service running")
    host = next(h for h in cluster.hosts if h.name == where)
    set_state(cluster, name, "loaded")
    wait_until(lambda: host.unit_active(name) in ("inactive", "failed"), 20, "life.service stopped")
    assert host.host.unit_property(name, "LoadState") == "loaded"
    set_state(cluster, name, "launched")
    wait_until(lambda: host.unit_active(name) == "active", 20, "life.service started again")
    # --replace: a new body takes effect in systemd
    new_text = "[Unit]\nDescription=replaced\n[Service]\nExecStart=/bin/sh -c 'echo v2; exec sleep infinity'\n"
    status, body = request(
        cluster,
        "PUT",
        f"/units/{name}?replace=true",
        {"name": name, "desiredState": "launched", "options": options(new_text)},
    )
    assert status == 204, body
    wait_until(
        lambda: any(h.running(name) and h.host.unit_property(name, "Description") == "replaced" for h in cluster.hosts),
        20,
        "the replaced body running",
    )
    set_state(cluster, name, "inactive")
    wait_until(
        lambda: (
            all(
                h.host.unit_property(name, "LoadState") in ("not-found", "") or not h.running(name)
                for h in cluster.hosts
            )
            and not hosts_running(cluster, name)
        ),
        20,
        "life.service unloaded",
    )
    destroy(cluster, name)
    status, _ = request(cluster, "GET", f"/units/{name}")
    assert status == 404


def test_global_unit_runs_everywhere_and_on_a_new_host(cluster: FleetCluster) -> None:
    text = SLEEP_UNIT.format(name="everywhere") + "[X-Fleet]\nGlobal=true\n"
    start_unit(cluster, "everywhere.service", text)
    wait_until(
        lambda: len(hosts_running(cluster, "everywhere.service")) == len(cluster.live_hosts()),
        20,
        "the global unit on every host",
    )
    joined = cluster.add_host("h9", {"role": "extra"})
    wait_until(lambda: joined.running("everywhere.service"), 20, "the global unit on the new host")
    destroy(cluster, "everywhere.service")
    wait_until(lambda: not hosts_running(cluster, "everywhere.service"), 20, "global unit gone")


def test_fleetd_restart_adopts_running_units(cluster: FleetCluster) -> None:
    start_unit(cluster, "steady.service")
    (where,) = wait_until(lambda: hosts_running(cluster, "steady.service"), 20, "steady.service running")
    host = next(h for h in cluster.hosts if h.name == where)
    unit_pid = host.main_pid("steady.service")
    old_fleetd = host.fleetd_pid()
    host.kill_fleetd()
    wait_until(lambda: host.fleetd_pid() not in (0, old_fleetd), 20, "fleetd restarted by systemd")
    # give the new fleetd time to reconcile: its machine must be registered again
    wait_until(lambda: host.machine_id in cluster.machines(), 20, "fleetd re-registered")
    _, body = request(cluster, "GET", "/state?unitName=steady.service")
    assert body["states"][0]["machineID"] == host.machine_id
    assert host.main_pid("steady.service") == unit_pid, "the unit was restarted"
    assert hosts_running(cluster, "steady.service") == [host.name]
    destroy(cluster, "steady.service")


def test_journal_endpoint_reads_the_right_host(cluster: FleetCluster) -> None:
    start_unit(cluster, "talker.service")
    (where,) = wait_until(lambda: hosts_running(cluster, "talker.service"), 20, "talker.service running")
    host = next(h for h in cluster.hosts if h.name == where)
    with urllib.request.urlopen(
        f"{host.endpoint}/fleet/v1/machines/{host.machine_id}/journal/talker.service?lines=5", timeout=10
    ) as response:
        text = response.read().decode()
    assert "started talker.service" in text
    # another machine's fleetd relays to the unit's machine (its peer listener)
    other = next(h for h in cluster.live_hosts() if h.name != where)
    with urllib.request.urlopen(
        f"{other.endpoint}/fleet/v1/machines/{host.machine_id}/journal/talker.service?lines=5", timeout=10
    ) as response:
        assert "started talker.service" in response.read().decode()
    destroy(cluster, "talker.service")


def test_etcd_outage_keeps_units_running(cluster: FleetCluster) -> None:
    names = [f"outage{i}.service" for i in range(3)]
    for name in names:
        start_unit(cluster, name)
    wait_until(lambda: all(hosts_running(cluster, n) for n in names), 30, "outage units running")
    pids = {n: [h for h in cluster.hosts if h.running(n)][0].main_pid(n) for n in names}
    assert cluster.etcd is not None
    cluster.etcd.stop()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert all(hosts_running(cluster, n) for n in names), "a unit stopped while etcd was away"
            time.sleep(1)
    finally:
        cluster.etcd.start()
    cluster.wait_registered(30)

    def states_back() -> bool:
        _, body = request(cluster, "GET", "/state")
        active = {s["name"] for s in body.get("states", []) if s["systemdActiveState"] == "active"}
        return set(names) <= active

    wait_until(states_back, 30, "unit states correct after etcd returned")
    for name in names:
        where = [h for h in cluster.hosts if h.running(name)]
        assert len(where) == 1 and where[0].main_pid(name) == pids[name]
        destroy(cluster, name)


def test_partitioned_host_loses_its_units_and_drops_duplicates_on_heal(cluster: FleetCluster) -> None:
    start_unit(cluster, "part.service")
    (where,) = wait_until(lambda: hosts_running(cluster, "part.service"), 20, "part.service running")
    host = next(h for h in cluster.hosts if h.name == where)
    others = [h for h in cluster.live_hosts() if h is not host]
    host.host.partition()
    try:
        wait_until(lambda: any(h.running("part.service") for h in others), TTL + 15, "part.service placed elsewhere")
        assert host.running("part.service")  # cut off, it keeps its copy meanwhile
    finally:
        host.host.heal()
    wait_until(lambda: not host.running("part.service"), 30, "the healed host to stop its duplicate")
    assert len(hosts_running(cluster, "part.service")) == 1
    destroy(cluster, "part.service")


def test_graceful_stop_unloads_and_leaves_then_keep_mode_adopts(cluster: FleetCluster) -> None:
    start_unit(cluster, "graceful.service")
    (where,) = wait_until(lambda: hosts_running(cluster, "graceful.service"), 20, "graceful.service running")
    host = next(h for h in cluster.hosts if h.name == where)
    others = [h for h in cluster.live_hosts() if h is not host]
    stopped_at = time.monotonic()
    host.host.systemctl("stop", "fleetd.service")  # SIGTERM: fleet's default is to unload and leave
    assert not host.running("graceful.service")
    wait_until(lambda: any(h.running("graceful.service") for h in others), TTL + 10, "graceful.service moved")
    print(f"\nafter a graceful stop the unit ran elsewhere in {time.monotonic() - stopped_at:.2f} s")
    # asked elsewhere: a request to this host's socket would start its fleetd again
    assert host.machine_id not in cluster.machines(via=others[0])
    # now keep units running across restarts: stop_units_on_exit=false, then restart fleetd
    conf = host.host.root_path / "run/fleet/fleet.conf"
    conf.write_text(conf.read_text() + "stop_units_on_exit=false\n")
    host.host.systemctl("start", "fleetd.service")
    cluster.wait_registered(30)
    pin = SLEEP_UNIT.format(name="kept") + f"[X-Fleet]\nMachineID={host.machine_id}\n"
    start_unit(cluster, "kept.service", pin)
    wait_until(lambda: host.running("kept.service"), 20, "kept.service running")
    pid = host.main_pid("kept.service")
    host.host.systemctl("restart", "fleetd.service")
    wait_until(lambda: host.fleetd_pid() != 0, 20, "fleetd back")
    cluster.wait_registered(30)
    assert host.running("kept.service"), fleetd_log(host)
    assert host.main_pid("kept.service") == pid, "kept.service was restarted"
    destroy(cluster, "kept.service")
    destroy(cluster, "graceful.service")


def test_sighup_reloads_metadata(cluster: FleetCluster) -> None:
    host = cluster.live_hosts()[-1]
    # an earlier test may have just restarted this fleetd: let it finish starting
    cluster.wait_registered(30)
    wait_until(lambda: request(cluster, "GET", "/machines", host=host)[0] == 200, 20, "its API")
    conf = host.host.root_path / "run/fleet/fleet.conf"
    original = conf.read_text()
    conf.write_text(
        "".join(line for line in original.splitlines(keepends=True) if not line.startswith("metadata="))
        + "metadata=role=reloaded,zone=z1\n"
    )
    pid = host.fleetd_pid()
    host.host.systemctl("kill", "--signal=SIGHUP", "--kill-who=main", "fleetd.service")

    def metadata() -> dict[str, str] | None:
        _, body = request(cluster, "GET", "/machines")
        found = next(m for m in body["machines"] if m["id"] == host.machine_id)
        return found["metadata"] if found["metadata"].get("role") == "reloaded" else None

    assert wait_until(metadata, 15, "the reloaded metadata") == {"role": "reloaded", "zone": "z1"}
    assert host.fleetd_pid() == pid  # reloaded in place, not restarted


def test_crashed_host_units_move_within_ttl_and_nothing_else_moves(cluster: FleetCluster) -> None:
    names = [f"crash{i}.service" for i in range(6)]
    for name in names:
        start_unit(cluster, name)
    wait_until(lambda: all(len(hosts_running(cluster, n)) == 1 for n in names), 30, "crash units running")
    before = {n: hosts_running(cluster, n)[0] for n in names}
    # crash the host that is not the engine leader if possible, holding at least one unit
    victim_name = max(set(before.values()), key=lambda h: sum(1 for v in before.values() if v == h))
    victim = next(h for h in cluster.hosts if h.name == victim_name)
    moved = [n for n, h in before.items() if h == victim_name]
    survivors = [h for h in cluster.live_hosts() if h is not victim]
    crashed_at = time.monotonic()
    victim.host.crash()
    wait_until(
        lambda: all(any(h.running(n) for h in survivors) for n in moved),
        TTL + 20,
        "units of the crashed host elsewhere",
    )
    took = time.monotonic() - crashed_at
    print(f"\ncrash failover: {len(moved)} units running elsewhere after {took:.2f} s (agent_ttl {TTL} s)")
    for name, host_name in before.items():
        if name not in moved:
            assert hosts_running(cluster, name) == [host_name], f"{name} moved although its host is alive"
    assert took < TTL + 2, f"failover took {took:.2f} s"
    for name in names:
        destroy(cluster, name)


def test_every_fleetd_reports_its_supervised_tasks_running(cluster: FleetCluster) -> None:
    """On real hosts: each fleetd's /metrics lists the agent's tasks, the history writer and the engine, all up."""

    def task_lines(host: FleetHost) -> dict[str, str]:
        with urllib.request.urlopen(f"{host.endpoint}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            line.split('task="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("fleet_task_up{")
        }

    for host in cluster.live_hosts():
        up = wait_until(lambda h=host: task_lines(h), 20, f"fleetd on {host.name} to report its tasks")
        tasks = {"agent.keepalive", "agent.states", "agent.metadata", "agent.schedule", "history", "engine"}
        assert set(up) == tasks, up
        assert set(up.values()) == {1}, up
