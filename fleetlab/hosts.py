"""Namespaced systemd "hosts" for cluster tests and the local demo cluster: the public surface.

Each host is a real systemd running as PID 1 of fresh pid/mount/uts/cgroup (and usually
network) namespaces: it has its own /run, machine-id, hostname, journal and D-Bus, so fleetd
can run inside it as a unit exactly as on a real machine, and a test can crash it (SIGKILL
its PID 1) or partition it (take its veth down). A host boots in about 0.3 s.

The machine is shared, so everything here is built to leave no trace:

- ``host_init.sh`` (runs inside the namespaces) keeps every protection of the reference
  recipe: private /run /dev /tmp /var/tmp /var/log /var/lib/systemd, bind-mounted
  hostname and machine-id, a tmpfs over /etc/systemd/system, read-only /sys and root view,
  runtime masks, a small volatile journal.
- every process of a lab lives in one cgroup (``<cgroup2>/fleet-testhosts/<lab>``), so the
  lab can always find and kill exactly its own processes, even after a crashed run
  (:mod:`fleetlab.cgroups`);
- the lab holds an ``flock`` on its state dir while open; a later lab of the same name
  sweeps a crashed run's processes, veths, bridge, cgroups and state
  (:func:`sweep_leftovers`, :mod:`fleetlab.labstate`), and a lab never takes over a bridge
  that is not its own nor deletes a veth it did not create (:mod:`fleetlab.links`);
- :class:`HostLab` (:mod:`fleetlab.lab`) cleans up on ``close()``, as a context manager, at
  interpreter exit and on SIGTERM/SIGINT (chaining to the previous handlers, restored when
  the last lab closes); :class:`Host` (:mod:`fleetlab.host`) is one host.

Layout (defaults)::

    /run/fleet-testhosts/<lab>/lab.json              bridge ownership, subnet, cgroup
    /run/fleet-testhosts/<lab>/hosts/<name>/host.json, launcher.log
    /sys/fs/cgroup/unified/fleet-testhosts/<lab>/<name>   (pure v2: /sys/fs/cgroup/...)
    bridge flbr0 10.231.0.1/24, host veth vh-<name> (eth0 inside), hosts from .2 upward

This module re-exports what callers use and adds the checks of this machine
(:func:`check_supported`, :func:`default_binds`) and the CLI (demo cluster):
``python -m fleetlab.hosts up N | down | list [--lab NAME]``.
Only the standard library is used, so this works before the project's deps are installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fleetlab.cgroups import cgroup2_mount
from fleetlab.host import Host
from fleetlab.hostcommon import (
    CGROUP_DIR,
    DEFAULT_BRIDGE,
    DEFAULT_LAB,
    DEFAULT_SUBNET,
    INIT_SCRIPT,
    PATH_ENV,
    PRIVATE_DIRS,
    STATE_ROOT,
    SYSTEMD,
    HostError,
    LabBusyError,
)
from fleetlab.lab import HostLab, open_lab
from fleetlab.labstate import read_json, sweep_leftovers

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_LAB",
    "DEFAULT_SUBNET",
    "STATE_ROOT",
    "Host",
    "HostError",
    "HostLab",
    "LabBusyError",
    "cgroup2_mount",
    "check_supported",
    "default_binds",
    "open_lab",
    "sweep_leftovers",
]


def check_supported() -> str | None:
    """Why namespaced systemd hosts cannot run here, or None when they can.

    Tests call this to skip with a clear reason instead of failing on machines without
    root, systemd or cgroup2.
    """
    if sys.platform != "linux":
        return "systemd test hosts need Linux"
    if os.geteuid() != 0:
        return "systemd test hosts need root (namespaces, mounts, cgroups, veths)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} not found (install systemd)"
    for tool in ("unshare", "nsenter", "ip", "bash", "mount", "systemctl", "journalctl", "dbus-daemon"):
        if shutil.which(tool, path=PATH_ENV) is None:
            return f"'{tool}' not found on PATH"
    if not INIT_SCRIPT.exists():
        return f"{INIT_SCRIPT} is missing (incomplete fleetlab/ checkout?)"
    root = cgroup2_mount()
    if root is None:
        return "cgroup2 is not mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    if not os.access(root, os.W_OK):
        return f"cgroup2 at {root} is not writable"
    r = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--uts", "--cgroup", "--net", "true"],
        capture_output=True,
        text=True,
        env={"PATH": PATH_ENV},
    )
    if r.returncode != 0:
        return f"cannot create namespaces: {r.stderr.strip()}"
    return None


def default_binds() -> list[str]:
    """Paths the code under test needs inside a host, when they are in a private dir.

    /tmp, /var/tmp, /var/log and /var/lib/systemd are empty tmpfs inside a host, but a CI
    clone or a venv often lives in /tmp. Returns the project root and the interpreter's
    prefixes and site-packages (as given and resolved) that lie under those dirs, outermost
    only, so that ``sys.executable -m fleetd ...`` works inside a host.
    """
    cands = [
        Path(__file__).resolve().parents[1],
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        Path(sys.executable).parent,
    ]
    with contextlib.suppress(Exception):
        cands += [Path(p) for p in site.getsitepackages()]
    paths: list[str] = []
    for c in cands:
        for p in (os.path.normpath(os.path.abspath(c)), os.path.realpath(c)):
            if (
                os.path.isdir(p)
                and any(p == d or p.startswith(d + "/") for d in PRIVATE_DIRS)
                and p not in PRIVATE_DIRS
            ):
                paths.append(p)
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(p.startswith(q + "/") for q in out):
            out.append(p)
    return out


# ---------------------------------------------------------------------------------- CLI


def _list(lab: str, state_root: Path) -> int:
    labs = [lab] if lab else sorted(p.parent.name for p in state_root.glob("*/lab.json"))
    for name in labs:
        info = read_json(state_root / name / "lab.json")
        if not info:
            continue
        print(f"lab {name}: bridge {info.get('bridge')} {info.get('subnet')}")
        for hj in sorted((state_root / name / "hosts").glob("*/host.json")):
            h = read_json(hj)
            try:
                cg = Path(f"/proc/{h.get('pid')}/cgroup").read_text()
                alive = f"/{CGROUP_DIR}/{name}/{h.get('name')}/" in cg
            except OSError:
                alive = False
            print(
                f"  {h.get('name'):12} {h.get('ip') or '-':15} pid {h.get('pid'):<8} "
                f"{h.get('machine_id')} {'running' if alive else 'dead'}"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``up N`` boots N hosts and leaves them running; ``down`` removes them; ``list``."""
    ap = argparse.ArgumentParser(
        prog="python -m fleetlab.hosts", description="namespaced systemd hosts for a local fleet"
    )
    ap.add_argument("--lab", default=None, help="lab name (default: demo; list: all)")
    ap.add_argument("--state-root", default=str(STATE_ROOT))
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot N hosts (h1..hN) and leave them running")
    up.add_argument("n", type=int)
    up.add_argument("--bridge", default=DEFAULT_BRIDGE)
    up.add_argument("--subnet", default=DEFAULT_SUBNET)
    sub.add_parser("down", help="stop and remove the lab's hosts, bridge and state")
    sub.add_parser("list", help="show labs and hosts")
    a = ap.parse_args(argv)
    state_root = Path(a.state_root)
    if a.cmd == "list":
        return _list(a.lab or "", state_root)
    a.lab = a.lab or "demo"
    if (why := check_supported()) is not None:
        print(f"unsupported: {why}", file=sys.stderr)
        return 2
    if a.cmd == "down":
        print(json.dumps(sweep_leftovers(a.lab, state_root=state_root)))
        return 0
    lab = HostLab(a.lab, bridge=a.bridge, subnet=a.subnet, state_root=state_root, binds=default_binds())
    try:
        hosts = lab.start_hosts(a.n)
    except BaseException:
        lab.close()
        raise
    for h in hosts:
        print(f"{h.name} ip={h.ip} pid={h.pid} machine-id={h.machine_id} boot={h.boot_time:.2f}s bus={h.dbus_address}")
    print(f"bridge {lab.bridge} {lab.bridge_ip}; stop with: python -m fleetlab.hosts --lab {lab.name} down")
    lab.detach()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
