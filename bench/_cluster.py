"""Shared helpers for the benchmarks that run the real fleetd on namespaced systemd hosts.

Not a benchmark itself: progress logging, the fleet HTTP API, reading a fleetd's CPU time
and memory from outside its host, and etcd's request counters.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fleetd.model.unitfile import parse_unit_file
from fleetlab.fleetcluster import FleetHost
from fleetlab.hosts import check_supported

CLK_TCK = os.sysconf("SC_CLK_TCK")
_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress to stderr, stamped with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def require_hosts() -> None:
    """Exit with the reason when this machine cannot run systemd test hosts."""
    reason = check_supported()
    if reason:
        sys.exit(f"cannot run: {reason}")


# -- the fleet API ------------------------------------------------------------------------


def unit_options(text: str) -> list[dict[str, str]]:
    return parse_unit_file(text).to_options()


def api(host: FleetHost, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """One request to ``/fleet/v1<path>`` on a host's TCP API; (status, decoded JSON)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{host.endpoint}/fleet/v1{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, (json.loads(raw) if raw else None)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def api_list(host: FleetHost, path: str, field: str) -> list[Any]:
    """Every item of a paginated API list (follows ``nextPageToken``)."""
    items: list[Any] = []
    token = None
    while True:
        sep = "&" if "?" in path else "?"
        query = f"{path}{sep}nextPageToken={urllib.parse.quote(token)}" if token else path
        status, body = api(host, "GET", query)
        if status != 200:
            raise RuntimeError(f"GET {query}: HTTP {status}: {body}")
        items += body.get(field, [])
        token = body.get("nextPageToken")
        if not token:
            return items


def put_unit(host: FleetHost, name: str, text: str, desired: str = "launched") -> None:
    status, body = api(
        host, "PUT", f"/units/{name}", {"name": name, "desiredState": desired, "options": unit_options(text)}
    )
    if status not in (201, 204):
        raise RuntimeError(f"PUT {name}: HTTP {status}: {body}")


def delete_unit(host: FleetHost, name: str) -> None:
    status, body = api(host, "DELETE", f"/units/{name}")
    if status not in (204, 404):
        raise RuntimeError(f"DELETE {name}: HTTP {status}: {body}")


# -- fleetd seen from the root pid namespace ------------------------------------------------


def fleetd_root_pid(host: FleetHost) -> int:
    """fleetd's pid in OUR pid namespace (``host.fleetd_pid()`` is the one inside the host).

    The candidates are the processes of the host's ``system.slice/fleetd.service`` cgroup;
    the one whose innermost NSpid is fleetd's MainPID inside the host is fleetd.
    """
    inner = host.fleetd_pid()
    if not inner:
        raise RuntimeError(f"fleetd is not running on {host.name}")
    cgroup = Path(host.host.cgroup) / "system.slice/fleetd.service/cgroup.procs"
    for pid in (int(p) for p in cgroup.read_text().split()):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:") and int(line.split()[-1]) == inner:
                return pid
    raise RuntimeError(f"no process of {cgroup} has pid {inner} inside {host.name}")


def host_root_pid(host: FleetHost, inner_pid: int) -> int | None:
    """Map a pid inside a host (e.g. 1 = its systemd) to our pid namespace, via its cgroup."""
    if inner_pid == 1:
        return host.host.pid
    for procs in Path(host.host.cgroup).rglob("cgroup.procs"):
        for pid in (int(p) for p in procs.read_text().split()):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == inner_pid:
                    return pid
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def cgroup_cpu_seconds(cgroup: Path) -> float | None:
    """usage_usec of a cgroup v2 subtree (every process ever in it), or None if absent."""
    try:
        for line in (cgroup / "cpu.stat").read_text().splitlines():
            key, value = line.split()
            if key == "usage_usec":
                return int(value) / 1e6
    except OSError:
        pass
    return None


# -- etcd ---------------------------------------------------------------------------------


def etcd_requests(endpoint: str) -> Counter[str]:
    """gRPC messages etcd has received, by method (unary calls and stream messages alike)."""
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("grpc_server_msg_received_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
        counts[method] += int(float(value))
    return counts
