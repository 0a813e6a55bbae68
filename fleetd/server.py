"""The fleetd process: wire configuration, etcd, systemd, agent, engine and API together.

Nothing here decides anything; it builds the parts, runs them as tasks, and handles the
process's life: signals (SIGTERM/SIGINT graceful stop, SIGHUP reload), the machine's
identity and public IP, and the lease file that lets a restarted fleetd adopt its own
registration (and so its running units) instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fleetd import __version__
from fleetd.agent.agent import Agent
from fleetd.aio import cancel_and_wait
from fleetd.config import Config
from fleetd.engine.engine import Engine
from fleetd.model.state import MachineState
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.registry.registry import Registry

log = logging.getLogger("fleetd")

DEFAULT_API_SOCKET = "/var/run/fleet.sock"


class ApiServerHandle(Protocol):
    async def close(self) -> None: ...


class StartupError(RuntimeError):
    """fleetd cannot start; the message says what to fix."""


def read_machine_id(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            machine_id = handle.read().strip()
    except OSError as exc:
        raise StartupError(f"cannot read the machine ID from {path}: {exc.strerror}") from None
    if len(machine_id) != 32 or any(c not in "0123456789abcdef" for c in machine_id.lower()):
        raise StartupError(f"{path} does not hold a machine ID (32 hex characters): {machine_id!r}")
    return machine_id.lower()


def default_route_interface(route_table: str) -> str | None:
    """The interface of the IPv4 default route, from /proc/net/route's text."""
    for line in route_table.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "00000000" and int(parts[3], 16) & 0x2:
            return parts[0]
    return None


def interface_ipv4(interface: str) -> str | None:
    """The IPv4 address of ``interface`` (SIOCGIFADDR), without sending anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", interface[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def detect_public_ip() -> str:
    """fleet's rule: the address of the interface holding the default route ('' if none)."""
    try:
        with open("/proc/net/route", encoding="ascii") as handle:
            interface = default_route_interface(handle.read())
    except OSError:
        return ""
    return (interface_ipv4(interface) or "") if interface else ""


@dataclass
class NodeState:
    """This fleetd as the API sees it (``fleetd.api.NodeInfo``): whether it may serve, and
    the local machine's journal and ``systemctl status``."""

    machine_id: str
    agent: Agent | None = None
    user: bool = False

    def error(self) -> str | None:
        if self.agent is None:
            return "fleetd is starting"
        return self.agent.status.error if not self.agent.status.registered else None

    def journal(self, unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        from fleetd.systemd.journal import read_journal

        return read_journal(unit, lines=lines, follow=follow, output=output, user=self.user)

    async def status(self, unit: str) -> str:
        from fleetd.systemd.journal import unit_status_text

        return await unit_status_text(unit, user=self.user)


class Daemon:
    def __init__(self, config: Config, *, config_loader: object | None = None) -> None:
        self.config = config
        self.config_loader = config_loader
        self.machine_id = read_machine_id(config.machine_id_file)
        self.public_ip = config.public_ip or detect_public_ip()
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()

    def etcd_config(self) -> EtcdConfig:
        c = self.config
        return EtcdConfig(
            endpoints=c.etcd_servers,
            username=c.etcd_username or None,
            password=c.etcd_password or None,
            ca_file=c.etcd_cafile or None,
            cert_file=c.etcd_certfile or None,
            key_file=c.etcd_keyfile or None,
            request_timeout=c.etcd_request_timeout,
        )

    def machine_state(self) -> MachineState:
        return MachineState(self.machine_id, self.public_ip, dict(self.config.metadata), __version__)

    async def run(self, reload_pending: Callable[[], bool] = lambda: False) -> None:
        """Run until SIGTERM/SIGINT. ``reload_pending`` tells whether a SIGHUP came in
        before this loop's own handler was installed (it is then honoured at once)."""
        from fleetd.systemd.manager import SystemdManager  # the D-Bus stack, only in the daemon

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        if reload_pending():
            self.reload_requested.set()

        settings = self.config.settings()
        registry = connect(self.etcd_config(), self.config.etcd_key_prefix)
        manager = SystemdManager(
            units_directory=self.config.units_directory.rstrip("/") or "/", user=self.config.systemd_user
        )
        await manager.connect()
        lease_file = os.path.join(
            os.path.dirname(self.config.units_directory.rstrip("/")) or "/run/fleet", "agent.lease"
        )
        agent = Agent(registry, manager, self.machine_state(), settings, lease_file=lease_file)
        node = NodeState(self.machine_id, agent, self.config.systemd_user)
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(agent.run(), name="agent")]
        engine: Engine | None = None
        if not self.config.disable_engine:
            engine = Engine(registry, self.machine_id, settings)
            tasks.append(asyncio.create_task(engine.run(), name="engine"))
        api_server = await self.start_api(registry, node)
        log.info("fleetd %s started on machine %s (%s)", __version__, self.machine_id, self.public_ip or "no public IP")
        try:
            while not self.stopping.is_set():
                waiters = [
                    asyncio.ensure_future(self.stopping.wait()),
                    asyncio.ensure_future(self.reload_requested.wait()),
                ]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if self.reload_requested.is_set() and not self.stopping.is_set():
                    self.reload_requested.clear()
                    await self.reload(agent)
        finally:
            log.info("fleetd stopping (%s local units)", "unloading" if self.config.stop_units_on_exit else "keeping")
            if engine is not None:
                engine.stop()
            agent.stop()
            await cancel_and_wait(tasks)
            if self.config.stop_units_on_exit:
                with contextlib.suppress(Exception):
                    await agent.leave(unload_units=True)
            await api_server.close()
            await manager.close()
            await registry.close()

    async def reload(self, agent: Agent) -> None:
        """SIGHUP: re-read the configuration; metadata and public IP apply at once."""
        loader = self.config_loader
        if not callable(loader):
            log.warning("SIGHUP: no configuration source to reload")
            return
        try:
            new_config = loader()
        except Exception as exc:  # noqa: BLE001 - keep running on a bad edit, say why
            log.error("SIGHUP: configuration not reloaded: %s", exc)
            return
        self.config = new_config
        self.public_ip = new_config.public_ip or detect_public_ip()
        await agent.update_identity(self.public_ip, new_config.metadata)
        log.info("SIGHUP: configuration reloaded")

    async def start_api(self, registry: Registry, node: NodeState) -> ApiServerHandle:
        """Serve the API on the sockets systemd handed over, and on ``api_listen``.

        Without either, fleet's default unix socket /var/run/fleet.sock.
        """
        from fleetd.api import TcpListener, UnixListener, activated_listeners, make_app, make_ssl_context, start_api

        c = self.config
        ssl_context = make_ssl_context(c.api_certfile, c.api_keyfile, c.api_cafile or None) if c.api_certfile else None
        token = c.api_token or None
        listeners: list[Any] = list(activated_listeners(ssl_context=ssl_context, token=token))
        for spec in c.api_listen:
            if spec.startswith("unix:"):
                listeners.append(UnixListener(spec.removeprefix("unix:").removeprefix("//")))
            else:
                host, _, port = spec.rpartition(":")
                if not host or not port.isdigit():
                    raise StartupError(f"api_listen: {spec!r} is neither unix:/path nor host:port")
                listeners.append(TcpListener(host.strip("[]"), int(port), ssl_context, token))
        if not listeners:
            listeners.append(UnixListener(DEFAULT_API_SOCKET))
        app = make_app(registry, node, token_limit=c.token_limit)
        return await start_api(app, listeners)
