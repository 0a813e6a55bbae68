"""A real fleet cluster on this machine: etcd plus namespaced systemd hosts running fleetd.

fleetd runs INSIDE each host as a systemd service started by socket activation, exactly
as it is installed on a real machine (units/fleetd.service + fleetd.socket, adapted only
in the ExecStart path and the config file location). The cluster tests and the local demo
cluster both use this; nothing here is simulated.

From outside, each host's API is reachable through its unix socket seen via
``/proc/<pid>/root`` and on TCP at ``<host ip>:54728``; etcd listens on loopback and on the
lab bridge so that hosts can reach it.
"""

from __future__ import annotations

import base64
import http.client
import json
import shlex
import socket
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetlab.etcd import EtcdCluster
from fleetlab.hosts import Host, HostLab, default_binds, open_lab
from fleetlab.wait import wait_until

API_PORT = 54728
PREFIX = "/_coreos.com/fleet/"


def fleetd_units(python: str, config_path: str, host_ip: str | None) -> dict[str, str]:
    """fleetd.service and fleetd.socket for a host (units/ adapted to this interpreter)."""
    listen = "ListenStream=/run/fleet.sock\n"
    if host_ip:
        listen += f"ListenStream={host_ip}:{API_PORT}\n"
    service = f"""[Unit]
Description=fleet daemon (Python)
Requires=fleetd.socket
After=fleetd.socket
After=dbus.service

[Service]
Type=simple
ExecStart={shlex.quote(python)} -m fleetd.cli --config {config_path}
KillMode=process
Restart=always
RestartSec=1s
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""
    socket = f"""[Unit]
Description=fleet API socket

[Socket]
{listen}SocketMode=0660
Service=fleetd.service

