"""systemd socket activation: the listening sockets systemd hands to fleetd.

systemd passes already-bound, listening sockets as file descriptors 3, 4, ... and says how
many in ``LISTEN_FDS``, for which process in ``LISTEN_PID`` (and optionally their names in
``LISTEN_FDNAMES``). This is ``sd_listen_fds(3)`` in a few lines, without libsystemd.
"""

from __future__ import annotations

import fcntl
import os
import socket

SD_LISTEN_FDS_START = 3
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(ValueError):
    """The socket-activation environment is malformed or names something that is no socket."""


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The listening sockets passed by systemd, as socket objects (fd 3 first).

    Returns ``[]`` when there are none or when they were meant for another process
    (``LISTEN_PID`` is not our pid: e.g. inherited by a child). The variables are removed
    from the environment (unless ``unset_environment`` is false) so children started later
    do not believe the sockets are theirs. Each fd is marked close-on-exec.

    Raises :class:`ActivationError` when a variable is malformed or an fd is not a socket.
    """
    pid_text = os.environ.get("LISTEN_PID")
    count_text = os.environ.get("LISTEN_FDS")
    try:
        if not pid_text or not count_text:
            return []
        try:
            pid = int(pid_text)
        except ValueError:
            raise ActivationError(f"LISTEN_PID={pid_text!r} is not a process id") from None
        if pid != os.getpid():
            return []
        try:
            count = int(count_text)
        except ValueError:
            raise ActivationError(f"LISTEN_FDS={count_text!r} is not a number") from None
        if count < 0:
            raise ActivationError(f"LISTEN_FDS={count_text!r} is negative")
        sockets: list[socket.socket] = []
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
                fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                for opened in sockets:
                    opened.detach()
                raise ActivationError(
                    f"socket activation fd {fd} (of LISTEN_FDS={count}) is not a usable socket: {exc}"
                ) from None
            sockets.append(sock)
        return sockets
    finally:
        if unset_environment:
            for name in _ENV:
                os.environ.pop(name, None)


def listen_fd_names() -> list[str]:
    """``LISTEN_FDNAMES`` split on ``:`` (call before :func:`listen_fds` unsets it)."""
    names = os.environ.get("LISTEN_FDNAMES", "")
    return names.split(":") if names else []


__all__ = ["ActivationError", "SD_LISTEN_FDS_START", "listen_fd_names", "listen_fds"]
