"""Namespaced systemd "hosts" for cluster tests and the local demo cluster.

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
  lab can always find and kill exactly its own processes, even after a crashed run;
- the lab holds an ``flock`` on its state dir while open; a later lab of the same name
  sweeps a crashed run's processes, veths, bridge, cgroups and state
  (:func:`sweep_leftovers`), and a lab never takes over a bridge that is not its own;
- :class:`HostLab` cleans up on ``close()``, as a context manager, at interpreter exit and
  on SIGTERM/SIGINT (chaining to the previous handlers, restored when the last lab closes).

Layout (defaults)::

    /run/fleet-testhosts/<lab>/lab.json              bridge ownership, subnet, cgroup
    /run/fleet-testhosts/<lab>/hosts/<name>/host.json, launcher.log
    /sys/fs/cgroup/unified/fleet-testhosts/<lab>/<name>   (pure v2: /sys/fs/cgroup/...)
    bridge flbr0 10.231.0.1/24, host veth vh-<name> (eth0 inside), hosts from .2 upward

CLI (demo cluster): ``python -m fleetlab.hosts up N | down | list [--lab NAME]``.
Only the standard library is used, so this works before the project's deps are installed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import select
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_SUBNET",
    "STATE_ROOT",
    "Host",
    "HostError",
    "HostLab",
    "LabBusyError",
    "check_supported",
    "default_binds",
    "open_lab",
    "sweep_leftovers",
]

log = logging.getLogger(__name__)

STATE_ROOT = Path("/run/fleet-testhosts")
DEFAULT_LAB = "default"
DEFAULT_BRIDGE = "flbr0"
DEFAULT_SUBNET = "10.231.0.0/24"
CGROUP_DIR = "fleet-testhosts"
SYSTEMD = "/lib/systemd/systemd"
INIT_SCRIPT = Path(__file__).with_name("host_init.sh")
#: Directories that are private (empty tmpfs) inside a host; code under test living there
#: must be bind-mounted in (see :func:`default_binds`).
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/var/log", "/var/lib/systemd")
#: SIGRTMIN+4 asks systemd for poweroff.target (what ``machinectl poweroff`` sends).
POWEROFF_SIGNAL = signal.SIGRTMIN + 4
IFNAMSIZ = 15  # usable characters of a Linux interface name
_PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LAB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_CMD_TIMEOUT = 30.0


class HostError(RuntimeError):
    """A host or lab operation failed (boot, network setup, cleanup)."""


class LabBusyError(HostError):
    """The lab (or its bridge) is in use by another live lab or by something else."""


# --------------------------------------------------------------------------- helpers


def _sh(argv: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = _CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a short administrative command (ip, nsenter ...) in the real namespaces."""
    r = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                       timeout=timeout, env={"PATH": _PATH_ENV, "LC_ALL": "C"})
    if check and r.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


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


def _cgroup_base() -> Path:
    root = cgroup2_mount()
    if root is None:
        raise HostError("cgroup2 is not mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified")
    return root / CGROUP_DIR


def _cg_procs(path: Path) -> list[int]:
    """All pids in a cgroup subtree (read recursively; a vanishing subdir is fine)."""
    pids: list[int] = []
    for d, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
    return pids


def _cg_populated(path: Path) -> bool:
    """True while any process lives in the subtree (cgroup.events covers descendants)."""
    try:
        for line in Path(path, "cgroup.events").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "populated":
                return v.strip() == "1"
    except FileNotFoundError:
        return False
    return bool(_cg_procs(path))


