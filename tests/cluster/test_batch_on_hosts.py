"""fleetctl on real hosts writes many units in one batch request and waits by long-poll.

The real CLI as a subprocess against a real cluster (etcd plus three namespaced systemd
hosts running fleetd, fixtures as in test_fleetctl_e2e.py), with ``--debug`` so that
every request fleetctl sends is printed (``DEBUG: <method> <url> -> <status>``): the
test checks what fleetctl asked of the API as well as what the hosts' systemd runs.
"""

from __future__ import annotations

import re

import pytest
from test_fleetctl_e2e import TEMPLATE, Fleetctl, active_hosts, instances, loaded_hosts
from test_fleetctl_e2e import fleetctl as e2e_fleetctl  # noqa: F401 - a fixture, used by `ctl`

from fleetlab.fleetcluster import FleetCluster
from fleetlab.wait import wait_until

pytestmark = pytest.mark.cluster

TTL = 3.0  # agent_ttl of the module's cluster (fixture `cluster` in conftest.py)
LAB_PREFIX = "fbatch"
COUNT = 50
REQUEST = re.compile(r"^DEBUG: (GET|PUT|POST|DELETE|PATCH) \S+?(/fleet/v1/[^ ?]*)(\?\S*)? -> (\d+)", re.M)


@pytest.fixture
def ctl(e2e_fleetctl: Fleetctl) -> Fleetctl:  # noqa: F811 - the fixture of that name
    """fleetctl in a fresh directory against the first host; its units destroyed after."""
    return e2e_fleetctl


def requests(stderr: str) -> list[tuple[str, str, str, str]]:
    """(method, path, query, status) of every API request fleetctl printed with --debug."""
    return [(m, p, q.lstrip("?"), s) for m, p, q, s in REQUEST.findall(stderr)]


def test_start_of_fifty_instances_is_one_batch_and_all_run(cluster: FleetCluster, ctl: Fleetctl) -> None:
    ctl.write("hello@.service", TEMPLATE)
    names = instances(COUNT)
    started = ctl.ok("--debug", "start", *names, timeout=120)
    sent = requests(started.err)
    writes = [(m, p, s) for m, p, _, s in sent if m != "GET"]
    assert writes == [("POST", "/fleet/v1/units:batch", "200")], started.err[-3000:]
    # fleetctl waited with long-polls of the states, and listed the units only a few times
    assert any(p == "/fleet/v1/state" and "wait=true" in q for _, p, q, _ in sent), started.err[-3000:]
    assert sum(1 for m, p, _, _ in sent if (m, p) == ("GET", "/fleet/v1/units")) <= 3
    launched = re.findall(r"^Unit (\S+) launched on \S+$", started.out, re.M)
    assert sorted(launched) == sorted(names), str(started)
    # every instance runs, in exactly one host's systemd
    wait_until(
        lambda: all(len(where) == 1 for where in active_hosts(cluster, names).values()),
        30,
        f"all {COUNT} instances active, each on one host",
    )
    destroyed = ctl.ok("--debug", "destroy", *names, timeout=120)
    writes = [(m, p, s) for m, p, _, s in requests(destroyed.err) if m != "GET"]
    assert writes == [("POST", "/fleet/v1/units:batch", "200")], destroyed.err[-3000:]
    assert sorted(destroyed.out.splitlines()) == sorted(f"Destroyed {n}" for n in names)
    wait_until(lambda: not any(loaded_hosts(cluster, names).values()), 30, "the instances gone from every host")
