"""Names, limits, errors and the admin-command runner shared by every part of the host lab.

It imports no other lab module, so the cgroup, network, state, host and lab modules can
all build on it without cycles. Only the standard library is used, so the lab works
before the project's dependencies are installed.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

STATE_ROOT = Path("/run/fleet-testhosts")
DEFAULT_LAB = "default"
DEFAULT_BRIDGE = "flbr0"
DEFAULT_SUBNET = "10.231.0.0/24"
CGROUP_DIR = "fleet-testhosts"
SYSTEMD = "/lib/systemd/systemd"
#: the in-namespace init; found next to this file, so a source checkout works uninstalled
INIT_SCRIPT = Path(__file__).with_name("host_init.sh")
#: Directories that are private (empty tmpfs) inside a host; code under test living there
#: must be bind-mounted in (see :func:`fleetlab.hosts.default_binds`).
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/var/log", "/var/lib/systemd")
#: SIGRTMIN+4 asks systemd for poweroff.target (what ``machinectl poweroff`` sends).
POWEROFF_SIGNAL = signal.SIGRTMIN + 4
IFNAMSIZ = 15  # usable characters of a Linux interface name
#: a fixed PATH for admin commands, so the caller's environment cannot change what runs
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
CMD_TIMEOUT = 30.0


class HostError(RuntimeError):
    """A host or lab operation failed (boot, network setup, cleanup)."""


class LabBusyError(HostError):
    """The lab (or its bridge) is in use by another live lab or by something else."""


def sh(
    argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a short administrative command (ip, nsenter ...) in the real namespaces."""
    r = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, env={"PATH": PATH_ENV, "LC_ALL": "C"}
    )
    if check and r.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def check_lab_name(name: str) -> None:
    """Refuse a lab name that could escape the state root or the cgroup dir."""
    if not LAB_RE.match(name):
        raise ValueError(f"bad lab name {name!r} (letters, digits, '_.-', max 64)")
