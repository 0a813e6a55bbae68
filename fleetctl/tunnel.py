"""``--tunnel host[:port]``: reach fleetd (or etcd) through an SSH jump host.

fleet tunnelled its API and etcd connections through an SSH connection it made itself.
We run the system ``ssh`` client instead (same keys, agent and config as the user's own
ssh): one ``ssh -N -L`` local forward per remote address, to a unix socket in a private
temporary directory (for etcd: a local TCP port), started on first use and stopped when
fleetctl exits. The ssh options (user, known hosts, host key checking, timeout) are the
same as ``fleetctl ssh`` uses.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from fleetctl.config import Config, Endpoint, expand_path
from fleetctl.errors import FleetctlError

if TYPE_CHECKING:
    from fleetctl.transport import Dialer


def split_host_port(text: str) -> tuple[str, str | None, int | None]:
    """``[user@]host[:port]`` -> ``(host, user, port)``."""
    user = None
    if "@" in text:
        user, _, text = text.rpartition("@")
    port: int | None = None
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        return host, user, port
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if port_text.isdigit():
            return host, user, int(port_text)
    return text, user, port


def ssh_options(config: Config) -> list[str]:
    """ssh client options from the global flags (user, timeout, host key checking)."""
    options = ["-l", config.ssh_username]
    if config.ssh_timeout and config.ssh_timeout > 0:
        options += ["-o", f"ConnectTimeout={max(1, math.ceil(config.ssh_timeout))}"]
    if config.strict_host_key_checking:
        # fleet asked before trusting an unknown host and kept its own known_hosts file
        options += ["-o", "StrictHostKeyChecking=ask"]
        if config.known_hosts_file:
            options += ["-o", f"UserKnownHostsFile={expand_path(config.known_hosts_file)}"]
    else:
        options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return options


def ensure_known_hosts_dir(config: Config) -> None:
    """Create the directory of the known-hosts file (``~/.fleetctl``) so ssh can record
    hosts in it, as fleet did."""
    if config.strict_host_key_checking and config.known_hosts_file:
        directory = os.path.dirname(expand_path(config.known_hosts_file))
        if directory:
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError:
                pass  # ssh will say it cannot write there; connecting still works


def jump_spec(config: Config, tunnel: str) -> str:
    """The ``-J`` argument for a tunnel: ``user@host[:port]`` (the ssh user by default)."""
    return tunnel if "@" in tunnel else f"{config.ssh_username}@{tunnel}"


class SshTunnel:
    def __init__(self, config: Config) -> None:
        if not config.tunnel:
            raise ValueError("no tunnel configured")
        self.config = config
        self.host, user, self.port = split_host_port(config.tunnel)
        self.user = user or config.ssh_username
        self._dir: str | None = None
        self._processes: list[subprocess.Popen[bytes]] = []
        self._forwards: dict[str, str] = {}

    def _ssh(self, forward: str, ready: str | None, local_port: int | None = None) -> subprocess.Popen[bytes]:
        argv = ["ssh", *ssh_options(replace(self.config, ssh_username=self.user))]
        if self.port:
            argv += ["-p", str(self.port)]
        argv += [
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "StreamLocalBindUnlink=yes",
            "-L",
            forward,
            "--",
            self.host,
        ]
        ensure_known_hosts_dir(self.config)
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise FleetctlError(f"cannot run ssh for --tunnel {self.config.tunnel}: {exc}") from None
        self._processes.append(process)
        deadline = time.monotonic() + max(1.0, self.config.ssh_timeout or 10.0) + 2
        while time.monotonic() < deadline:
            if ready is not None and os.path.exists(ready):
                return process
            if local_port is not None and _port_open(local_port):
                return process
            if process.poll() is not None:
                message = (process.stderr.read() if process.stderr else b"").decode("utf-8", "replace").strip()
                raise FleetctlError(
                    f"ssh tunnel through {self.config.tunnel} failed (exit {process.returncode})"
                    + (f": {message}" if message else "")
                )
            time.sleep(0.02)
        raise FleetctlError(
            f"ssh tunnel through {self.config.tunnel} did not come up within {self.config.ssh_timeout:g} s"
        )

    def forward_unix(self, remote: str) -> str:
        """A local unix socket forwarded to ``remote`` (a socket path or ``host:port``)
        on the far side of the tunnel."""
        if remote not in self._forwards:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="fleetctl-tunnel-")
            local = os.path.join(self._dir, f"{len(self._forwards)}.sock")
            self._ssh(f"{local}:{remote}", ready=local)
            self._forwards[remote] = local
        return self._forwards[remote]

    def dialer(self, endpoint: Endpoint) -> Dialer:
        """How to connect to ``endpoint`` through the tunnel (set up on first use)."""
        from fleetctl.transport import unix_dialer

        remote = endpoint.path if endpoint.is_unix else endpoint.address

        def dial(timeout: float | None) -> socket.socket:
            return unix_dialer(self.forward_unix(remote))(timeout)

        return dial

    def etcd_config(self) -> Config:
        """The config with etcd endpoints rewritten to local forwarded ports."""
        from urllib.parse import urlsplit

        rewritten = []
        for endpoint in self.config.endpoints():
            parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            host, port = parts.hostname or "127.0.0.1", parts.port or 2379
            local_port = _free_port()
            remote_host = f"[{host}]" if ":" in host else host
            self._ssh(f"127.0.0.1:{local_port}:{remote_host}:{port}", ready=None, local_port=local_port)
            rewritten.append(f"{parts.scheme or 'http'}://127.0.0.1:{local_port}")
        return replace(self.config, endpoint=",".join(rewritten), endpoint_given=True)

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(2)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stderr:
                process.stderr.close()
        self._processes.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


__all__ = ["SshTunnel", "ensure_known_hosts_dir", "jump_spec", "split_host_port", "ssh_options"]
