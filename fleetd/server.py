"""The fleetd process: wire configuration, etcd, systemd, agent, engine and API together.

Nothing here decides anything; it builds the parts, runs them as tasks, and handles the
process's life: signals (SIGTERM/SIGINT graceful stop, SIGHUP reload, SIGUSR1 state dump), the machine's
identity and public IP, and the lease file that lets a restarted fleetd adopt its own
registration (and so its running units) instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fleetd import __version__
from fleetd.agent.agent import Agent
from fleetd.aio import TaskHealth, cancel_and_wait
from fleetd.config import Config
from fleetd.engine.engine import Engine
from fleetd.history import HistoryRecorder
from fleetd.metrics import Metrics
from fleetd.model.state import MachineState
from fleetd.registry.etcd import Etcd, EtcdConfig
from fleetd.registry.etcd_registry import EtcdRegistry
from fleetd.registry.registry import Registry

if TYPE_CHECKING:
    from fleetd.api.peer_tls import PeerIdentity

log = logging.getLogger("fleetd")

DEFAULT_API_SOCKET = "/var/run/fleet.sock"


class ApiServerHandle(Protocol):
    async def close(self) -> None: ...


class StartupError(RuntimeError):
    """fleetd cannot start; the message says what is wrong, ``hint`` what to do about it.

    The entry point prints both as one or two lines and no traceback (unless verbosity is
    on): a wrong environment is the operator's to fix, not a crash to debug.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _reason(exc: BaseException) -> str:
    """The most telling words of a failure: an OS error's strerror from its cause chain
    (``No such file or directory``), else its own message, else its type's name."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__
    return str(exc) or type(exc).__name__


def check_readable_files(config: Config) -> None:
    """TLS files named in the configuration must be readable now: found later, by a loop
    that retries, a typo would look like an etcd outage forever."""
    for option in ("etcd_cafile", "etcd_certfile", "etcd_keyfile", "api_certfile", "api_keyfile", "api_cafile"):
        path = getattr(config, option)
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(
                f"{option}: cannot read {path}: {exc.strerror or exc}",
                hint=f"fix the path or the file's permissions, or unset {option}",
            ) from exc


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
        """Why the API must answer 503: starting, not registered, or a supervised task
        (the agent's or the engine's) waiting to restart."""
        if self.agent is None:
            return "fleetd is starting"
        return self.agent.health_error()

    def tasks(self) -> list[TaskHealth]:
        """The supervised tasks, for ``/metrics``."""
        return [] if self.agent is None else list(self.agent.supervisor.tasks.values())

    def journal(self, unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        from fleetd.systemd.journal import read_journal

        return read_journal(unit, lines=lines, follow=follow, output=output, user=self.user)

    async def status(self, unit: str) -> str:
        from fleetd.systemd.journal import unit_status_text

        return await unit_status_text(unit, user=self.user)


def state_dump(machine_id: str, agent: Agent | None, engine: Engine | None) -> dict[str, Any]:
    """What SIGUSR1 logs (fleet wrote its agent's and unit-state publisher's state as JSON):
    this machine's schedule and what systemd reports for it, units fleet failed to act on,
    the supervised tasks' health and the engine's leadership. Plain data, JSON-ready."""
    dump: dict[str, Any] = {"machine": machine_id, "version": __version__}
    if agent is None:
        dump["agent"] = "starting"
        return dump
    now = time.monotonic()
    dump["agent"] = {
        "registered": agent.status.registered,
        "error": agent.status.error,
        "public_ip": agent.machine.public_ip,
        "metadata": dict(agent.machine.metadata),
        "health": agent.health_error() or "ok",
    }
    dump["desired"] = {name: {"state": str(d.state), "hash": d.hash} for name, d in sorted(agent.desired().items())}
    dump["global_units"] = sorted(agent.globals)
    dump["states"] = {
        name: {"load": u.load_state, "active": u.active_state, "sub": u.sub_state, "hash": u.hash, "error": u.error}
        for name, u in sorted(agent.states.published.items())
    }
    dump["failures"] = {name: f.message for name, f in sorted(agent.executor.failures.items())}
    dump["tasks"] = {
        name: {
            "running": t.running,
            "restarts": t.restarts,
            "last_error": t.last_error,
            "restart_in_s": None if t.restart_at is None else round(max(0.0, t.restart_at - now), 1),
        }
        for name, t in sorted(agent.supervisor.tasks.items())
    }
    if engine is None:
        dump["engine"] = "disabled"
    else:
        leadership = engine.leadership
        dump["engine"] = {
            "leader": leadership is not None,
            "term": leadership.create_revision if leadership else None,
            "units": len(engine.view.units),
            "machines": len(engine.view.machines),
            "unplaceable": dict(sorted(engine.reasons.items())) if leadership else {},
        }
    return dump


class Daemon:
    def __init__(self, config: Config, *, config_loader: object | None = None) -> None:
        self.config = config
        self.config_loader = config_loader
        self.machine_id = read_machine_id(config.machine_id_file)
        self.public_ip = config.public_ip or detect_public_ip()
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()
        # what SIGUSR1 dumps, once they exist
        self.agent: Agent | None = None
        self.engine: Engine | None = None
        self.peer_problem: str | None = None  # why the peer listener is not listening
        # the peer listener's key and certificate, made at start (published with the machine)
        self.peer_identity: PeerIdentity | None = None
        # Set once every part runs: a failure before is a startup error (one line), after
        # it a crash (a traceback in the log).
        self.started = False

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
        cert = self.peer_identity.cert_pem if self.peer_identity is not None else ""
        return MachineState(self.machine_id, self.public_ip, dict(self.config.metadata), __version__, cert)

    async def run(self, reload_pending: Callable[[], bool] = lambda: False) -> None:
        """Run until SIGTERM/SIGINT. ``reload_pending`` tells whether a SIGHUP came in
        before this loop's own handler was installed (it is then honoured at once)."""
        from fleetd.systemd.manager import SystemdManager  # the D-Bus stack, only in the daemon

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_state)
        if reload_pending():
            self.reload_requested.set()

        settings = self.config.settings()
        # Everything that can be checked without side effects first: a wrong environment
        # is refused before the machine joins the cluster.
        check_readable_files(self.config)
        listeners = self.api_listeners()
        # this fleetd's series, exported by GET /metrics (docs/metrics.md)
        metrics = Metrics(process=True)
        try:
            etcd = Etcd(self.etcd_config())
        except ValueError as exc:  # a malformed endpoint; an unreachable etcd is retried later
            raise StartupError(
                f"etcd_servers: {exc}", hint="use e.g. http://10.0.0.1:2379,http://10.0.0.2:2379"
            ) from exc
        etcd.observe = metrics.etcd_request
        registry = EtcdRegistry(etcd, self.config.etcd_key_prefix, self.config.unit_revisions)
        manager = SystemdManager(
            units_directory=self.config.units_directory.rstrip("/") or "/", user=self.config.systemd_user
        )
        try:
            await manager.connect()
        except Exception as exc:
            await registry.close()
            raise self.systemd_error(exc) from exc
        lease_file = os.path.join(
            os.path.dirname(self.config.units_directory.rstrip("/")) or "/run/fleet", "agent.lease"
        )
        if self.config.peer_port:
            from fleetd.api.peer_tls import make_identity

            self.peer_identity = make_identity(self.machine_id)
        history = HistoryRecorder(registry)
        agent = Agent(registry, manager, self.machine_state(), settings, lease_file=lease_file, history=history)
        agent.executor.metrics, metrics.agent, metrics.dbus = metrics, agent, manager.bus
        agent.supervisor.start("history", history.run)
        node = NodeState(self.machine_id, agent, self.config.systemd_user)
        try:  # bound before the loops start, so "address in use" leaves nothing running
            api_server = await self.start_api(registry, node, listeners, metrics)
        except Exception as exc:
            await manager.close()
            await registry.close()
            if isinstance(exc, StartupError):
                raise
            raise StartupError(f"cannot serve the API: {exc}", hint="check api_listen and fleetd.socket") from exc
        peer = await self.start_peer(registry, node)
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(agent.run(), name="agent")]
        engine: Engine | None = None
        if not self.config.disable_engine:
            engine = Engine(registry, self.machine_id, settings, history=history, metrics=metrics)
            metrics.engine = engine
            agent.supervisor.start("engine", engine.run)
        self.agent, self.engine = agent, engine
        self.started = True
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
                    old_ip = self.public_ip
                    await self.reload(agent)
                    if self.public_ip != old_ip:  # the peer listener follows the machine's address
                        peer = await self.restart_peer(peer, registry, node)
        finally:
            log.info("fleetd stopping (%s local units)", "unloading" if self.config.stop_units_on_exit else "keeping")
            # the engine and the agent's tasks end first (the engine revokes its lease, so a
            # standby takes over at once), without being taken for failures to restart
            await agent.supervisor.stop()
            if engine is not None:
                engine.stop()
            agent.stop()
            await cancel_and_wait(tasks)
            if self.config.stop_units_on_exit:
                with contextlib.suppress(Exception):
                    await agent.leave(unload_units=True)
            with contextlib.suppress(Exception):  # what was decided last is not lost
                async with asyncio.timeout(2):
                    await history.flush()
            await api_server.close()
            if peer is not None:
                await peer.close()
            await manager.close()
            await registry.close()

    def dump_state(self) -> None:
        """SIGUSR1: fleet dumped its state as JSON (instead of dying, SIGUSR1's default);
        here it is one log line, so it lands in the journal beside everything else."""
        try:
            dump = state_dump(self.machine_id, self.agent, self.engine)
            log.info("SIGUSR1: state %s", json.dumps(dump, sort_keys=True, default=str))
        except Exception:  # a diagnostic must never take fleetd down
            log.exception("SIGUSR1: cannot dump the state")

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

    def systemd_error(self, exc: BaseException) -> StartupError:
        """Why systemd cannot be driven, and where to look: fleetd is useless without it."""
        from fleetd.systemd import SystemdError, default_bus_address

        if isinstance(exc, OSError) and not isinstance(exc, SystemdError):  # the unit files, before the bus
            where = exc.filename or self.config.units_directory
            return StartupError(
                f"units_directory: cannot use {where}: {_reason(exc)}",
                hint="fleetd keeps the unit files it manages there: it must be a directory fleetd can write",
            )
        address = default_bus_address(self.config.systemd_user)
        if self.config.systemd_user:
            hint = (
                "with systemd_user=true fleetd drives your user's systemd: run it in a user session "
                "(DBUS_SESSION_BUS_ADDRESS or $XDG_RUNTIME_DIR/bus)"
            )
        else:
            hint = (
                "fleetd drives systemd over the D-Bus system bus: run it on a machine booted with systemd, "
                "with dbus running (systemctl status dbus.socket); DBUS_SYSTEM_BUS_ADDRESS says where the bus is"
            )
        return StartupError(f"cannot talk to systemd over D-Bus at {address}: {_reason(exc)}", hint=hint)

    def api_listeners(self) -> list[Any]:
        """What the API will listen on: the sockets systemd handed over, and ``api_listen``;
        without either, fleet's default unix socket /var/run/fleet.sock.

        A TCP listener without a token is served with a warning (fleet's socket-activated
        TCP API had none), or refused with ``api_require_token``.
        """
        from fleetd.api import (
            ActivationError,
            ListenError,
            TcpListener,
            UnixListener,
            activated_listeners,
            make_ssl_context,
        )

        c = self.config
        try:
            ssl_context = (
                make_ssl_context(c.api_certfile, c.api_keyfile, c.api_cafile or None) if c.api_certfile else None
            )
        except ListenError as exc:
            raise StartupError(
                f"api_certfile/api_keyfile: {_reason(exc)}", hint="the files must be a PEM certificate and its key"
            ) from exc
        token = c.api_token or None
        try:
            listeners: list[Any] = list(activated_listeners(ssl_context=ssl_context, token=token))
        except ActivationError as exc:
            raise StartupError(f"socket activation: {exc}", hint="start fleetd through fleetd.socket") from exc
        for spec in c.api_listen:
            if spec.startswith("unix:"):
                listeners.append(UnixListener(spec.removeprefix("unix:").removeprefix("//")))
            else:
                host, _, port = spec.rpartition(":")
                if not host or not port.isdigit():
                    raise StartupError(
                        f"api_listen: {spec!r} is neither unix:/path nor host:port",
                        hint="use e.g. api_listen=unix:/var/run/fleet.sock,10.0.0.5:54728",
                    )
                listeners.append(TcpListener(host.strip("[]"), int(port), ssl_context, token))
        if not listeners:
            listeners.append(UnixListener(DEFAULT_API_SOCKET))
        self.check_tcp_security([_tcp_address(listener) for listener in listeners], ssl_context is not None)
        return listeners

    def check_tcp_security(self, addresses: list[str | None], tls: bool) -> None:
        """Warn about (or, with ``api_require_token``, refuse) a TCP API anyone can use, and
        warn about a token that crosses the network in clear text."""
        tcp = ", ".join(address for address in addresses if address)
        if not tcp:
            return
        c = self.config
        if not c.api_token:
            if c.api_require_token:
                raise StartupError(
                    f"the API would listen on TCP ({tcp}) without a token, and api_require_token is set",
                    hint="set api_token_file (or FLEET_API_TOKEN), or remove the TCP listener",
                )
            if not (tls and c.api_cafile):
                log.warning(
                    "the API on TCP %s accepts requests from anyone who can reach it (no api_token%s): "
                    "set api_token_file, and api_certfile/api_keyfile for TLS; api_require_token=true "
                    "refuses to start like this",
                    tcp,
                    "" if tls else ", no TLS",
                )
        elif not tls:
            exposed = ", ".join(a for a in addresses if a and not _is_loopback(a))
            if exposed:
                log.warning(
                    "the API on TCP %s takes its token in clear text (no TLS): anyone on the network path can "
                    "read it; set api_certfile and api_keyfile",
                    exposed,
                )

    async def start_api(
        self, registry: Registry, node: NodeState, listeners: list[Any], metrics: Metrics | None = None
    ) -> ApiServerHandle:
        """Serve the API on ``listeners`` (from :meth:`api_listeners`); ``metrics``: the
        daemon's series, which its ``/metrics`` exports."""
        from fleetd.api import make_app, start_api

        app = make_app(registry, node, token_limit=self.config.token_limit, metrics=metrics)
        if self.config.peer_port:
            from fleetd.api.peer_listener import install_relay

            install_relay(app, registry, self.machine_id, self.config.peer_port)
        return await start_api(app, listeners)

    async def start_peer(self, registry: Registry, node: NodeState) -> ApiServerHandle | None:
        """The peer listener (journal and status for other fleetds) on public_ip:peer_port.

        Not fatal when it cannot listen: the machine still runs its units; only reading
        their journal from elsewhere fails, with this reason in the relaying fleetd's answer
        and in this machine's log."""
        port, ip = self.config.peer_port, self.public_ip
        if not port:
            log.info("peer listener off (peer_port=0): journal and status of this machine only from here")
            return None
        if not ip:
            log.warning("no peer listener: this machine has no public_ip, so other fleetds cannot reach it")
            return None
        from fleetd.api.peer_listener import start_peer_listener

        context = self.peer_identity.server_context if self.peer_identity is not None else None
        try:
            server = await start_peer_listener(registry, node, ip, port, context)
        except Exception as exc:  # noqa: BLE001 - reported, and fleetd goes on without it
            self.peer_problem = f"cannot listen on {ip}:{port} (peer_port): {exc}"
            log.error("no peer listener: %s; journal and status of this machine work only from here", self.peer_problem)
            return None
        self.peer_problem = None
        log.info("peer listener on %s:%s (journal and status for other fleetds, signed requests only)", ip, port)
        return server

    async def restart_peer(
        self, peer: ApiServerHandle | None, registry: Registry, node: NodeState
    ) -> ApiServerHandle | None:
        if peer is not None:
            await peer.close()
        return await self.start_peer(registry, node)


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _tcp_address(listener: Any) -> str | None:
    """``host:port`` of a TCP listener (configured or handed over by systemd), else None."""
    from fleetd.api import TcpListener

    if isinstance(listener, TcpListener):
        return f"{listener.host}:{listener.port}"
    sock = getattr(listener, "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None