def _cg_kill(path: Path, timeout: float = 10.0) -> int:
    """SIGKILL every process in a cgroup subtree we created; returns how many there were.

    Everything in these cgroups was put there by this module (the launcher writes its own
    pid before exec'ing unshare), so it is ours by construction.
    """
    if not path.exists():
        return 0
    victims = _cg_procs(path)
    deadline = time.monotonic() + timeout
    while _cg_populated(path):
        kill_file = path / "cgroup.kill"  # kernel >= 5.14: atomic, also catches forks
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        else:
            for pid in _cg_procs(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HostError(f"processes survive SIGKILL in {path}: {_cg_procs(path)}")
        time.sleep(0.01)
    return len(victims)


def _cg_remove(path: Path, timeout: float = 5.0) -> None:
    """Remove a (dead) cgroup subtree bottom-up; rmdir can be briefly EBUSY after exits."""
    deadline = time.monotonic() + timeout
    while path.exists():
        try:
            for d, _dirs, _files in os.walk(path, topdown=False):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(d)
        except OSError:
            if time.monotonic() > deadline:
                raise HostError(f"cannot remove cgroup {path}: {_cg_procs(path)} still inside")
            time.sleep(0.01)


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _link_master(name: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
    except OSError:
        return None


def _link_delete(name: str, timeout: float = 5.0) -> None:
    """Delete an interface and wait until it is gone (netns teardown races with us)."""
    deadline = time.monotonic() + timeout
    while _link_exists(name):
        _sh(["ip", "link", "del", name], check=False)
        if not _link_exists(name):
            break
        if time.monotonic() > deadline:
            raise HostError(f"cannot delete interface {name}")
        time.sleep(0.01)


def _pid_alive(pidfd: int | None) -> bool:
    if pidfd is None:
        return False
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    """Wait until the process behind a pidfd exits; False on timeout."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000))))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _rmdir_quiet(path: Path) -> None:
    """Remove an empty shared parent dir; another live lab keeping it non-empty is fine."""
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _makedirs(path: Path) -> None:
    """mkdir -p that tolerates a concurrent lab removing an (empty) parent meanwhile."""
    for _ in range(50):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            time.sleep(0.01)
    path.mkdir(parents=True, exist_ok=True)


def _lock_dir(path: Path, timeout: float) -> int:
    """flock a lab's state dir (creating it); returns the fd. LabBusyError when held.

    The lock dies with its process, so a dir whose lock we can take belongs to no live lab.
    The holder removes the dir before unlocking, so a waiter re-checks that the dir it
    locked is still the one at ``path``.
    """
    deadline = time.monotonic() + timeout
    while True:
        _makedirs(path)
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


def _clear_dir(path: Path) -> None:
    for child in path.iterdir() if path.exists() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()


def _sweep_locked(lab_dir: Path, cgroup: Path, *, keep_dir: bool) -> dict[str, Any]:
    """Sweep one lab whose state-dir lock the caller holds (so no live lab owns it)."""
    info = _read_json(lab_dir / "lab.json")
    report: dict[str, Any] = {"killed": 0, "veths": [], "bridge": None,
                              "cgroup": False, "state": False}
    report["killed"] = _cg_kill(cgroup)
    bridge = info.get("bridge") if info.get("bridge_created") else None
    names = {_read_json(p).get("veth") for p in lab_dir.glob("hosts/*/host.json")}
    if bridge and _link_exists(bridge):
        names |= set(os.listdir(f"/sys/class/net/{bridge}/brif"))
    prefix = info.get("veth_prefix", "vh-")
    for veth in sorted(n for n in names if n):
        # only ours: recorded by this lab or a port of this lab's own bridge
        if _link_exists(veth) and veth.startswith(prefix) and (
                _link_master(veth) in (bridge, info.get("bridge"))):
            _link_delete(veth)
            report["veths"].append(veth)
    if bridge and _link_exists(bridge):
        _link_delete(bridge)
        report["bridge"] = bridge
    if cgroup.exists():
        _cg_remove(cgroup)
        report["cgroup"] = True
    if lab_dir.exists() and any(lab_dir.iterdir()):
        report["state"] = True
    if keep_dir:
        _clear_dir(lab_dir)
    else:
        shutil.rmtree(lab_dir, ignore_errors=True)
    _reap_orphans(cgroup)
    return report


def sweep_leftovers(lab_name: str = DEFAULT_LAB, *, state_root: Path | str = STATE_ROOT,
                    timeout: float = 0.0) -> dict[str, Any]:
    """Remove what a crashed (or detached) run of ``lab_name`` left behind.

    Kills the processes still in the lab's cgroup (ours by construction), deletes the
    lab's veths and the bridge it created, removes its cgroup dirs and its state dir.
    Raises LabBusyError when a live HostLab holds the lab. Returns a summary dict
    (``killed``: number of processes, ``veths``, ``bridge``, ``cgroup``, ``state``).
    HostLab calls this itself when it opens.
    """
    _check_lab_name(lab_name)
    root = Path(state_root)
    lab_dir = root / lab_name
    if not lab_dir.exists() and not (_cgroup_base() / lab_name).exists():
        return {"killed": 0, "veths": [], "bridge": None, "cgroup": False, "state": False}
    fd = _lock_dir(lab_dir, timeout)
    try:
        report = _sweep_locked(lab_dir, _cgroup_base() / lab_name, keep_dir=False)
    finally:
        os.close(fd)
    _rmdir_quiet(root)
    _rmdir_quiet(_cgroup_base())
    return report


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
    for tool in ("unshare", "nsenter", "ip", "bash", "mount", "systemctl", "journalctl",
                 "dbus-daemon"):
        if shutil.which(tool, path=_PATH_ENV) is None:
            return f"'{tool}' not found on PATH"
    if not INIT_SCRIPT.exists():
        return f"{INIT_SCRIPT} is missing (package data not installed?)"
    root = cgroup2_mount()
    if root is None:
        return "cgroup2 is not mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    if not os.access(root, os.W_OK):
        return f"cgroup2 at {root} is not writable"
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--uts", "--cgroup", "--net",
                        "true"], capture_output=True, text=True, env={"PATH": _PATH_ENV})
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
    cands = [Path(__file__).resolve().parents[1], Path(sys.prefix), Path(sys.base_prefix),
             Path(sys.exec_prefix), Path(sys.executable).parent]
    with contextlib.suppress(Exception):
        cands += [Path(p) for p in site.getsitepackages()]
    paths: list[str] = []
    for c in cands:
        for p in (os.path.normpath(os.path.abspath(c)), os.path.realpath(c)):
            if os.path.isdir(p) and any(p == d or p.startswith(d + "/") for d in PRIVATE_DIRS) \
                    and p not in PRIVATE_DIRS:
                paths.append(p)
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def _check_lab_name(name: str) -> None:
    if not _LAB_RE.match(name):
        raise ValueError(f"bad lab name {name!r} (letters, digits, '_.-', max 64)")


# ------------------------------------------------- process-wide cleanup (atexit, signals)

_registry_lock = threading.RLock()
_open_labs: list[HostLab] = []
_prev_handlers: dict[int, Any] = {}
_atexit_done = False
_closing = 0  # labs closing right now; a signal arriving meanwhile is deferred
_pending_signals: list[int] = []
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: launchers of labs this process detached (our children), by lab cgroup
_orphans: list[tuple[Path, subprocess.Popen[bytes]]] = []


def _reap_orphans(cgroup: Path) -> None:
    """Collect exit statuses of a swept lab's launchers we started, so no zombie lingers."""
    for entry in list(_orphans):
        if entry[0] == cgroup:
            with contextlib.suppress(subprocess.TimeoutExpired):
                entry[1].wait(timeout=5)  # just killed: exits at once
            _orphans.remove(entry)


def _register(lab: HostLab) -> None:
    global _atexit_done
    with _registry_lock:
        _open_labs.append(lab)
        if not _atexit_done:
            atexit.register(_close_all)
            _atexit_done = True
        if threading.current_thread() is threading.main_thread() and not _prev_handlers:
            for sig in _SIGNALS:
                prev = signal.getsignal(sig)
                if prev != signal.SIG_IGN:  # an ignored signal won't end the process
                    _prev_handlers[sig] = prev
                    signal.signal(sig, _on_signal)


def _unregister(lab: HostLab) -> None:
    with _registry_lock:
        if lab in _open_labs:
            _open_labs.remove(lab)
        if not _open_labs:
            _restore_handlers()


def _restore_handlers() -> None:
    """Give the signals back to whoever had them, unless someone replaced us meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, prev in list(_prev_handlers.items()):
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        del _prev_handlers[sig]


def _close_all() -> None:
    for lab in list(_open_labs):
        try:
            lab.close()
        except Exception as e:  # keep going: clean as much as we can
            print(f"fleet test hosts: cleanup of lab {lab.name} failed: {e}", file=sys.stderr)


def _on_signal(signum: int, frame: Any) -> None:
    """Clean up every open lab, then behave as the previous handler would have."""
    if _closing:
        _pending_signals.append(signum)  # finish the close in progress first
        return
    prev = _prev_handlers.get(signum, signal.SIG_DFL)
    _close_all()
    _restore_handlers()
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


# --------------------------------------------------------------------------------- Host


class Host:
    """One namespaced systemd host of a :class:`HostLab` (made by ``lab.start_host``).

    ``pid`` is its systemd (PID 1 inside) as seen from the real pid namespace; commands
    run inside through ``nsenter``, files are reached through ``root_path``
    (/proc/PID/root), and the system bus through ``dbus_address``.
    """

    def __init__(self, lab: HostLab, name: str, ip: str | None, machine_id: str,
                 binds: Sequence[str], env: Mapping[str, str]) -> None:
        self.lab = lab
        self.name = name
        self.ip = ip
        self.machine_id = machine_id
        self.binds = list(binds)
        self.env = dict(env)
        self.veth = f"{lab.veth_prefix}{name}" if ip else None
        self.state_dir = lab.state_dir / "hosts" / name
        self.cgroup = lab.cgroup / name
        self.pid = 0
        self.boot_time: float | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._t0 = 0.0
        self._exec_seen = False
        self._stopped = False
        self._veth_created = False

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else "dead"
        return f"<Host {self.name} ip={self.ip} pid={self.pid} {state}>"

    # ---- lifecycle

    def _launch(self) -> None:
        """Start the launcher in the host's cgroup and find systemd's pid; set up the veth."""
        _makedirs(self.state_dir)
        if self.cgroup.exists():  # a previous incarnation of this name
            _cg_kill(self.cgroup)
            _cg_remove(self.cgroup)
        self.cgroup.mkdir(parents=True)
        if self.veth and _link_exists(self.veth):
            raise HostError(f"interface {self.veth} exists already (another lab uses host "
                            f"name {self.name!r}?); use another name or veth_prefix")
        fenv = {"PATH": _PATH_ENV, "FH_NAME": self.name, "FH_MID": self.machine_id,
                "FH_NET": "1" if self.ip else "0", "FH_MIN": "1"}
        if self.env:
            quoted = " ".join('"' + f"{k}={v}".replace("\\", "\\\\").replace('"', '\\"') + '"'
                              for k, v in self.env.items())
            fenv["FH_MANAGER_CONF"] = f"[Manager]\nDefaultEnvironment={quoted}"
        unshare = ["unshare", "--pid", "--fork", "--mount", "--uts", "--cgroup", "--mount-proc"]
        if self.ip:
            unshare.append("--net")
        # A one-line sh trampoline joins the cgroup *before* exec'ing unshare, so unshare's
        # cgroup namespace is rooted there and every host process is born inside it
        # (Popen's preexec_fn would do the same but is unsafe with threads).
        argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"),
                *unshare, "bash", str(INIT_SCRIPT), *self.binds]
        self._t0 = time.monotonic()
        with open(self.state_dir / "launcher.log", "wb") as logf:
            self._launcher = subprocess.Popen(argv, env=fenv, stdin=subprocess.DEVNULL,
                                              stdout=logf, stderr=subprocess.STDOUT,
                                              start_new_session=True, close_fds=True)
        lp = self._launcher.pid
        deadline = time.monotonic() + 10
        while True:  # systemd-to-be = the child unshare forks (PID 1 of the new pid ns)
            try:
                kids = Path(f"/proc/{lp}/task/{lp}/children").read_text().split()
            except OSError:
                kids = []
            if kids:
                self.pid = int(kids[0])
                break
            if self._launcher.poll() is not None or time.monotonic() > deadline:
                raise HostError(f"host {self.name} did not start: {self._log_tail()}")
            time.sleep(0.001)
        self._pidfd = os.pidfd_open(self.pid)
        self._save()
        if self.ip:
            self._setup_network()

    def _setup_network(self) -> None:
        """veth pair: vh-<name> on the lab bridge, the peer created as eth0 in the host."""
        lab = self.lab
        self._veth_created = True
        _sh(["ip", "-batch", "-"], input=(
            f"link add {self.veth} type veth peer name eth0 netns {self.pid}\n"
            f"link set {self.veth} master {lab.bridge} up\n"))
        _sh(["nsenter", "-t", str(self.pid), "-n", "ip", "-batch", "-"], input=(
            f"addr add {self.ip}/{lab.network.prefixlen} dev eth0\n"
            "link set eth0 up\nlink set lo up\n"))

    def _save(self) -> None:
        _write_json(self.state_dir / "host.json", {
            "name": self.name, "ip": self.ip, "machine_id": self.machine_id, "pid": self.pid,
            "launcher_pid": self._launcher.pid if self._launcher else None,
            "veth": self.veth, "cgroup": str(self.cgroup), "binds": self.binds,
            "started": time.time()})

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return (self.state_dir / "launcher.log").read_text(errors="replace")[-n:].strip()
        except OSError:
            return "(no launcher log)"

    def is_alive(self) -> bool:
        """True while the host's systemd (PID 1) is running."""
        return _pid_alive(self._pidfd)

    def _signal(self, sig: int) -> None:
        if self._pidfd is not None:  # pidfd: never hits a recycled pid
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def _begin_stop(self) -> None:
        if self.is_alive():
            self._signal(POWEROFF_SIGNAL)

    def _finish_stop(self, deadline: float) -> None:
        """Wait for PID 1 to exit (SIGKILL at the deadline), then release everything."""
        if self._pidfd is not None and self.is_alive():
            if not _wait_pidfd(self._pidfd, deadline - time.monotonic()):
                log.warning("host %s: graceful stop timed out; SIGKILL", self.name)
                self._signal(signal.SIGKILL)
                _wait_pidfd(self._pidfd, 10)
        self._release()

    def _release(self) -> None:
        if self._launcher is not None:
            try:
                self._launcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._launcher.kill()  # our child; only if unshare itself hangs
                self._launcher.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _cg_populated(self.cgroup):
            if time.monotonic() > deadline:
                _cg_kill(self.cgroup)
            time.sleep(0.005)
        # only an interface this host made: a launch refused because another lab holds
        # the name must not take that lab's host off the network
        if self.veth and self._veth_created:
            _link_delete(self.veth)
        _cg_remove(self.cgroup)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._stopped = True

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful poweroff (SIGRTMIN+4 to systemd); SIGKILL after ``timeout`` seconds."""
        if self._stopped:
            return
        self._begin_stop()
        self._finish_stop(time.monotonic() + timeout)

    def crash(self, timeout: float = 10.0) -> None:
        """Simulate a machine crash: SIGKILL PID 1, so the kernel kills the whole host.

        Returns once no process of the host's cgroup remains; removes its veth and cgroup.
        """
        if self._stopped:
            return
        self._signal(signal.SIGKILL)
        if self._pidfd is not None:
            _wait_pidfd(self._pidfd, timeout)
        self._release()

    def partition(self) -> None:
        """Cut the host off the network (host-side veth down); processes keep running."""
        self._need_net()
        _sh(["ip", "link", "set", str(self.veth), "down"])

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self._need_net()
        _sh(["ip", "link", "set", str(self.veth), "up"])

    def _need_net(self) -> None:
        if not self.veth:
            raise HostError(f"host {self.name} shares the machine's network namespace")

    # ---- inside the host

    @property
    def root_path(self) -> Path:
        """The host's file system as seen from outside (/proc/PID/root)."""
        return Path(f"/proc/{self.pid}/root")

    @property
    def dbus_address(self) -> str:
        """The host's system bus, reachable from outside through /proc/PID/root."""
        return f"unix:path=/proc/{self.pid}/root/run/dbus/system_bus_socket"

    def _ensure_systemd(self, timeout: float = 10.0) -> None:
        """Refuse to act inside before systemd is exec'd.

        Until then the host's private /run may not be mounted yet, and /proc/PID/root/run
        or ``nsenter -m`` would reach the REAL machine's /run (and its systemd).
        """
        if self._exec_seen:
            return
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_alive():
                raise HostError(f"host {self.name} is not running: {self._log_tail()}")
            with contextlib.suppress(OSError):
                if os.path.basename(os.readlink(f"/proc/{self.pid}/exe")) == "systemd":
                    self._exec_seen = True
                    return
            if time.monotonic() > deadline:
                raise HostError(f"host {self.name}: systemd not started: {self._log_tail()}")
            time.sleep(0.002)

    def run(self, argv: Sequence[str] | str, *, check: bool = True, timeout: float = 60.0,
            input: str | None = None, env: Mapping[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (its mount, uts, pid and net namespaces).

        ``argv`` as a string runs through ``sh -c``. On timeout the whole process group
        (nsenter and its child inside the host) is killed and TimeoutExpired raised.
        """
        self._ensure_systemd()
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-u", "-p", "-n"]
        if cwd:
            cmd.append(f"--wd={cwd}")
        cmd += list(argv)
        full_env = dict(os.environ)
        full_env.update(env or {})
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=full_env, start_new_session=True)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # our own new process group only
            out, err = p.communicate()
            raise
        r = subprocess.CompletedProcess(list(argv), p.returncode, out, err)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, r.args, out, err)
        return r

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside the host."""
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def wait_running(self, timeout: float = 30.0) -> float:
        """Wait until ``systemctl is-system-running`` says running/degraded.

        Returns the boot duration in seconds (from launch until running).
        """
        deadline = time.monotonic() + timeout
        self._ensure_systemd(timeout)
        state = ""
        while True:
            if os.path.exists(f"/proc/{self.pid}/root/run/systemd/private"):
                r = self.run(["systemctl", "is-system-running"], check=False,
                             timeout=max(1.0, deadline - time.monotonic()))
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    break
            if not self.is_alive():
                raise HostError(f"host {self.name} died while booting: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise HostError(f"host {self.name} not running after {timeout}s (state "
                                f"{state!r})")
            time.sleep(0.01)
        if self.boot_time is None:
            self.boot_time = time.monotonic() - self._t0
        return self.boot_time

    def put_unit(self, name: str, text: str, *, reload: bool = True) -> None:
        """Write a unit file into the host's /run/systemd/system (then daemon-reload)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad unit name {name!r}")
        self._ensure_systemd()
        d = self.root_path / "run/systemd/system"
        tmp = d / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, d / name)
        if reload:
            self.systemctl("daemon-reload")

    def journal(self, unit: str | None = None, lines: int | None = None,
                output: str = "short") -> str:
        """The host's journal (of one unit), read from outside via /proc/PID/root."""
        self._ensure_systemd()
        cmd = ["journalctl", "-D", str(self.root_path / "run/log/journal"), "--no-pager",
               "-q", "-o", output]
        if unit:
            cmd += ["-u", unit]
        if lines is not None:
            cmd += ["-n", str(lines)]
        return _sh(cmd).stdout

    def unit_property(self, unit: str, prop: str) -> str:
        """One property of a unit (``systemctl show -p PROP --value UNIT``)."""
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()


# ------------------------------------------------------------------------------ HostLab


class HostLab:
    """A set of test hosts sharing a bridge, a cgroup subtree and a state dir.

    Opening a lab (the constructor) sweeps what a crashed run of the same name left,
    then creates the bridge (``bridge_ip`` is up as soon as the lab exists, so a test can
    bind etcd to it before any host boots). ``close()`` (also via ``with``, atexit and
    SIGTERM/SIGINT) stops every host and removes everything the lab created.
    """

    def __init__(self, name: str = DEFAULT_LAB, *, bridge: str = DEFAULT_BRIDGE,
                 subnet: str = DEFAULT_SUBNET, network: bool = True,
                 state_root: Path | str = STATE_ROOT, veth_prefix: str = "vh-",
                 binds: Sequence[str] = (), lock_timeout: float = 0.0) -> None:
        _check_lab_name(name)
        self.name = name
        self.network_enabled = network
        self.bridge = bridge if network else None
        self.network = ipaddress.ip_network(subnet)
        self.bridge_ip = str(next(self.network.hosts()))
        self.veth_prefix = veth_prefix
        self.binds = list(binds)
        self.state_root = Path(state_root)
        self.state_dir = self.state_root / name
        self.cgroup = _cgroup_base() / name
        self.hosts: dict[str, Host] = {}
        self._closed = False
        self._bridge_created = False
        if network and not (0 < len(bridge) <= IFNAMSIZ):
            raise ValueError(f"bad bridge name {bridge!r}")
        self._lock_fd: int | None = _lock_dir(self.state_dir, lock_timeout)
        try:
            #: what the sweep of a previous (crashed/detached) run of this lab removed
            self.swept = _sweep_locked(self.state_dir, self.cgroup, keep_dir=True)
            if any(self.swept.values()):
                log.warning("lab %s: swept leftovers of a previous run: %s", name, self.swept)
            self.cgroup.mkdir(parents=True, exist_ok=True)
            _makedirs(self.state_dir / "hosts")
            self._save()
            if network:
                self._claim_bridge()
        except BaseException:
            self._cleanup()
            raise
        _register(self)

    def __repr__(self) -> str:
        return f"<HostLab {self.name} bridge={self.bridge} hosts={list(self.hosts)}>"

    def __enter__(self) -> HostLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _save(self) -> None:
        _write_json(self.state_dir / "lab.json", {
            "name": self.name, "bridge": self.bridge, "bridge_created": self._bridge_created,
            "subnet": str(self.network), "veth_prefix": self.veth_prefix,
            "cgroup": str(self.cgroup), "pid": os.getpid()})

    def _claim_bridge(self) -> None:
        """Create our own bridge; never adopt one a live lab (or anyone else) is using."""
        assert self.bridge
        if _link_exists(self.bridge):
            for other in self.state_root.glob("*/lab.json"):
                info = _read_json(other)
                if other.parent == self.state_dir or info.get("bridge") != self.bridge:
                    continue
                other_cg = _cgroup_base() / other.parent.name
                try:
                    fd = _lock_dir(other.parent, 0)
                except LabBusyError:
                    raise LabBusyError(f"bridge {self.bridge} belongs to running lab "
                                       f"{other.parent.name!r}") from None
                try:  # a detached lab still running: busy; a dead lab's leftovers: sweep
                    if _cg_populated(other_cg):
                        raise LabBusyError(f"bridge {self.bridge} in use by detached lab "
                                           f"{other.parent.name!r}")
                    _sweep_locked(other.parent, other_cg, keep_dir=False)
                finally:
                    os.close(fd)
            if _link_exists(self.bridge):
                raise LabBusyError(f"bridge {self.bridge} exists and is not ours; pass "
                                   "bridge=/subnet= (or run: python -m fleetlab.hosts "
                                   "down --lab NAME)")
        self._bridge_created = True  # intent first, so a crash right after still sweeps it
        self._save()
        r = _sh(["ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0"],
                check=False)
        if r.returncode != 0:
            self._bridge_created = False  # e.g. lost a race with another lab: not ours
            self._save()
            if "File exists" in r.stderr:
                raise LabBusyError(f"bridge {self.bridge} was just created by someone else")
            raise HostError(f"cannot create bridge {self.bridge}: {r.stderr.strip()}")
        # A bridge takes the lowest MAC of its ports unless given one: when a host with the
        # lowest MAC crashes, the bridge's MAC changes and every other host's ARP entry for
        # the bridge IP goes stale for seconds (their etcd connections time out). A fixed,
        # locally administered MAC derived from the subnet keeps it stable.
        octets = self.network.network_address.packed
        mac = "02:f1:ee:%02x:%02x:%02x" % (octets[1], octets[2], octets[3])
        _sh(["ip", "-batch", "-"], input=(
            f"link set {self.bridge} address {mac}\n"
            f"addr add {self.bridge_ip}/{self.network.prefixlen} dev {self.bridge}\n"
            f"link set {self.bridge} up\n"))

    # ---- hosts

    def _allocate_ip(self) -> str:
        used = {h.ip for h in self.hosts.values() if h.ip and not h._stopped}
        for addr in self.network.hosts():
            a = str(addr)
            if a != self.bridge_ip and a not in used:
                return a
        raise HostError(f"no free address in {self.network}")

    def start_host(self, name: str, ip: str | None = None, binds: Iterable[str] = (),
                   env: Mapping[str, str] | None = None, *, network: bool | None = None,
                   machine_id: str | None = None) -> Host:
        """Boot a host (returns at once; call ``host.wait_running()``).

        ``ip``: address on the lab bridge (default: the lowest free one). ``network=False``
        keeps the host in the machine's network namespace (no veth). ``binds``: host
        paths kept visible and writable at the same path inside (added to the lab's).
        ``env``: systemd DefaultEnvironment for every unit. ``machine_id``: reuse one
        (e.g. to restart a crashed machine), default a fresh uuid4 hex.
        A name of a stopped/crashed host may be reused.
        """
        self._check_open()
        if not _HOST_RE.match(name) or len(self.veth_prefix + name) > IFNAMSIZ:
            raise ValueError(f"bad host name {name!r}: lowercase letters, digits, '-', at "
                             f"most {IFNAMSIZ - len(self.veth_prefix)} characters")
        old = self.hosts.get(name)
        if old is not None and not old._stopped:
            raise HostError(f"host {name} is already running")
        net = self.network_enabled if network is None else network
        if net and not self.network_enabled:
            raise HostError(f"lab {self.name} has no network")
        if net:
            ip = ip or self._allocate_ip()
            if ipaddress.ip_address(ip) not in self.network or ip == self.bridge_ip:
                raise ValueError(f"{ip} is not a host address of {self.network}")
            if ip in {h.ip for h in self.hosts.values() if not h._stopped}:
                raise HostError(f"{ip} is in use")
        else:
            ip = None
        all_binds = list(dict.fromkeys([*self.binds, *binds]))
        for b in all_binds:
            if not os.path.isabs(b) or not os.path.isdir(b):
                raise ValueError(f"bind {b!r} must be an existing absolute directory")
            if any(b == d or b.startswith(d + "/") for d in ("/run", "/dev", "/proc", "/sys")):
                raise ValueError(f"bind {b!r}: /run, /dev, /proc and /sys are replaced inside")
        mid = machine_id or uuid.uuid4().hex
        if not re.fullmatch(r"[0-9a-f]{32}", mid):
            raise ValueError(f"bad machine id {mid!r}")
        host = Host(self, name, ip, mid, all_binds, env or {})
        self.hosts[name] = host
        try:
            host._launch()
        except BaseException:
            with contextlib.suppress(Exception):
                host.crash()
            raise
        return host

    def start_hosts(self, names: int | Iterable[str], *, wait: bool = True,
                    timeout: float = 30.0, **kwargs: Any) -> list[Host]:
        """Boot several hosts in parallel (``names`` or a count: h1..hN); wait for all."""
        if isinstance(names, int):
            names = [f"h{i}" for i in range(1, names + 1)]
        hosts = [self.start_host(n, **kwargs) for n in names]
        if wait:
            for h in hosts:
                h.wait_running(timeout)
        return hosts

    # ---- teardown

    def _check_open(self) -> None:
        if self._closed:
            raise HostError(f"lab {self.name} is closed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop all hosts (poweroff, SIGKILL after ``timeout``) and remove everything."""
        global _closing
        if self._closed:
            return
        self._closed = True
        _closing += 1
        try:
            self._cleanup(timeout)
        finally:
            _closing -= 1
            _unregister(self)
            if not _closing and _pending_signals:
                _on_signal(_pending_signals.pop(0), None)

    def _cleanup(self, timeout: float = 10.0) -> None:
        errors: list[str] = []

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:
                errors.append(f"{what}: {e}")

        live = [h for h in self.hosts.values() if not h._stopped]
        for h in live:  # poweroff all at once: parallel shutdown
            attempt(f"stop {h.name}", h._begin_stop)
        deadline = time.monotonic() + timeout
        for h in live:
            attempt(f"stop {h.name}", h._finish_stop, deadline)
        attempt("kill leftovers", _cg_kill, self.cgroup)
        if self._bridge_created and self.bridge:
            attempt("bridge", _link_delete, self.bridge)
        attempt("cgroup", _cg_remove, self.cgroup)
        attempt("state dir", shutil.rmtree, self.state_dir)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        _rmdir_quiet(self.state_root)
        with contextlib.suppress(HostError):
            _rmdir_quiet(_cgroup_base())
        if errors:
            raise HostError(f"lab {self.name}: cleanup incomplete: " + "; ".join(errors))

    def detach(self) -> None:
        """Leave the hosts running and forget them (demo cluster ``up``; crash tests).

        Nothing is cleaned up; the next lab of this name (or ``sweep_leftovers``) does it.
        """
        if self._closed:
            return
        self._closed = True
        for h in self.hosts.values():
            if h._pidfd is not None:
                os.close(h._pidfd)
                h._pidfd = None
            if h._launcher is not None:
                _orphans.append((self.cgroup, h._launcher))  # reaped once swept
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        _unregister(self)


def open_lab(prefix: str = "lab", *, slots: Iterable[int] = range(16),
             **kwargs: Any) -> HostLab:
    """Open the first free lab slot k: lab ``<prefix>-k``, bridge flbrK, 10.231.K.0/24.

    Lets concurrent runs on one machine (several test sessions, a demo cluster) coexist:
    a slot whose lab or bridge is in use by a live lab is skipped. Slot 0 is the default
    bridge flbr0 / 10.231.0.0/24 with veths vh-<name>; slot k > 0 uses vh<k>-<name>.
    """
    errors = []
    for k in slots:
        try:
            return HostLab(f"{prefix}-{k}", bridge=f"flbr{k}", subnet=f"10.231.{k}.0/24",
                           veth_prefix="vh-" if k == 0 else f"vh{k}-", **kwargs)
        except LabBusyError as e:
            errors.append(str(e))
    raise LabBusyError("no free lab slot: " + "; ".join(errors))


# ---------------------------------------------------------------------------------- CLI


def _list(lab: str, state_root: Path) -> int:
    labs = [lab] if lab else sorted(p.parent.name for p in state_root.glob("*/lab.json"))
    for name in labs:
        info = _read_json(state_root / name / "lab.json")
        if not info:
            continue
        print(f"lab {name}: bridge {info.get('bridge')} {info.get('subnet')}")
        for hj in sorted((state_root / name / "hosts").glob("*/host.json")):
            h = _read_json(hj)
            try:
                cg = Path(f"/proc/{h.get('pid')}/cgroup").read_text()
                alive = f"/{CGROUP_DIR}/{name}/{h.get('name')}/" in cg
            except OSError:
                alive = False
            print(f"  {h.get('name'):12} {h.get('ip') or '-':15} pid {h.get('pid'):<8} "
                  f"{h.get('machine_id')} {'running' if alive else 'dead'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``up N`` boots N hosts and leaves them running; ``down`` removes them; ``list``."""
    ap = argparse.ArgumentParser(prog="python -m fleetlab.hosts",
                                 description="namespaced systemd hosts for a local fleet")
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
    lab = HostLab(a.lab, bridge=a.bridge, subnet=a.subnet, state_root=state_root,
                  binds=default_binds())
    try:
        hosts = lab.start_hosts(a.n)
    except BaseException:
        lab.close()
        raise
    for h in hosts:
        print(f"{h.name} ip={h.ip} pid={h.pid} machine-id={h.machine_id} "
              f"boot={h.boot_time:.2f}s bus={h.dbus_address}")
    print(f"bridge {lab.bridge} {lab.bridge_ip}; stop with: python -m fleetlab.hosts "
          f"--lab {lab.name} down")
    lab.detach()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
