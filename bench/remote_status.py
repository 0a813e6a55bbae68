"""What the machine-to-machine path costs: a unit's status and journal asked of the local
fleetd (answered there) and of another machine's fleetd (relayed over the TLS peer link).

Two real hosts run exactly the shipped units (unix socket only); a unit runs on host B.
Each request goes to a host's API socket from outside, as fleetctl on that host would
send it, so fleetctl's own start-up is not in the figures. Prints the median and range
of ``--requests`` requests per path: ``local_status_ms``, ``relayed_status_ms``,
``local_journal_ms``, ``relayed_journal_ms``.

    python bench/remote_status.py --requests 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetlab.fleetcluster import FleetCluster, FleetHost, UnixHTTPConnection
from fleetlab.wait import wait_until


def timed_get(host: FleetHost, path: str) -> float:
    """Milliseconds for one GET on ``host``'s API socket (a fresh connection, as fleetctl)."""
    connection = UnixHTTPConnection(host.api_socket, timeout=10)
    started = time.perf_counter()
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {path} on {host.name}: {answer.status}")
    finally:
        connection.close()
    return (time.perf_counter() - started) * 1000


def figures(name: str, samples: list[float]) -> str:
    return f"{name}={statistics.median(samples):.1f} ({min(samples):.1f}-{max(samples):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with FleetCluster(size=2, lab_prefix="bench-remote", shipped_units=True) as cluster:
        here, there = cluster.hosts
        options = [
            {"section": "Service", "name": "ExecStart", "value": "/bin/sh -c 'echo ready; exec sleep infinity'"},
            {"section": "X-Fleet", "name": "MachineID", "value": there.machine_id},
        ]
        connection = UnixHTTPConnection(here.api_socket, timeout=10)
        connection.request(
            "PUT",
            "/fleet/v1/units/remote.service",
            body=json.dumps({"desiredState": "launched", "options": options}),
            headers={"Content-Type": "application/json"},
        )
        assert connection.getresponse().status in (200, 201, 204)
        connection.close()
        wait_until(lambda: there.running("remote.service"), 30, "remote.service to run on host B")
        status = f"/fleet/v1/machines/{there.machine_id}/status/remote.service"
        journal = f"/fleet/v1/machines/{there.machine_id}/journal/remote.service?lines=10"
        timed_get(here, status)  # the relay's first connection (TLS handshake) out of the figures
        results: dict[str, list[float]] = {
            k: [] for k in ("local_status", "relayed_status", "local_journal", "relayed_journal")
        }
        for _ in range(args.requests):
            results["local_status"].append(timed_get(there, status))
            results["relayed_status"].append(timed_get(here, status))
            results["local_journal"].append(timed_get(there, journal))
            results["relayed_journal"].append(timed_get(here, journal))
        print(" ".join(figures(f"{name}_ms", samples) for name, samples in results.items()))


if __name__ == "__main__":
    main()
