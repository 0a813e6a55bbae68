"""The lab's processes: its cgroup v2 subtree, killing and removing it, and pidfd waits.

Every process of a lab lives in one cgroup (``<cgroup2>/fleet-testhosts/<lab>/<host>``):
the launcher joins its host's cgroup before exec'ing ``unshare``, so every host process is
born inside. The lab can therefore always find and kill exactly its own processes, even
those of a crashed run, and never touches anything else on the shared machine. Processes
are signalled through pidfds where we hold one, which never hit a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
from pathlib import Path

from fleetlab.hostcommon import CGROUP_DIR, HostError
from fleetlab.wait import wait_until


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) pairs of this process's mount namespace."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), left.split()[4])
            out.append((mp, right.split()[0]))
    return out


def cgroup2_mount() -> Path | None:
    """Where cgroup2 is mounted: /sys/fs/cgroup/unified (hybrid) or /sys/fs/cgroup (pure v2)."""
    mps = {mp for mp, fs in _mounts() if fs == "cgroup2"}
    for cand in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if cand in mps:
            return Path(cand)
    return None


def cgroup_base() -> Path:
    """The parent of every lab's cgroup (``<cgroup2>/fleet-testhosts``)."""
    root = cgroup2_mount()
    if root is None:
        raise HostError("cgroup2 is not mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified")
    return root / CGROUP_DIR


def procs(path: Path) -> list[int]:
    """All pids in a cgroup subtree (read recursively; a vanishing subdir is fine)."""
    pids: list[int] = []
    for d, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
    return pids


def populated(path: Path) -> bool:
    """True while any process lives in the subtree (cgroup.events covers descendants)."""
    try:
        for line in Path(path, "cgroup.events").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "populated":
                return v.strip() == "1"
    except FileNotFoundError:
        return False
    return bool(procs(path))


def _sigkill_all(path: Path) -> None:
    """One round of SIGKILL to everything in the subtree."""
    kill_file = path / "cgroup.kill"  # kernel >= 5.14: atomic, also catches forks
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
    else:
        for pid in procs(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def kill_all(path: Path, timeout: float = 10.0) -> int:
    """SIGKILL every process in a cgroup subtree we created; returns how many there were.

    Everything in these cgroups was put there by the lab (the launcher writes its own
    pid before exec'ing unshare), so it is ours by construction. Signals again until the
    subtree is empty, since a process may fork while it is being killed.
    """
    if not path.exists():
        return 0
    victims = procs(path)

    def emptied() -> bool:
        if not populated(path):
            return True
        _sigkill_all(path)
        return False

    wait_until(
        emptied,
        timeout,
        f"the processes in {path} to die",
        0.01,
        on_timeout=lambda: HostError(f"processes survive SIGKILL in {path}: {procs(path)}"),
    )
    return len(victims)


def remove(path: Path, timeout: float = 5.0) -> None:
    """Remove a (dead) cgroup subtree bottom-up; rmdir can be briefly EBUSY after exits."""

    def removed() -> bool:
        try:
            for d, _dirs, _files in os.walk(path, topdown=False):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(d)
        except OSError:
            return False
        return not path.exists()

    wait_until(
        removed,
        timeout,
        f"cgroup {path} to be removed",
        0.01,
        on_timeout=lambda: HostError(f"cannot remove cgroup {path}: {procs(path)} still inside"),
    )


def pid_alive(pidfd: int | None) -> bool:
    """True while the process behind a pidfd runs (a pidfd polls readable once it exits)."""
    if pidfd is None:
        return False
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


def wait_pidfd(pidfd: int, timeout: float) -> bool:
    """Wait until the process behind a pidfd exits; False on timeout."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000))))
