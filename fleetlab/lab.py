"""A lab: the hosts sharing one bridge, cgroup subtree and state dir, and their cleanup.

Opening a lab sweeps what a crashed run of the same name left behind, takes the lab's
lock and creates its bridge; ``close()`` stops every host and removes everything the lab
created. Because the machine is shared, a lab never adopts a bridge that is not its own,
and every open lab is also closed at interpreter exit and on SIGTERM/SIGINT (chaining to
the previous handlers, restored when the last lab closes).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetlab import cgroups, labstate, links
from fleetlab.host import Host
from fleetlab.hostcommon import (
    DEFAULT_BRIDGE,
    DEFAULT_LAB,
    DEFAULT_SUBNET,
    HOST_RE,
    IFNAMSIZ,
    STATE_ROOT,
    HostError,
    LabBusyError,
    check_lab_name,
)

log = logging.getLogger(__name__)

# ------------------------------------------------- process-wide cleanup (atexit, signals)

_registry_lock = threading.RLock()
_open_labs: list[HostLab] = []
_prev_handlers: dict[int, Any] = {}
_atexit_done = False
_closing = 0  # labs closing right now; a signal arriving meanwhile is deferred
_pending_signals: list[int] = []
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        except Exception as e:  # noqa: BLE001 - keep going: clean as much as we can
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


# ------------------------------------------------------------------------------ HostLab


class HostLab:
    """A set of test hosts sharing a bridge, a cgroup subtree and a state dir.

    Opening a lab (the constructor) sweeps what a crashed run of the same name left,
    then creates the bridge (``bridge_ip`` is up as soon as the lab exists, so a test can
    bind etcd to it before any host boots). ``close()`` (also via ``with``, atexit and
    SIGTERM/SIGINT) stops every host and removes everything the lab created.
    """

    def __init__(
        self,
        name: str = DEFAULT_LAB,
        *,
        bridge: str = DEFAULT_BRIDGE,
        subnet: str = DEFAULT_SUBNET,
        network: bool = True,
        state_root: Path | str = STATE_ROOT,
        veth_prefix: str = "vh-",
        binds: Sequence[str] = (),
        lock_timeout: float = 0.0,
    ) -> None:
        check_lab_name(name)
        self.name = name
        self.network_enabled = network
        self.bridge = bridge if network else None
        self.network = ipaddress.ip_network(subnet)
        self.bridge_ip = str(next(self.network.hosts()))
        self.veth_prefix = veth_prefix
        self.binds = list(binds)
        self.state_root = Path(state_root)
        self.state_dir = self.state_root / name
        self.cgroup = cgroups.cgroup_base() / name
        self.hosts: dict[str, Host] = {}
        self._closed = False
        self._bridge_created = False
        if network and not (0 < len(bridge) <= IFNAMSIZ):
            raise ValueError(f"bad bridge name {bridge!r}")
        self._lock_fd: int | None = labstate.lock_dir(self.state_dir, lock_timeout)
        try:
            #: what the sweep of a previous (crashed/detached) run of this lab removed
            self.swept = labstate.sweep_locked(self.state_dir, self.cgroup, keep_dir=True)
            if any(self.swept.values()):
                log.warning("lab %s: swept leftovers of a previous run: %s", name, self.swept)
            self.cgroup.mkdir(parents=True, exist_ok=True)
            labstate.makedirs(self.state_dir / "hosts")
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
        labstate.write_json(
            self.state_dir / "lab.json",
            {
                "name": self.name,
                "bridge": self.bridge,
                "bridge_created": self._bridge_created,
                "subnet": str(self.network),
                "veth_prefix": self.veth_prefix,
                "cgroup": str(self.cgroup),
                "pid": os.getpid(),
            },
        )

    def _claim_bridge(self) -> None:
        """Create our own bridge; never adopt one a live lab (or anyone else) is using."""
        assert self.bridge
        if links.exists(self.bridge):
            for other in self.state_root.glob("*/lab.json"):
                info = labstate.read_json(other)
                if other.parent == self.state_dir or info.get("bridge") != self.bridge:
                    continue
                other_cg = cgroups.cgroup_base() / other.parent.name
                try:
                    fd = labstate.lock_dir(other.parent, 0)
                except LabBusyError:
                    raise LabBusyError(f"bridge {self.bridge} belongs to running lab {other.parent.name!r}") from None
                try:  # a detached lab still running: busy; a dead lab's leftovers: sweep
                    if cgroups.populated(other_cg):
                        raise LabBusyError(f"bridge {self.bridge} in use by detached lab {other.parent.name!r}")
                    labstate.sweep_locked(other.parent, other_cg, keep_dir=False)
                finally:
                    os.close(fd)
            if links.exists(self.bridge):
                raise LabBusyError(
                    f"bridge {self.bridge} exists and is not ours; pass "
                    "bridge=/subnet= (or run: python -m fleetlab.hosts "
                    "down --lab NAME)"
                )
        self._bridge_created = True  # intent first, so a crash right after still sweeps it
        self._save()
        try:
            links.add_bridge(self.bridge)
        except HostError:
            self._bridge_created = False  # e.g. lost a race with another lab: not ours
            self._save()
            raise
        links.configure_bridge(self.bridge, self.network, self.bridge_ip)

    # ---- hosts

    def _allocate_ip(self) -> str:
        used = {h.ip for h in self.hosts.values() if h.ip and not h._stopped}
        for addr in self.network.hosts():
            a = str(addr)
            if a != self.bridge_ip and a not in used:
                return a
        raise HostError(f"no free address in {self.network}")

    def start_host(
        self,
        name: str,
        ip: str | None = None,
        binds: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        network: bool | None = None,
        machine_id: str | None = None,
    ) -> Host:
        """Boot a host (returns at once; call ``host.wait_running()``).

        ``ip``: address on the lab bridge (default: the lowest free one). ``network=False``
        keeps the host in the machine's network namespace (no veth). ``binds``: host
        paths kept visible and writable at the same path inside (added to the lab's).
        ``env``: systemd DefaultEnvironment for every unit. ``machine_id``: reuse one
        (e.g. to restart a crashed machine), default a fresh uuid4 hex.
        A name of a stopped/crashed host may be reused.
        """
        self._check_open()
        if not HOST_RE.match(name) or len(self.veth_prefix + name) > IFNAMSIZ:
            raise ValueError(
                f"bad host name {name!r}: lowercase letters, digits, '-', at "
                f"most {IFNAMSIZ - len(self.veth_prefix)} characters"
            )
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

    def start_hosts(
        self, names: int | Iterable[str], *, wait: bool = True, timeout: float = 30.0, **kwargs: Any
    ) -> list[Host]:
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
            except Exception as e:  # noqa: BLE001 - every step runs; all failures are reported
                errors.append(f"{what}: {e}")

        live = [h for h in self.hosts.values() if not h._stopped]
        for h in live:  # poweroff all at once: parallel shutdown
            attempt(f"stop {h.name}", h._begin_stop)
        deadline = time.monotonic() + timeout
        for h in live:
            attempt(f"stop {h.name}", h._finish_stop, deadline)
        attempt("kill leftovers", cgroups.kill_all, self.cgroup)
        if self._bridge_created and self.bridge:
            attempt("bridge", links.delete, self.bridge)
        attempt("cgroup", cgroups.remove, self.cgroup)
        attempt("state dir", shutil.rmtree, self.state_dir)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        labstate.rmdir_quiet(self.state_root)
        with contextlib.suppress(HostError):
            labstate.rmdir_quiet(cgroups.cgroup_base())
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
                labstate.orphans.append((self.cgroup, h._launcher))  # reaped once swept
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        _unregister(self)


def open_lab(prefix: str = "lab", *, slots: Iterable[int] = range(16), **kwargs: Any) -> HostLab:
    """Open the first free lab slot k: lab ``<prefix>-k``, bridge flbrK, 10.231.K.0/24.

    Lets concurrent runs on one machine (several test sessions, a demo cluster) coexist:
    a slot whose lab or bridge is in use by a live lab is skipped. Slot 0 is the default
    bridge flbr0 / 10.231.0.0/24 with veths vh-<name>; slot k > 0 uses vh<k>-<name>.
    """
    errors = []
    for k in slots:
        try:
            return HostLab(
                f"{prefix}-{k}",
                bridge=f"flbr{k}",
                subnet=f"10.231.{k}.0/24",
                veth_prefix="vh-" if k == 0 else f"vh{k}-",
                **kwargs,
            )
        except LabBusyError as e:
            errors.append(str(e))
    raise LabBusyError("no free lab slot: " + "; ".join(errors))
