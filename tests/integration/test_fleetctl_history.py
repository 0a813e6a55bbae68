"""fleetctl history against fleetd's API and against etcd directly, over a real etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fleetctl_support import ROOT, Fleet, fleetctl

from fleetd.model.history import EventKind, HistoryEvent

M1 = "113f16a7" + "0" * 24
BASE = 1_800_000_000.0


def record(fleet: Fleet, *events: HistoryEvent) -> None:
    assert fleet.registry is not None
    fleet.run(fleet.registry.record_events(list(events)))


def seed(fleet: Fleet) -> str:
    """Four events in the cluster; the unix socket of the API to ask."""
    api = fleet.add_api(M1)
    fleet.add_machine(M1, "10.0.0.1")
    record(
        fleet,
        HistoryEvent(BASE, EventKind.PLACED, "web@1.service", M1, "least loaded of 2 candidates"),
        HistoryEvent(BASE + 1, EventKind.STARTED, "web@1.service", M1, "desired state is launched"),
        HistoryEvent(BASE + 2, EventKind.MACHINE_LOST, "", "2" * 32, "machine 22222222 lost"),
        HistoryEvent(BASE + 3, EventKind.PLACED, "db.service", M1, "MachineID=113f16a7"),
    )
    return api.unix


def test_history_shows_every_event_oldest_first_as_a_table(fleet: Fleet) -> None:
    result = fleetctl("history", env={"FLEETCTL_ENDPOINT": seed(fleet)})
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "UNIT", "MACHINE", "REASON"]
    assert [line.split()[1] for line in lines[1:]] == ["placed", "started", "machine-lost", "placed"]
    assert "113f16a7.../10.0.0.1" in lines[1] and "least loaded of 2 candidates" in lines[1]
    assert lines[3].split()[2] == "-"  # a machine's event has no unit


def test_history_of_units_by_name_and_glob_and_as_json(fleet: Fleet) -> None:
    env = {"FLEETCTL_ENDPOINT": seed(fleet)}
    result = fleetctl("history", "--output", "json", "web@1", env=env)
    assert result.code == 0, result.err
    events = json.loads(result.out)
    assert [e["event"] for e in events] == ["placed", "started"]
    assert set(events[0]) == {"time", "unit", "machine", "event", "reason", "revision"}
    assert events[0]["time"] == "2027-01-15T08:00:00.000Z"
    result = fleetctl("history", "--no-legend", "web@*", "db", env=env)
    assert [line.split()[2] for line in result.out.splitlines()] == ["web@1.service", "web@1.service", "db.service"]
    # a unit with no history (or never seen): an empty answer, not an error
    assert fleetctl("history", "--no-legend", "nothing.service", env=env).out == ""
    assert fleetctl("history", "-bad-", env=env).code == 2


def test_history_through_etcd_directly(fleet: Fleet) -> None:
    seed(fleet)
    env = {"FLEETCTL_DRIVER": "etcd", "FLEETCTL_ENDPOINT": ",".join(fleet.etcd.endpoints)}
    env["FLEETCTL_ETCD_KEY_PREFIX"] = fleet.prefix
    result = fleetctl("history", "--output", "json", "db.service", env=env)
    assert result.code == 0, result.err
    assert [e["reason"] for e in json.loads(result.out)] == ["MachineID=113f16a7"]


def test_history_follow_prints_new_events_as_json_lines(fleet: Fleet) -> None:
    env = {**os.environ, "FLEETCTL_ENDPOINT": seed(fleet), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetctl.main", "history", "-f", "-o", "json", "db.service"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["reason"] == "MachineID=113f16a7"  # the stored one
        record(fleet, HistoryEvent(BASE + 9, EventKind.STOPPED, "db.service", M1, "desired state is loaded"))
        assert json.loads(process.stdout.readline())["event"] == "stopped"  # then the new one
    finally:
        process.kill()
        process.wait(10)
