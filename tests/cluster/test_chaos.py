"""A short chaos run in CI: every fault kind once, under a workload, with no violation.

The long runs are ``bench/chaos.py``; this one (one minute of faults on a 5-host cluster
with a 3-member etcd) keeps the same machinery from rotting and catches a regression in
failover, adoption or etcd fail-over as soon as it lands. agent_ttl is short (4 s) so
that crash and partition failovers, which take an agent_ttl by design, stay quick.
``FLEET_CHAOS_SEED`` replays another draw of faults and workload.

The checker itself (:func:`fleetlab.chaos.evaluate`, pure) is tested first on made-up
observations: a checker that misses a duplicate would make the chaos run worthless.
"""

from __future__ import annotations

import os
import time

import pytest

from fleetlab.chaos import (
    FAULT_KINDS,
    ChaosConfig,
    ChaosReport,
    Expected,
    FleetView,
    HostView,
    Kind,
    evaluate,
    run_chaos,
)

TTL = 4.0
MARGIN = 2.0  # the recovery target: agent_ttl + 2 s after every fault

IDS = {"h1": "1" * 32, "h2": "2" * 32, "h3": "3" * 32}
MODEL = {
    "chaos-c@.service": Expected(Kind.TEMPLATE, "inactive"),
    "chaos-c@1.service": Expected(Kind.INSTANCE, "launched"),
    "chaos-c@2.service": Expected(Kind.INSTANCE, "launched"),
    "chaos-g.service": Expected(Kind.GLOBAL, "launched"),
    "chaos-l1.service": Expected(Kind.LEADER, "launched"),
    "chaos-f1.service": Expected(Kind.FOLLOWER, "launched", leader="chaos-l1.service"),
    "chaos-s1.service": Expected(Kind.PLAIN, "loaded"),
}
WHERE = {"chaos-c@1.service": "h1", "chaos-c@2.service": "h2", "chaos-l1.service": "h3", "chaos-f1.service": "h3"}


def healthy() -> tuple[list[HostView], FleetView]:
    """Observations of a cluster where every invariant holds."""
    views = [HostView(name, mid, machines=sorted(IDS.values())) for name, mid in IDS.items()]
    for view in views:
        view.running = {u for u, h in WHERE.items() if h == view.name} | {"chaos-g.service"}
        view.files = set(view.running)
    views[0].files.add("chaos-s1.service")
    states = [{"name": u, "machineID": IDS[h], "systemdActiveState": "active"} for u, h in WHERE.items()]
    states += [{"name": "chaos-g.service", "machineID": m, "systemdActiveState": "active"} for m in IDS.values()]
    return views, FleetView({n: e.desired for n, e in MODEL.items()}, states)


def test_the_checker_passes_a_healthy_cluster() -> None:
    views, fleet = healthy()
    assert evaluate(MODEL, views, fleet) == []


def test_the_checker_sees_duplicates_losses_leftovers_and_broken_rules() -> None:
    views, fleet = healthy()
    h1, h2, h3 = views
    h2.running.add("chaos-c@1.service")  # duplicate, and two instances on h2
    h3.running.discard("chaos-f1.service")  # follower not running...
    h3.files.discard("chaos-f1.service")
    h1.running.add("chaos-f1.service")  # ...but on another machine than its leader
    h1.files.add("chaos-f1.service")
    h2.running.add("chaos-s9.service")  # destroyed, still running
    h3.running.discard("chaos-g.service")  # global unit missing on h3
    problems = "\n".join(evaluate(MODEL, views, fleet))
    assert "duplicate: chaos-c@1.service runs on ['h1', 'h2']" in problems
    assert "Conflicts broken: ['chaos-c@1.service', 'chaos-c@2.service'] run together on h2" in problems
    assert "MachineOf broken: chaos-f1.service is on ['h1'], its leader chaos-l1.service on ['h3']" in problems
    assert "leftover: chaos-s9.service (destroyed) still runs on h2" in problems
    assert "global chaos-g.service runs on ['h1', 'h2']" in problems


def test_the_checker_sees_fleet_losing_track() -> None:
    views, fleet = healthy()
    views[1].machines = [IDS["h1"], IDS["h3"]]  # h2's registration is gone
    views[2].fleetd = "API answers HTTP 503: not registered"
    del fleet.units["chaos-s1.service"]
    problems = "\n".join(evaluate(MODEL, views, fleet))
    assert "not registered: h2 is live but not in the machine list (as seen from ['h2'])" in problems
    assert "fleetd on h3: API answers HTTP 503" in problems
    assert "lost: fleet no longer lists chaos-s1.service (loaded)" in problems


def describe(report: ChaosReport) -> str:
    lines = [report.summary()]
    for fault in report.faults:
        checks = ", ".join(f"{c.label} {c.recovery_s:.2f}s" for c in fault.checks)
        lines.append(f"  {fault.index} {fault.kind} {fault.target}: {checks} {fault.error}")
        lines += [f"    {p}" for p in fault.problems]
    for check in (report.baseline, report.final):
        if check is not None:
            lines += [f"  {check.label}: {p}" for p in check.problems]
    lines += [f"  {p}" for p in report.workload_errors + report.colocations + report.errors]
    return "\n".join(lines)


@pytest.mark.cluster
def test_short_chaos_run_keeps_every_invariant(hosts_supported: None) -> None:
    started = time.monotonic()
    messages: list[str] = []
    config = ChaosConfig(
        minutes=1.0,
        min_faults=len(FAULT_KINDS),  # every kind once (the first ones are a seeded permutation)
        seed=int(os.environ.get("FLEET_CHAOS_SEED", "1")),
        agent_ttl=TTL,
        recovery_margin=MARGIN,
        quiet=(2.0, 4.0),
        check_timeout=20.0,  # the target is 6 s: 20 s without recovery is a violation
        hard_stop_s=110.0,  # a broken cluster must not stretch CI: no fault starts later
        lab_prefix="pytest-chaos",
        log=messages.append,
    )
    report = run_chaos(config)
    took = time.monotonic() - started
    print(f"\nchaos seed {config.seed}: {describe(report)}\nwhole run {took:.0f} s")
    assert not report.errors, describe(report) + "\n" + "\n".join(messages)
    assert {f.kind for f in report.faults} == set(FAULT_KINDS), "every fault kind must have been injected"
    assert report.violations == 0, describe(report) + "\n" + "\n".join(messages[-40:])
    assert report.max_recovery_s <= TTL + MARGIN, describe(report)
