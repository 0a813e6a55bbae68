"""One namespaced systemd host: launching it, acting inside it, stopping or crashing it.

A host is a real systemd running as PID 1 of fresh pid/mount/uts/cgroup (and usually
network) namespaces, prepared by ``host_init.sh`` so it cannot reach the shared machine
(read-only root view, private /dev /run /tmp, a tmpfs over /etc/systemd/system ...).
:class:`fleetlab.lab.HostLab` creates hosts and drives their stop and release; a test
only uses the public methods.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fleetlab import cgroups, labstate, links
from fleetlab.hostcommon import INIT_SCRIPT, PATH_ENV, POWEROFF_SIGNAL, HostError, sh
from fleetlab.wait import WaitTimeout, wait_until

if TYPE_CHECKING:
    from fleetlab.lab import HostLab

log = logging.getLogger(__name__)


class Host:
    """One namespaced systemd host of a :class:`HostLab` (made by ``lab.start_host``).

    ``pid`` is its systemd (PID 1 inside) as seen from the real pid namespace; commands
    run inside through ``nsenter``, files are reached through ``root_path``
    (/proc/PID/root), and the system bus through ``dbus_address``.
    """

    def __init__(
        self, lab: HostLab, name: str, ip: str | None, machine_id: str, binds: Sequence[str], env: Mapping[str, str]
    ) -> None:
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
        labstate.makedirs(self.state_dir)
        if self.cgroup.exists():  # a previous incarnation of this name
            cgroups.kill_all(self.cgroup)
            cgroups.remove(self.cgroup)
        self.cgroup.mkdir(parents=True)
        if self.veth and links.exists(self.veth):
            raise HostError(
                f"interface {self.veth} exists already (another lab uses host "
                f"name {self.name!r}?); use another name or veth_prefix"
            )
        fenv = {
            "PATH": PATH_ENV,
            "FH_NAME": self.name,
            "FH_MID": self.machine_id,
            "FH_NET": "1" if self.ip else "0",
            "FH_MIN": "1",
        }
        if self.env:
            quoted = " ".join(
                '"' + f"{k}={v}".replace("\\", "\\\\").replace('"', '\\"') + '"' for k, v in self.env.items()
            )
            fenv["FH_MANAGER_CONF"] = f"[Manager]\nDefaultEnvironment={quoted}"
        unshare = ["unshare", "--pid", "--fork", "--mount", "--uts", "--cgroup", "--mount-proc"]
        if self.ip:
            unshare.append("--net")
        # A one-line sh trampoline joins the cgroup *before* exec'ing unshare, so unshare's
        # cgroup namespace is rooted there and every host process is born inside it
        # (Popen's preexec_fn would do the same but is unsafe with threads).
        argv = [
            "/bin/sh",
            "-c",
            'echo $$ > "$0" && exec "$@"',
            str(self.cgroup / "cgroup.procs"),
            *unshare,
            "bash",
            str(INIT_SCRIPT),
            *self.binds,
        ]
        self._t0 = time.monotonic()
        with open(self.state_dir / "launcher.log", "wb") as logf:
            self._launcher = subprocess.Popen(
                argv,
                env=fenv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        launcher = self._launcher
        lp = launcher.pid

        def not_started() -> HostError:
            return HostError(f"host {self.name} did not start: {self._log_tail()}")

        def forked_pid() -> int | None:
            """systemd-to-be = the child unshare forks (PID 1 of the new pid ns)."""
            try:
                kids = Path(f"/proc/{lp}/task/{lp}/children").read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            if launcher.poll() is not None:
                raise not_started()
            return None

        self.pid = wait_until(forked_pid, 10, f"host {self.name}'s PID 1 to fork", 0.001, on_timeout=not_started)
        self._pidfd = os.pidfd_open(self.pid)
        self._save()
        if self.ip:
            self._setup_network()

    def _setup_network(self) -> None:
        """veth pair: vh-<name> on the lab bridge, the peer created as eth0 in the host."""
        lab = self.lab
        assert self.veth and self.ip and lab.bridge
        self._veth_created = True
        links.add_veth(self.veth, self.pid, lab.bridge, self.ip, lab.network.prefixlen)

    def _save(self) -> None:
        labstate.write_json(
            self.state_dir / "host.json",
            {
                "name": self.name,
                "ip": self.ip,
                "machine_id": self.machine_id,
                "pid": self.pid,
                "launcher_pid": self._launcher.pid if self._launcher else None,
                "veth": self.veth,
                "cgroup": str(self.cgroup),
                "binds": self.binds,
                "started": time.time(),
            },
        )

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return (self.state_dir / "launcher.log").read_text(errors="replace")[-n:].strip()
        except OSError:
            return "(no launcher log)"

    def is_alive(self) -> bool:
        """True while the host's systemd (PID 1) is running."""
        return cgroups.pid_alive(self._pidfd)

    def _signal(self, sig: int) -> None:
        if self._pidfd is not None:  # pidfd: never hits a recycled pid
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def _begin_stop(self) -> None:
        if self.is_alive():
            self._signal(POWEROFF_SIGNAL)

    def _finish_stop(self, deadline: float) -> None:
        """Wait for PID 1 to exit (SIGKILL at the deadline), then release everything."""
        if (
            self._pidfd is not None
            and self.is_alive()
            and not cgroups.wait_pidfd(self._pidfd, deadline - time.monotonic())
        ):
            log.warning("host %s: graceful stop timed out; SIGKILL", self.name)
            self._signal(signal.SIGKILL)
            cgroups.wait_pidfd(self._pidfd, 10)
        self._release()

    def _release(self) -> None:
        if self._launcher is not None:
            try:
                self._launcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._launcher.kill()  # our child; only if unshare itself hangs
                self._launcher.wait(timeout=10)
        try:
            wait_until(lambda: not cgroups.populated(self.cgroup), 10, f"host {self.name}'s processes to exit", 0.005)
        except WaitTimeout:
            cgroups.kill_all(self.cgroup)
        # only an interface this host made: a launch refused because another lab holds
        # the name must not take that lab's host off the network
        if self.veth and self._veth_created:
            links.delete(self.veth)
        cgroups.remove(self.cgroup)
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
            cgroups.wait_pidfd(self._pidfd, timeout)
        self._release()

    def partition(self) -> None:
        """Cut the host off the network (host-side veth down); processes keep running."""
        self._need_net()
        links.set_up(str(self.veth), False)

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self._need_net()
        links.set_up(str(self.veth), True)

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

        def execed() -> bool:
            if not self.is_alive():
                raise HostError(f"host {self.name} is not running: {self._log_tail()}")
            with contextlib.suppress(OSError):
                return os.path.basename(os.readlink(f"/proc/{self.pid}/exe")) == "systemd"
            return False

        wait_until(
            execed,
            timeout,
            f"host {self.name} to exec systemd",
            0.002,
            on_timeout=lambda: HostError(f"host {self.name}: systemd not started: {self._log_tail()}"),
        )
        self._exec_seen = True

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
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
        p = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,
        )
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

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside the host."""
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def wait_running(self, timeout: float = 30.0) -> float:
        """Wait until ``systemctl is-system-running`` says running/degraded.

        Returns the boot duration in seconds (from launch until running).
        """
        deadline = time.monotonic() + timeout
        self._ensure_systemd(timeout)
        state = ""

        def running() -> bool:
            nonlocal state
            if os.path.exists(f"/proc/{self.pid}/root/run/systemd/private"):
                r = self.run(
                    ["systemctl", "is-system-running"], check=False, timeout=max(1.0, deadline - time.monotonic())
                )
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return True
            if not self.is_alive():
                raise HostError(f"host {self.name} died while booting: {self._log_tail()}")
            return False

        # one deadline for both waits: what _ensure_systemd used is gone from this one
        wait_until(
            running,
            max(0.0, deadline - time.monotonic()),
            f"host {self.name} to run",
            0.01,
            on_timeout=lambda: HostError(f"host {self.name} not running after {timeout}s (state {state!r})"),
        )
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

    def journal(self, unit: str | None = None, lines: int | None = None, output: str = "short") -> str:
        """The host's journal (of one unit), read from outside via /proc/PID/root."""
        self._ensure_systemd()
        cmd = ["journalctl", "-D", str(self.root_path / "run/log/journal"), "--no-pager", "-q", "-o", output]
        if unit:
            cmd += ["-u", unit]
        if lines is not None:
            cmd += ["-n", str(lines)]
        return sh(cmd).stdout

    def unit_property(self, unit: str, prop: str) -> str:
        """One property of a unit (``systemctl show -p PROP --value UNIT``)."""
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()
