"""Chaos run: a real fleet cluster under a steady workload while faults strike it.

A 3-member etcd and N namespaced systemd hosts running fleetd (fleetlab.fleetcluster; needs
root). A workload thread keeps submitting, starting, stopping and destroying units through
fleetd's HTTP API: plain units, instances of a template whose instances Conflict, global
units and MachineOf pairs. Meanwhile faults are injected one at a time, chosen at random
from the seed: crash a host (and boot a replacement), SIGKILL fleetd on a host, SIGSTOP an
etcd member (sometimes the leader) for a while, restart an etcd member, partition a host
for longer than agent_ttl. After each fault the invariants are polled until they hold (the
time that took is the fault's recovery time) or a deadline passes (then each broken one is a
violation). fleetlab/chaos.py has the invariants and the faults.

    python bench/chaos.py --minutes 3 --seed 1

Prints one line per fault, then ``violations=N faults=F max_recovery_s=R``; the exit code
is 1 when there were violations (2 when the harness itself failed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fleetlab.chaos import ChaosConfig, ChaosReport, run_chaos
from fleetlab.hosts import check_supported


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_report(report: ChaosReport) -> None:
    """The figures on stdout: one line per fault, the problems, then the summary line."""
    cfg = report.config
    for fault in report.faults:
        held = f" held_s={fault.held_s:.1f}" if fault.held_s else ""
        checks = " ".join(f"{c.label.replace(' ', '_')}={c.recovery_s:.2f}" for c in fault.checks)
        state = (
            "error"
            if fault.error
            else "violation"
            if fault.problems
            else "slow"
            if fault.recovery_s > cfg.target
            else "ok"
        )
        print(
            f"fault={fault.index} kind={fault.kind} at_s={fault.at_s:.1f}{held} recovery_s={fault.recovery_s:.2f} "
            f'{state} target="{fault.target}" checks: {checks}'
        )
        for problem in fault.problems:
            print(f"  violation: {problem}")
        persisting = max((len(c.persisting) for c in fault.checks), default=0)
        if persisting:
            print(f"  ({persisting} violations reported earlier still persist)")
        if fault.error:
            print(f"  error: {fault.error}")
    for label, check in (("baseline", report.baseline), ("final", report.final)):
        if check is not None:
            for problem in check.problems:
                print(f"  violation ({label}): {problem}")
            for problem in check.persisting:
                print(f"  still broken at the {label} check: {problem}")
    for problem in report.workload_errors + report.colocations:
        print(f"  violation: {problem}")
    for error in report.errors:
        print(f"  harness error: {error}")
    slow = report.slow
    print(
        f"ops={report.ops} duration_s={report.duration_s:.0f} target_s={cfg.target:g} slow={len(slow)}"
        + (f" ({', '.join(f'{f.index}:{f.kind}' for f in slow)})" if slow else "")
    )
    print(report.summary(), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long faults keep coming")
    parser.add_argument("--seed", type=int, default=1, help="seeds the faults, their targets and the workload")
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--agent-ttl", type=float, default=10.0, help="fleetd's agent_ttl, seconds")
    parser.add_argument("--margin", type=float, default=2.0, help="recovery target: agent_ttl + this")
    parser.add_argument("--logs", default="", help="copy fleetd journals and etcd logs into this directory")
    parser.add_argument("--verbose", action="store_true", help="dump fleetd's journals when something broke")
    args = parser.parse_args()
    reason = check_supported()
    if reason:
        _stderr(f"cannot run: {reason}")
        return 2
    config = ChaosConfig(
        minutes=args.minutes,
        seed=args.seed,
        hosts=args.hosts,
        agent_ttl=args.agent_ttl,
        recovery_margin=args.margin,
        lab_prefix="benchchaos",
        log_dir=args.logs,
        log=_stderr,
    )
    started = time.monotonic()
    report = run_chaos(config, verbose=args.verbose)
    print_report(report)
    _stderr(f"chaos run took {time.monotonic() - started:.0f} s")
    if report.errors:
        return 2
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