[Install]
WantedBy=sockets.target
"""
    return {"fleetd.service": service, "fleetd.socket": socket}


SHIPPED_UNITS = Path(__file__).resolve().parents[1] / "units"


def shipped_fleetd_units(python: str, config_path: str) -> dict[str, str]:
    """``units/fleetd.service`` and ``units/fleetd.socket`` exactly as shipped, but for the
    ExecStart line (this interpreter, and the lab's config file): no TCP API, no extra
    setting, so a test on these hosts shows what an installation from the shipped units
    can do."""
    units = {name: (SHIPPED_UNITS / name).read_text() for name in ("fleetd.service", "fleetd.socket")}
    lines = units["fleetd.service"].splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    if len(starts) != 1:
        raise ValueError(f"{SHIPPED_UNITS}/fleetd.service: expected one ExecStart= line, found {len(starts)}")
    lines[starts[0]] = f"ExecStart={shlex.quote(python)} -m fleetd.cli --config {config_path}\n"
    units["fleetd.service"] = "".join(lines)
    return units


@dataclass
class FleetHost:
    host: Host
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def machine_id(self) -> str:
        return self.host.machine_id

    @property
    def ip(self) -> str:
        return self.host.ip or ""

    @property
    def api_socket(self) -> str:
        """The host's API unix socket, as seen from outside the host."""
        return str(self.host.root_path / "run/fleet.sock")

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{API_PORT}"

    def fleetd_pid(self) -> int:
        return int(self.host.unit_property("fleetd.service", "MainPID") or 0)

    def unit_active(self, unit: str) -> str:
        return self.host.unit_property(unit, "ActiveState")

    def main_pid(self, unit: str) -> int:
        return int(self.host.unit_property(unit, "MainPID") or 0)

    def running(self, unit: str) -> bool:
        return self.host.is_alive() and self.unit_active(unit) == "active"

    def kill_fleetd(self) -> None:
        """SIGKILL fleetd (only fleetd: KillMode=process keeps the units)."""
        self.host.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", "fleetd.service")


@dataclass
class FleetCluster:
    """etcd + N hosts each running fleetd; ``close()`` removes every trace."""

    size: int = 3
    lab_prefix: str = "fleet"
    #: etcd members: 3 lets a chaos run stop or restart one (even the leader) with quorum kept
    etcd_size: int = 1
    agent_ttl: str = "3s"
    metadata: list[dict[str, str]] = field(default_factory=list)
    extra_config: dict[str, str] = field(default_factory=dict)
    #: install units/fleetd.service and fleetd.socket as shipped (no TCP API: the cluster is
    #: then observed through each host's unix socket)
    shipped_units: bool = False
    lab: HostLab | None = None
    etcd: EtcdCluster | None = None
    hosts: list[FleetHost] = field(default_factory=list)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> FleetCluster:
        try:
            self.lab = open_lab(self.lab_prefix, binds=default_binds())
            self.etcd = EtcdCluster(size=self.etcd_size, listen_hosts=("127.0.0.1", self.lab.bridge_ip))
            self.etcd.start()
            for index in range(self.size):
                self.add_host(f"h{index + 1}", self._metadata_for(index), wait=False)
            self.wait_registered(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _metadata_for(self, index: int) -> dict[str, str]:
        return dict(self.metadata[index]) if index < len(self.metadata) else {}

    def config_text(self, metadata: Mapping[str, str], host_ip: str = "") -> str:
        assert self.lab is not None and self.etcd is not None
        lines = {
            "etcd_servers": ",".join(self.etcd.endpoints_on(self.lab.bridge_ip)),
            # hosts have no default route (nothing may leave this machine), so fleet's
            # default-route detection finds nothing: say which address is theirs
            "public_ip": host_ip,
            "agent_ttl": self.agent_ttl,
            "metadata": ",".join(f"{k}={v}" for k, v in sorted(metadata.items())),
            "etcd_request_timeout": "2s",
            **self.extra_config,
        }
        return "".join(f"{key}={value}\n" for key, value in lines.items() if value != "")

    def add_host(self, name: str, metadata: Mapping[str, str] | None = None, *, wait: bool = True) -> FleetHost:
        assert self.lab is not None
        host = self.lab.start_host(name)
        host.wait_running(60)
        fleet_host = FleetHost(host, dict(metadata or {}))
        self.install_fleetd(fleet_host)
        self.hosts.append(fleet_host)
        if wait:
            self.wait_registered(60)
        return fleet_host

    def install_fleetd(self, fleet_host: FleetHost) -> None:
        """Write fleet.conf and fleetd's units into the host and start the socket."""
        host = fleet_host.host
        config_dir = host.root_path / "run/fleet"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "fleet.conf").write_text(self.config_text(fleet_host.metadata, fleet_host.ip))
        units = (
            shipped_fleetd_units(sys.executable, "/run/fleet/fleet.conf")
            if self.shipped_units
            else fleetd_units(sys.executable, "/run/fleet/fleet.conf", host.ip)
        )
        for unit, text in units.items():
            host.put_unit(unit, text, reload=False)
        host.systemctl("daemon-reload")
        host.systemctl("start", "fleetd.socket", "fleetd.service")

    def close(self) -> None:
        if self.lab is not None:
            self.lab.close()
            self.lab = None
        if self.etcd is not None:
            self.etcd.close()
            self.etcd = None

    def __enter__(self) -> FleetCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observing ---------------------------------------------------------------------------

    def api(self, path: str, host: FleetHost | None = None, timeout: float = 5.0) -> Any:
        """GET a fleet API path (``/fleet/v1/...``) from a host over TCP; JSON decoded."""
        target = host or self.live_hosts()[0]
        if self.shipped_units:  # no TCP API: its unix socket, seen from outside the host
            connection = UnixHTTPConnection(target.api_socket, timeout=timeout)
            try:
                connection.request("GET", path)
                answer = connection.getresponse()
                body = answer.read()
                if answer.status >= 400:
                    raise OSError(f"GET {path} on {target.name}: {answer.status} {body[:200]!r}")
            finally:
                connection.close()
        else:
            with urllib.request.urlopen(f"{target.endpoint}{path}", timeout=timeout) as response:
                body = response.read()
        return json.loads(body) if body else None

    def live_hosts(self) -> list[FleetHost]:
        return [h for h in self.hosts if h.host.is_alive()]

    def machines(self, via: FleetHost | None = None) -> list[str]:
        """Registered machine ids, asked through ``via``'s API (default: the first live host;
        note that any request to a host whose fleetd is stopped socket-activates it)."""
        return sorted(m["id"] for m in self.api("/fleet/v1/machines", via).get("machines", []))

    def wait_registered(self, timeout: float) -> None:
        want = sorted(h.machine_id for h in self.live_hosts())
        seen: list[str] = []

        def registered() -> bool:
            try:
                seen[:] = self.machines()
            except OSError:
                return False
            return seen == want

        try:
            wait_until(registered, timeout, f"machines {want} to register")
        except TimeoutError as exc:
            missing = [h for h in self.live_hosts() if h.machine_id not in seen]
            logs = "".join(f"\n--- fleetd on {h.name}:\n{fleetd_log(h, 30)}" for h in missing)
            raise TimeoutError(f"{exc}; registered: {seen}{logs}") from None

    def where(self, unit: str, hosts: Iterable[FleetHost] | None = None) -> list[str]:
        """Names of the hosts whose systemd runs ``unit`` now (asked from inside each host)."""
        return [h.name for h in (hosts or self.live_hosts()) if h.running(unit)]

    def engine_leader(self, timeout: float = 1.0) -> str | None:
        """The machine id in ``engine/leader`` (None: no engine leads), read through etcd's
        JSON gateway so that a caller in any thread needs no etcd client of its own."""
        assert self.etcd is not None
        key = base64.b64encode(f"{PREFIX}engine/leader".encode()).decode()
        for endpoint in self.etcd.endpoints:
            request = urllib.request.Request(
                f"{endpoint}/v3/kv/range", data=json.dumps({"key": key}).encode(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    kvs = json.loads(response.read() or b"{}").get("kvs", [])
            except (OSError, ValueError):
                continue  # that member is down or paused: ask the next
            return base64.b64decode(kvs[0]["value"]).decode(errors="replace") if kvs else None
        return None

    def etcd_endpoints(self) -> list[str]:
        assert self.etcd is not None
        return self.etcd.endpoints


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (fleetd's API socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def fleetd_log(host: FleetHost, lines: int = 80) -> str:
    return host.host.journal("fleetd.service", lines=lines)
