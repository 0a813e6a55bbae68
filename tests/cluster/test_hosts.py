"""The test-host harness itself: identity, isolation, crash, partition, cleanup, sweep.

Everything later cluster tests rely on (and everything that protects the shared machine)
is checked here on real namespaced systemd hosts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetlab.hosts import Host, HostLab
from fleetlab.wait import wait_until

pytestmark = pytest.mark.cluster


def host_pids(host: Host) -> list[int]:
    """Processes in a host's cgroup subtree (what would leak if cleanup failed)."""
    pids: list[int] = []
    for d, _dirs, _files in os.walk(host.cgroup):
        try:
            pids += [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
        except OSError:
            pass
    return pids


def pid_gone(pid: int, lab_cgroup: Path) -> bool:
    """The pid no longer runs: gone, a zombie (dead; its reaper may be the real PID 1),
    or reused by a process outside the lab's cgroup."""
    try:
        cg = Path(f"/proc/{pid}/cgroup").read_text()
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return True
    except OSError:
        return True
    return f"/{lab_cgroup.parent.name}/{lab_cgroup.name}/" not in cg


def snapshot(root: Path) -> dict[str, str]:
    """Names, link targets and content hashes of a real directory tree."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(d, n)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


# ------------------------------------------------------------------ shared 3-host lab


def test_hosts_boot_with_own_identity(hosts: list[Host]) -> None:
    ids, names = set(), set()
    for h in hosts:
        mid = h.run(["cat", "/etc/machine-id"]).stdout.strip()
        name = h.run(["hostname"]).stdout.strip()
        assert mid == h.machine_id
        assert name == h.name
        assert h.systemctl("is-system-running", check=False).stdout.strip() in ("running", "degraded")
        assert f"inet {h.ip}/" in h.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
        ids.add(mid)
        names.add(name)
        print(f"{h.name}: ip {h.ip} pid {h.pid} machine-id {mid} boot {h.boot_time:.3f}s")
    assert len(ids) == len(names) == len(hosts) == 3
    assert Path("/etc/machine-id").read_text().strip() not in ids  # the real one is hidden


def test_code_under_test_runs_inside(hosts: list[Host]) -> None:
    """default_binds(): the interpreter and this checkout work inside (even under /tmp)."""
    import fleetd

    r = hosts[0].run([sys.executable, "-c", "import fleetd; print(fleetd.__file__)"])
    assert r.stdout.strip() == fleetd.__file__


def test_unit_runs_only_where_started(hosts: list[Host]) -> None:
    h1, others = hosts[0], hosts[1:]
    marker = f"MARKER-{uuid.uuid4().hex}"
    unit = "hosttest-sleep.service"
    h1.put_unit(unit, f"[Service]\nExecStart=/bin/sh -c 'echo {marker}; exec sleep infinity'\n")
    try:
        h1.systemctl("start", unit)
        assert h1.unit_property(unit, "ActiveState") == "active"
        # the service runs under h1's systemd, inside h1's cgroup subtree
        assert int(h1.unit_property(unit, "MainPID")) > 1
        assert (h1.cgroup / "system.slice" / unit / "cgroup.procs").read_text().split()
        for h in others:
            assert h.unit_property(unit, "LoadState") == "not-found"
            assert h.unit_property(unit, "ActiveState") == "inactive"
            assert not (h.root_path / "run/systemd/system" / unit).exists()
        wait_until(lambda: marker in h1.journal(unit), 10, "the marker in h1's journal")
        for h in others:
            assert marker not in h.journal()
    finally:
        h1.systemctl("stop", unit, check=False)
        (h1.root_path / "run/systemd/system" / unit).unlink(missing_ok=True)
        h1.systemctl("daemon-reload")


def test_crash_leaves_nothing(lab: HostLab, hosts: list[Host]) -> None:
    h4 = lab.start_host("h4")
    h4.wait_running()
    h4.put_unit("busy.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    h4.systemctl("start", "busy.service")
    pid, cgroup, veth = h4.pid, h4.cgroup, h4.veth
    before = host_pids(h4)
    assert pid in before and len(before) >= 3  # unshare, systemd, journald, dbus, sleep...

    t0 = time.monotonic()
    h4.crash()
    print(f"h4 crashed and gone in {time.monotonic() - t0:.3f}s")
    assert not h4.is_alive()
    assert not cgroup.exists() or not host_pids(h4)
    assert all(pid_gone(p, lab.cgroup) for p in before)
    assert veth and not Path("/sys/class/net", veth).exists()
    assert all(h.is_alive() for h in hosts)  # the others did not notice


@pytest.fixture
def listener(lab: HostLab) -> Iterator[int]:
    """A TCP server on the bridge IP (where tests run etcd); yields its port."""
    srv = socket.create_server((lab.bridge_ip, 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


def test_partition_and_heal(lab: HostLab, hosts: list[Host], listener: int) -> None:
    h = hosts[1]

    def can_connect(host: Host) -> bool:
        r = host.run(
            ["timeout", "1", "bash", "-c", f"exec 3<>/dev/tcp/{lab.bridge_ip}/{listener}"], check=False, timeout=5
        )
        return r.returncode == 0

    assert can_connect(h)
    h.partition()
    try:
        wait_until(lambda: not can_connect(h), 5, "the partition to cut the host off")
        assert can_connect(hosts[2])  # only h is partitioned
        assert h.is_alive()
    finally:
        h.heal()
    wait_until(lambda: can_connect(h), 10, "the host to reach the bridge again")


# ------------------------------------------------------------------------ own labs


def test_close_cleans_up(lab_factory: Callable[..., HostLab]) -> None:
    lab = lab_factory()
    hs = lab.start_hosts(2)
    hs[0].put_unit("x.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    hs[0].systemctl("start", "x.service")
    pids = [p for h in hs for p in host_pids(h)]
    veths = [h.veth for h in hs]
    cgroup, state_dir, bridge = lab.cgroup, lab.state_dir, lab.bridge
    assert pids and Path("/sys/class/net", str(bridge)).exists()

    t0 = time.monotonic()
    lab.close()
    print(f"lab of 2 hosts closed in {time.monotonic() - t0:.3f}s")

    assert not cgroup.exists()
    assert all(pid_gone(p, cgroup) for p in pids)
    assert not Path("/sys/class/net", str(bridge)).exists()
    assert not any(Path("/sys/class/net", str(v)).exists() for v in veths)
    assert not state_dir.exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(state_dir) not in mounts and "fleet-testhost" not in mounts


def test_real_machine_untouched(lab_factory: Callable[..., HostLab]) -> None:
    units_before = snapshot(Path("/etc/systemd/system"))
    identity = {p: Path(p).read_bytes() for p in ("/etc/hostname", "/etc/machine-id") if Path(p).exists()}
    canary = Path(f"/tmp/fleet-hosttest-canary-{uuid.uuid4().hex}")
    canary.write_text("canary\n")
    shared = Path(tempfile.mkdtemp(prefix="fleet-hosttest-bind-", dir="/tmp"))
    try:
        lab = lab_factory()
        h = lab.start_host("u1", binds=[str(shared)])
        h.wait_running()
        # inside: /tmp is private, /etc/systemd/system is a tmpfs, the root view is read-only
        assert h.run(["test", "-e", str(canary)], check=False).returncode != 0
        # ...except for binds, which are visible and writable at the same path
        h.run(["sh", "-c", f"echo from-inside > {shared}/f"])
        assert (shared / "f").read_text() == "from-inside\n"
        h.run(["sh", "-c", "echo inside > /tmp/inside && echo > /etc/systemd/system/evil.service"])
        assert h.run(["touch", "/etc/fleet-hosttest-probe"], check=False).returncode != 0
        assert h.run(["sh", "-c", "echo x > /sys/kernel/mm/transparent_hugepage/enabled"], check=False).returncode != 0
        lab.close()

        assert canary.read_text() == "canary\n"
        assert not Path("/tmp/inside").exists()
        assert not Path("/etc/fleet-hosttest-probe").exists()
        assert snapshot(Path("/etc/systemd/system")) == units_before
        assert {p: Path(p).read_bytes() for p in identity} == identity
    finally:
        canary.unlink(missing_ok=True)
        shutil.rmtree(shared, ignore_errors=True)


def test_new_lab_sweeps_a_crashed_run(lab_factory: Callable[..., HostLab]) -> None:
    old = lab_factory("pytest-sweep")
    h = old.start_host("s1")
    h.wait_running()
    pid, veth, cgroup, lab_cgroup = h.pid, h.veth, h.cgroup, old.cgroup
    pids = host_pids(h)
    old.detach()  # as if the test process had died: nothing cleaned up
    assert not pid_gone(pid, lab_cgroup) and Path("/sys/class/net", str(veth)).exists()

    new = HostLab(old.name, bridge=str(old.bridge), subnet=str(old.network), veth_prefix=old.veth_prefix)
    try:
        assert new.swept["killed"] >= len(pids) >= 3
        assert all(pid_gone(p, lab_cgroup) for p in pids)
        assert not cgroup.exists()
        assert not Path("/sys/class/net", str(veth)).exists()
        h2 = new.start_host("s1")  # the name, address and bridge are usable again
        h2.wait_running()
        assert h2.ip == h.ip
    finally:
        new.close()
