"""The lab's network: one Linux bridge per lab and a veth pair per host.

Each host's own network namespace is joined to the lab bridge by a veth pair: the outer
end (``<veth_prefix><host>``) is a port of the bridge, the inner end is the host's
``eth0``. Hosts have no default route, so nothing they send leaves this machine. Taking
the outer end down partitions a host. The callers decide which interfaces are theirs to
delete (those they created); these functions only do what they are told.
"""

from __future__ import annotations

import ipaddress
import os

from fleetlab.hostcommon import HostError, LabBusyError, sh
from fleetlab.wait import wait_until


def exists(name: str) -> bool:
    """True while an interface of that name exists in the real network namespace."""
    return os.path.exists(f"/sys/class/net/{name}")


def master(name: str) -> str | None:
    """The bridge an interface is a port of, or None."""
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
    except OSError:
        return None


def bridge_ports(bridge: str) -> list[str]:
    """The interfaces enslaved to a bridge."""
    return os.listdir(f"/sys/class/net/{bridge}/brif")


def delete(name: str, timeout: float = 5.0) -> None:
    """Delete an interface and wait until it is gone (netns teardown races with us)."""

    def gone() -> bool:
        if not exists(name):
            return True
        sh(["ip", "link", "del", name], check=False)
        return not exists(name)

    wait_until(
        gone,
        timeout,
        f"interface {name} to be deleted",
        0.01,
        on_timeout=lambda: HostError(f"cannot delete interface {name}"),
    )


def add_bridge(name: str) -> None:
    """Create a bridge; LabBusyError when it exists already (another lab won a race)."""
    r = sh(["ip", "link", "add", name, "type", "bridge", "forward_delay", "0"], check=False)
    if r.returncode != 0:
        if "File exists" in r.stderr:
            raise LabBusyError(f"bridge {name} was just created by someone else")
        raise HostError(f"cannot create bridge {name}: {r.stderr.strip()}")


def configure_bridge(name: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network, address: str) -> None:
    """Give a new bridge a stable MAC and the lab's gateway address, and bring it up."""
    # A bridge takes the lowest MAC of its ports unless given one: when a host with the
    # lowest MAC crashes, the bridge's MAC changes and every other host's ARP entry for
    # the bridge IP goes stale for seconds (their etcd connections time out). A fixed,
    # locally administered MAC derived from the subnet keeps it stable.
    octets = network.network_address.packed
    mac = f"02:f1:ee:{octets[1]:02x}:{octets[2]:02x}:{octets[3]:02x}"
    sh(
        ["ip", "-batch", "-"],
        input=(
            f"link set {name} address {mac}\naddr add {address}/{network.prefixlen} dev {name}\nlink set {name} up\n"
        ),
    )


def add_veth(veth: str, pid: int, bridge: str, address: str, prefixlen: int) -> None:
    """veth pair: ``veth`` on ``bridge``, the peer created as eth0 in ``pid``'s netns."""
    sh(
        ["ip", "-batch", "-"],
        input=(f"link add {veth} type veth peer name eth0 netns {pid}\nlink set {veth} master {bridge} up\n"),
    )
    sh(
        ["nsenter", "-t", str(pid), "-n", "ip", "-batch", "-"],
        input=(f"addr add {address}/{prefixlen} dev eth0\nlink set eth0 up\nlink set lo up\n"),
    )


def set_up(name: str, up: bool) -> None:
    """Bring an interface up or take it down (a host's partition and heal)."""
    sh(["ip", "link", "set", name, "up" if up else "down"])
