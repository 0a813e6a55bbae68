"""A lab's state dir, the lock that marks it live, and the sweep of a crashed run's leftovers.

Layout::

    /run/fleet-testhosts/<lab>/lab.json              bridge ownership, subnet, cgroup
    /run/fleet-testhosts/<lab>/hosts/<name>/host.json, launcher.log

A live lab holds an ``flock`` on its state dir. The lock dies with its process, so a later
lab of the same name that can take it knows no live lab owns what is recorded there, and
sweeps it: the processes still in the lab's cgroup, the veths it recorded or that are
ports of its own bridge, the bridge if it created it, the cgroup dirs and the state.
Nothing that the records do not prove to be the lab's is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetlab import cgroups, links
from fleetlab.hostcommon import DEFAULT_LAB, STATE_ROOT, LabBusyError, check_lab_name

#: launchers of labs this process detached (our children), by lab cgroup; reaped once swept
orphans: list[tuple[Path, subprocess.Popen[bytes]]] = []


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace a state file atomically, so a crash never leaves half a record to sweep by."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """A state file's record; {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def rmdir_quiet(path: Path) -> None:
    """Remove an empty shared parent dir; another live lab keeping it non-empty is fine."""
    with contextlib.suppress(OSError):
        os.rmdir(path)


def makedirs(path: Path) -> None:
    """mkdir -p that tolerates a concurrent lab removing an (empty) parent meanwhile."""
    for _ in range(50):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            time.sleep(0.01)
    path.mkdir(parents=True, exist_ok=True)


def lock_dir(path: Path, timeout: float) -> int:
    """flock a lab's state dir (creating it); returns the fd. LabBusyError when held.

    The lock dies with its process, so a dir whose lock we can take belongs to no live lab.
    The holder removes the dir before unlocking, so a waiter re-checks that the dir it
    locked is still the one at ``path``. (Not :func:`fleetlab.wait.wait_until`: losing a
    race with a removal retries at once, even with a zero timeout.)
    """
    deadline = time.monotonic() + timeout
    while True:
        makedirs(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise LabBusyError(f"lab state dir {path} is locked by a running lab") from None
            time.sleep(0.1)
            continue
        st = os.fstat(fd)
        try:
            st2 = os.stat(path)
        except FileNotFoundError:
            st2 = None
        if st2 is not None and (st.st_dev, st.st_ino) == (st2.st_dev, st2.st_ino):
            return fd
        os.close(fd)


def clear_dir(path: Path) -> None:
    """Empty a dir but keep it (and so the lock held on it)."""
    for child in path.iterdir() if path.exists() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()


def reap_orphans(cgroup: Path) -> None:
    """Collect exit statuses of a swept lab's launchers we started, so no zombie lingers."""
    for entry in list(orphans):
        if entry[0] == cgroup:
            with contextlib.suppress(subprocess.TimeoutExpired):
                entry[1].wait(timeout=5)  # just killed: exits at once
            orphans.remove(entry)


def sweep_locked(lab_dir: Path, cgroup: Path, *, keep_dir: bool) -> dict[str, Any]:
    """Sweep one lab whose state-dir lock the caller holds (so no live lab owns it)."""
    info = read_json(lab_dir / "lab.json")
    report: dict[str, Any] = {"killed": 0, "veths": [], "bridge": None, "cgroup": False, "state": False}
    report["killed"] = cgroups.kill_all(cgroup)
    bridge = info.get("bridge") if info.get("bridge_created") else None
    names = {read_json(p).get("veth") for p in lab_dir.glob("hosts/*/host.json")}
    if bridge and links.exists(bridge):
        names |= set(links.bridge_ports(bridge))
    prefix = info.get("veth_prefix", "vh-")
    for veth in sorted(n for n in names if n):
        # only ours: recorded by this lab or a port of this lab's own bridge
        if links.exists(veth) and veth.startswith(prefix) and (links.master(veth) in (bridge, info.get("bridge"))):
            links.delete(veth)
            report["veths"].append(veth)
    if bridge and links.exists(bridge):
        links.delete(bridge)
        report["bridge"] = bridge
    if cgroup.exists():
        cgroups.remove(cgroup)
        report["cgroup"] = True
    if lab_dir.exists() and any(lab_dir.iterdir()):
        report["state"] = True
    if keep_dir:
        clear_dir(lab_dir)
    else:
        shutil.rmtree(lab_dir, ignore_errors=True)
    reap_orphans(cgroup)
    return report


def sweep_leftovers(
    lab_name: str = DEFAULT_LAB, *, state_root: Path | str = STATE_ROOT, timeout: float = 0.0
) -> dict[str, Any]:
    """Remove what a crashed (or detached) run of ``lab_name`` left behind.

    Kills the processes still in the lab's cgroup (ours by construction), deletes the
    lab's veths and the bridge it created, removes its cgroup dirs and its state dir.
    Raises LabBusyError when a live HostLab holds the lab. Returns a summary dict
    (``killed``: number of processes, ``veths``, ``bridge``, ``cgroup``, ``state``).
    HostLab calls this itself when it opens.
    """
    check_lab_name(lab_name)
    root = Path(state_root)
    lab_dir = root / lab_name
    if not lab_dir.exists() and not (cgroups.cgroup_base() / lab_name).exists():
        return {"killed": 0, "veths": [], "bridge": None, "cgroup": False, "state": False}
    fd = lock_dir(lab_dir, timeout)
    try:
        report = sweep_locked(lab_dir, cgroups.cgroup_base() / lab_name, keep_dir=False)
    finally:
        os.close(fd)
    rmdir_quiet(root)
    rmdir_quiet(cgroups.cgroup_base())
    return report
