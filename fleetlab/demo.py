"""The local demo cluster: etcd plus three namespaced systemd hosts, each running fleetd.

``python -m fleetlab.demo up`` brings it up (idempotent: a running demo is left as
it is), starts the example units from ``examples/`` with fleetctl and prints what runs
where; ``down`` removes every trace; ``status`` shows it. Needs root (see
``fleetlab.hosts.check_supported``).

The demo lives in lab ``fleet-demo`` (bridge flbr9, 10.231.9.0/24, interfaces vh9-*) so it
never collides with test runs, which take the lower slots. etcd runs inside the lab's cgroup, so the
lab's sweep ends it along with the hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fleetlab.etcd import EtcdCluster
from fleetlab.fleetcluster import API_PORT, FleetCluster, FleetHost
from fleetlab.hosts import HostLab, check_supported, default_binds, sweep_leftovers
from fleetlab.wait import wait_until

LAB = "fleet-demo"
BRIDGE = "flbr9"
SUBNET = "10.231.9.0/24"
VETH_PREFIX = "vh9-"  # distinct from the test labs' interface names
STATE_DIR = Path("/run/fleet-demo")
STATE_FILE = STATE_DIR / "demo.json"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
METADATA = [
    {"region": "us-east", "disk": "ssd"},
    {"region": "us-east", "disk": "hdd"},
    {"region": "eu-west", "disk": "ssd"},
]
# the example units and the fleetctl command that starts each group
EXAMPLE_STARTS = [
    ["hello.service"],
    ["web@1.service", "web@2.service", "web@3.service"],
    ["monitor.service"],
    ["db.service", "db-backup.service"],
]


def _fleetctl() -> list[str]:
    return [sys.executable, "-m", "fleetctl.main"]


def _load_state() -> dict[str, Any] | None:
    try:
        return dict(json.loads(STATE_FILE.read_text()))
    except (OSError, ValueError):
        return None


def _demo_alive(state: dict[str, Any]) -> bool:
    """Every host's systemd and etcd still running (checked by pid + our cgroup)."""
    pids = [state["etcd_pid"], *(h["pid"] for h in state["hosts"])]
    for pid in pids:
        try:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        if f"/{LAB}/" not in cgroup and not cgroup.rstrip().endswith(f"/{LAB}"):
            return False
    return True


def _run_fleetctl(endpoint: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [*_fleetctl(), "--endpoint", endpoint, *args],
        capture_output=True,
        text=True,
        cwd=EXAMPLES,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"fleetctl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def up(ttl: str) -> int:
    state = _load_state()
    if state is not None and _demo_alive(state):
        print("The demo cluster is already running.\n")
        return status()
    if state is not None or STATE_DIR.exists():
        print("Removing the leftovers of an earlier demo cluster ...")
        down(quiet=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    lab = HostLab(LAB, bridge=BRIDGE, subnet=SUBNET, veth_prefix=VETH_PREFIX, binds=default_binds())
    etcd: EtcdCluster | None = None
    try:
        etcd = EtcdCluster(
            listen_hosts=("127.0.0.1", lab.bridge_ip), base_dir=str(STATE_DIR / "etcd"), die_with_parent=False
        )
        etcd.start()
        process = etcd.members[0].process
        assert process is not None
        etcd_cgroup = lab.cgroup / "etcd"
        etcd_cgroup.mkdir(exist_ok=True)
        (etcd_cgroup / "cgroup.procs").write_text(str(process.pid))
        cluster = FleetCluster(size=3, agent_ttl=ttl, metadata=METADATA, lab=lab, etcd=etcd)
        print("Booting 3 hosts (systemd in namespaces), each running fleetd ...")
        for index in range(3):
            cluster.add_host(f"h{index + 1}", METADATA[index], wait=False)
        cluster.wait_registered(60)
        endpoint = cluster.hosts[0].endpoint
        STATE_FILE.write_text(json.dumps(_state(cluster, process.pid), indent=2))
        print(f"Starting the example units from {EXAMPLES} ...")
        for group in EXAMPLE_STARTS:
            print(_run_fleetctl(endpoint, "start", *group).rstrip())
    except BaseException:
        lab.close()
        if etcd is not None:
            etcd.close()
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        raise
    lab.detach()  # leave it all running; `down` sweeps it
    print()
    return status()


def _state(cluster: FleetCluster, etcd_pid: int) -> dict[str, Any]:
    assert cluster.etcd is not None and cluster.lab is not None
    return {
        "lab": LAB,
        "etcd_pid": etcd_pid,
        "etcd_endpoints": cluster.etcd.endpoints,
        "bridge_ip": cluster.lab.bridge_ip,
        "hosts": [_host_state(h) for h in cluster.hosts],
    }


def _host_state(host: FleetHost) -> dict[str, Any]:
    return {
        "name": host.name,
        "ip": host.ip,
        "pid": host.host.pid,
        "machine_id": host.machine_id,
        "endpoint": host.endpoint,
        "metadata": host.metadata,
    }


def status() -> int:
    state = _load_state()
    if state is None or not _demo_alive(state):
        print("No demo cluster is running. Start one with: bash examples/cluster.sh up")
        return 1
    endpoint = state["hosts"][0]["endpoint"]

    def listing() -> str | None:
        try:
            return (
                f"$ fleetctl list-machines\n{_run_fleetctl(endpoint, 'list-machines')}\n"
                f"$ fleetctl list-units\n{_run_fleetctl(endpoint, 'list-units')}"
            )
        except RuntimeError:
            return None

    print(wait_until(listing, 30, "the API"))
    venv_bin = os.path.dirname(sys.executable)
    pids = ", ".join(f"{h['name']}={h['pid']}" for h in state["hosts"])
    print(f"""Point fleetctl at the cluster (any host's API works; port {API_PORT}):

    export PATH={venv_bin}:$PATH
    export FLEETCTL_ENDPOINT={endpoint}
    fleetctl list-unit-files
    fleetctl journal hello.service
    fleetctl status web@1.service

etcd: {", ".join(state["etcd_endpoints"])} (key prefix /_coreos.com/fleet/)
Hosts: {", ".join(f"{h['name']} {h['ip']}" for h in state["hosts"])}
Run a command inside a host: nsenter -t <pid> -m -u -p -n systemctl status (pids: {pids})
Tear it all down: bash examples/cluster.sh down""")
    return 0


def down(quiet: bool = False) -> int:
    report = sweep_leftovers(LAB)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    if not quiet:
        print(
            f"Demo cluster removed ({report.get('killed', 0)} processes ended, "
            f"bridge {report.get('bridge') or 'already gone'})."
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="bring the demo cluster up (idempotent) and start the examples")
    up_parser.add_argument("--agent-ttl", default="10s", help="fleetd agent_ttl in the hosts (default 10s)")
    sub.add_parser("down", help="remove the demo cluster completely")
    sub.add_parser("status", help="show the demo cluster")
    args = parser.parse_args(argv)
    if args.command != "status" and (why := check_supported()) is not None:
        print(f"The demo cluster cannot run here: {why}", file=sys.stderr)
        return 2
    if args.command == "up":
        return up(args.agent_ttl)
    if args.command == "down":
        return down()
    return status()


if __name__ == "__main__":
    sys.exit(main())
