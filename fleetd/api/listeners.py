"""Serving the API application: unix socket, TCP (TLS, bearer token) and activated sockets.

``start_api`` binds every listener (so errors such as "address in use" surface at once) and
returns a handle with the bound addresses; ``serve`` does the same and runs until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import ssl
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from fleetd.api.activation import listen_fds
from fleetd.api.auth import TOKEN_RULES

log = logging.getLogger("fleetd.api")

DEFAULT_SOCKET_MODE = 0o660
BACKLOG = 128
# How long a graceful stop waits for requests in progress (streams are told to stop first).
SHUTDOWN_TIMEOUT = 2.0


class ListenError(RuntimeError):
    """A listener could not be set up; the message says which and why."""


@dataclass(frozen=True)
class UnixListener:
    """A unix socket at ``path`` with permissions ``mode`` (and group ``group`` if given).

    A stale socket file left by a previous fleetd is removed; a live one (something
    answers on it) or a non-socket file at ``path`` is an error. No token is asked on it:
    the file permissions decide who may talk to fleetd.
    """

    path: str
    mode: int = DEFAULT_SOCKET_MODE
    group: str | int | None = None


@dataclass(frozen=True)
class TcpListener:
    """TCP on ``host:port`` (port 0: any free port), optionally TLS and a bearer token."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    token: str | None = None


@dataclass(frozen=True)
class SocketListener:
    """An already listening socket (systemd socket activation). ``ssl_context`` and
    ``token`` apply only when it is a TCP socket."""

    sock: socket.socket
    ssl_context: ssl.SSLContext | None = None
    token: str | None = None


Listener = UnixListener | TcpListener | SocketListener


def make_ssl_context(cert_file: str, key_file: str, ca_file: str | None = None) -> ssl.SSLContext:
    """A server TLS context from PEM files; with ``ca_file``, clients must present a
    certificate signed by that CA (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ListenError(f"cannot load TLS files (cert {cert_file}, key {key_file}, ca {ca_file}): {exc}") from exc
    return context


def activated_listeners(
    sockets: Iterable[socket.socket] | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> list[SocketListener]:
    """Listeners for the sockets systemd passed (``listen_fds()`` when ``sockets`` is None):
    TCP ones get ``ssl_context`` and ``token``, unix ones neither."""
    result = []
    for sock in listen_fds() if sockets is None else sockets:
        if sock.family == socket.AF_UNIX:
            result.append(SocketListener(sock))
        else:
            result.append(SocketListener(sock, ssl_context, token))
    return result


# -- binding --------------------------------------------------------------------------------


def _remove_stale_socket(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ListenError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: left by a process that is gone
        log.info("removed stale API socket %s", path)
        return
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise ListenError(f"cannot check existing socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise ListenError(f"another process is already serving on {path}")


def bind_unix(listener: UnixListener) -> socket.socket:
    """Bind and listen on a unix socket with the listener's mode (and group)."""
    path = listener.path
    _remove_stale_socket(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Nobody can connect before listen(), so the moment between bind and chmod is safe.
        os.chmod(path, listener.mode)
        if listener.group is not None:
            gid = listener.group if isinstance(listener.group, int) else grp.getgrnam(listener.group).gr_gid
            os.chown(path, -1, gid)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except (OSError, KeyError) as exc:
        sock.close()
        raise ListenError(f"cannot listen on unix socket {path}: {exc}") from exc
    return sock


def bind_tcp(listener: TcpListener) -> list[socket.socket]:
    """Bind and listen on every address ``host`` resolves to (one socket each)."""
    host = listener.host or None
    try:
        infos = socket.getaddrinfo(host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve API listen address {listener.host!r}: {exc}") from exc
    sockets: list[socket.socket] = []
    port = listener.port
    seen: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (int(family), str(address[0])) in seen:
                continue
            seen.add((int(family), str(address[0])))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]  # port 0: the other addresses share the chosen port
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {listener.host}:{listener.port}: {exc}") from exc
    return sockets


# -- running ----------------------------------------------------------------------------------


@dataclass
class ApiServer:
    """A running API: its runner, and what it listens on (``("unix", path)`` or
    ``("tcp", host, port)``)."""

    runner: web.AppRunner
    addresses: list[tuple[str, ...]] = field(default_factory=list)
    _unix_paths: list[tuple[str, int, int]] = field(default_factory=list)

    def tcp_port(self) -> int:
        """The port of the first TCP listener (handy after binding port 0)."""
        for address in self.addresses:
            if address[0] == "tcp":
                return int(address[2])
        raise LookupError("no TCP listener")

    async def close(self) -> None:
        await self.runner.cleanup()
        for path, dev, ino in self._unix_paths:
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (dev, ino):  # still ours: remove it
                    os.unlink(path)


async def start_api(app: web.Application, listeners: Sequence[Listener]) -> ApiServer:
    """Bind every listener and start serving ``app`` on all of them."""
    if not listeners:
        raise ListenError("no API listener configured")
    rules = app[TOKEN_RULES]
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    server = ApiServer(runner)
    plan: list[tuple[socket.socket, ssl.SSLContext | None, str | None]] = []
    started: set[int] = set()
    try:
        for listener in listeners:  # bind everything first: a bad listener fails the start
            if isinstance(listener, UnixListener):
                sock = bind_unix(listener)
                info = os.lstat(listener.path)
                server._unix_paths.append((listener.path, info.st_dev, info.st_ino))
                plan.append((sock, None, None))
            elif isinstance(listener, TcpListener):
                plan.extend((sock, listener.ssl_context, listener.token) for sock in bind_tcp(listener))
            elif isinstance(listener, SocketListener):
                if listener.sock.family == socket.AF_UNIX and (listener.token or listener.ssl_context):
                    raise ListenError("tokens and TLS apply to TCP listeners only, not to unix sockets")
                listener.sock.setblocking(False)
                plan.append((listener.sock, listener.ssl_context, listener.token))
            else:
                raise TypeError(f"unknown listener {listener!r}")
        for sock, context, token in plan:
            name = sock.getsockname()
            if sock.family == socket.AF_UNIX:
                server.addresses.append(("unix", name if isinstance(name, str) else repr(name)))
            else:
                rules.add(name[0], name[1], token)
                server.addresses.append(("tcp", name[0], name[1]))
            site = web.SockSite(runner, sock, ssl_context=context, backlog=BACKLOG)
            started.add(id(sock))
            await site.start()
    except BaseException:
        for sock, _, _ in plan:
            if id(sock) not in started:
                sock.close()
        await server.close()
        raise
    for address in server.addresses:
        log.info("API listening on %s", ":".join(str(part) for part in address[1:]))
    return server


async def serve(app: web.Application, listeners: Sequence[Listener]) -> None:
    """Serve ``app`` on ``listeners`` until cancelled, then stop gracefully."""
    server = await start_api(app, listeners)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


__all__ = [
    "ApiServer",
    "ListenError",
    "Listener",
    "SocketListener",
    "TcpListener",
    "UnixListener",
    "activated_listeners",
    "bind_tcp",
    "bind_unix",
    "make_ssl_context",
    "serve",
    "start_api",
]
