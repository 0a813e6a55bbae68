"""The engine's placement decisions (fleetd.scheduler): given this cluster, expect exactly these tasks.

Units are built from real unit text with the model's parser (``build_unit``), so ``%i``
expansion, repeated options and aliases behave exactly as they will in the cluster.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from fleetd.model.requirements import Requirements
from fleetd.model.unit import DesiredState, build_unit, instance_from_template
from fleetd.model.unitfile import parse_unit_file
from fleetd.scheduler import (
    JobInfo,
    MachineInfo,
    Place,
    Snapshot,
    Task,
    Unplace,
    global_machines,
    global_placements,
    global_unplaceable_reason,
    plan,
    resolve_machine_id,
)
from fleetd.scheduler.filters import FILTERS, Context, first_rejection
from fleetd.scheduler.global_units import run_globals, scheduled_context
from fleetd.scheduler.occupancy import GlobIndex
from fleetd.scheduler.ordering import machine_of_order
from fleetd.scheduler.ranking import Ranking
from fleetd.scheduler.reasons import counted, name_list
from fleetd.scheduler.replace_cycles import replace_cycles

INACTIVE, LOADED, LAUNCHED = DesiredState.INACTIVE, DesiredState.LOADED, DesiredState.LAUNCHED

A = "aaaaaaaa" + "0" * 24
B = "bbbbbbbb" + "0" * 24
C = "cccccccc" + "0" * 24
D = "dddddddd" + "0" * 24

BOOT = "6a0e2a4c-8f1b-4a7e-9d3c-2b5f1e0c7a91"  # a real boot id: no machine has it as its ID
NO_BOOT = f"X-ConditionMachineBootID={BOOT}: no machine with ID {BOOT}"

LL0 = "least loaded eligible machine (0 units)"
LL1 = "least loaded eligible machine (1 unit)"
LL2 = "least loaded eligible machine (2 units)"


def unit(name: str, xfleet: str = "", desired: DesiredState = LAUNCHED) -> JobInfo:
    """A unit as the cluster would know it, parsed from text by the real model."""
    text = f"[Unit]\nDescription={name}\n\n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}\n"
    built, warnings = build_unit(name, text)
    assert warnings == []
    return JobInfo(name, built.requirements, desired)


def instance(name: str, template_text: str, desired: DesiredState = LAUNCHED) -> JobInfo:
    """An instance of a template: the template's body, requirements parsed with its own
    name (so ``%i`` expands), as the API builds it."""
    body = instance_from_template(name, parse_unit_file(template_text))
    built, _ = build_unit(name, body)
    return JobInfo(name, built.requirements, desired)


def snapshot(
    machines: dict[str, dict[str, str]] | list[str],
    units: list[JobInfo],
    placements: dict[str, str] | None = None,
) -> Snapshot:
    if isinstance(machines, list):
        machines = {m: {} for m in machines}
    return Snapshot(
        {m: MachineInfo(m, md) for m, md in machines.items()},
        {j.name: j for j in units},
        dict(placements or {}),
    )


# -- the table -----------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    machines: dict[str, dict[str, str]] | list[str]
    units: list[JobInfo]
    placements: dict[str, str]
    tasks: list[Task]
    unplaceable: dict[str, str] = field(default_factory=dict)


WEB_TEMPLATE = "[Service]\nExecStart=/bin/web\n[X-Fleet]\nMachineMetadata=disk=ssd\nConflicts=web@*.service\n"
SHARD_TEMPLATE = "[Service]\nExecStart=/bin/shard\n[X-Fleet]\nMachineMetadata=shard=%i\n"
LEFT_A = "machine aaaaaaaa left the cluster"
LEFT_B = "machine bbbbbbbb left the cluster"

CASES = [
    # --- MachineOf -------------------------------------------------------------------------
    Case(
        "machineof-colocates-target-first",
        [A, B, C],
        [unit("a-web.service", "MachineOf=z-db.service"), unit("z-db.service")],
        {},
        [
            Place("z-db.service", A, LL0),
            Place("a-web.service", A, "MachineOf target z-db.service is there"),
        ],
    ),
    Case(
        "machineof-moves-with-target-when-its-machine-leaves",
        [B, C],
        [unit("db.service"), unit("web.service", "MachineOf=db.service"), unit("x.service")],
        {"db.service": A, "web.service": A, "x.service": B},
        [
            Unplace("db.service", A, LEFT_A),
            Unplace("web.service", A, LEFT_A),
            Place("db.service", C, LL0),
            Place("web.service", C, "MachineOf target db.service is there"),
        ],
    ),
    Case(
        "machineof-follows-target-moved-by-metadata",
        {A: {"region": "us"}, B: {"region": "eu"}},
        [unit("db.service", "MachineMetadata=region=eu"), unit("web.service", "MachineOf=db.service")],
        {"db.service": A, "web.service": A},
        [
            Unplace("db.service", A, "metadata region=eu not present"),
            Unplace("web.service", A, "MachineOf target db.service moved to bbbbbbbb"),
            Place("db.service", B, LL0),
            Place("web.service", B, "MachineOf target db.service is there"),
        ],
    ),
    Case(
        "misplaced-follower-joins-its-target",
        [A, B],
        [unit("db.service"), unit("web.service", "MachineOf=db.service")],
        {"db.service": A, "web.service": B},
        [
            Unplace("web.service", B, "MachineOf target db.service is on aaaaaaaa"),
            Place("web.service", A, "MachineOf target db.service is there"),
        ],
    ),
    Case(
        "machineof-target-missing-inactive-or-unplaceable",
        {A: {"region": "us"}},
        [
            unit("web.service", "MachineOf=nope.service"),
            unit("api.service", "MachineOf=db.service"),
            unit("db.service", desired=INACTIVE),
            unit("cache.service", "MachineOf=eu.service"),
            unit("eu.service", "MachineMetadata=region=eu"),
        ],
        {},
        [],
        {
            "web.service": "MachineOf target nope.service does not exist",
            "api.service": "MachineOf target db.service is not scheduled",
            "eu.service": "no machine has metadata region=eu (1 machine: region=us)",
            "cache.service": "MachineOf target eu.service is not scheduled",
        },
    ),
    Case(
        "machineof-cycle-is-unplaceable-with-the-cycle-named",
        [A],
        [
            unit("a.service", "MachineOf=b.service"),
            unit("b.service", "MachineOf=a.service"),
            unit("c.service", "MachineOf=a.service"),
            unit("d.service"),
        ],
        {"b.service": A},
        [Unplace("b.service", A, "MachineOf cycle: a.service -> b.service -> a.service"), Place("d.service", A, LL0)],
        {
            "a.service": "MachineOf cycle: a.service -> b.service -> a.service",
            "b.service": "MachineOf cycle: a.service -> b.service -> a.service",
            "c.service": "MachineOf target a.service is on a MachineOf cycle: a.service -> b.service -> a.service",
        },
    ),
    Case(
        "machineof-to-a-global-unit",
        [A],
        [unit("g.service", "Global=true"), unit("f.service", "MachineOf=g.service")],
        {},
        [],
        {"f.service": "MachineOf target g.service is a global unit"},
    ),
    # --- Conflicts ---------------------------------------------------------------------------
    Case(
        "five-mutually-conflicting-units-on-three-machines",
        [A, B, C],
        [unit(f"app{i}.service", "Conflicts=app*") for i in range(1, 6)],
        {},
        [Place("app1.service", A, LL0), Place("app2.service", B, LL0), Place("app3.service", C, LL0)],
        {
            "app4.service": "conflicts with app1.service, app2.service or app3.service on every eligible machine",
            "app5.service": "conflicts with app1.service, app2.service or app3.service on every eligible machine",
        },
    ),
    Case(
        "one-way-conflict-enforced-for-the-unit-without-the-rule",
        [A, B],
        [unit("a.service", "Conflicts=b.service"), unit("b.service"), unit("x.service")],
        {"a.service": A, "x.service": B},
        [Place("b.service", B, LL1)],  # A and B tie on load; A would win but a.service is there
    ),
    Case(
        "one-way-conflict-enforced-for-the-unit-with-the-rule",
        [A, B],
        [unit("a.service", "Conflicts=b.service"), unit("b.service"), unit("x.service")],
        {"b.service": A, "x.service": B},
        [Place("a.service", B, LL1)],
    ),
    Case(
        "one-way-conflict-on-a-single-machine",
        [A],
        [unit("a.service", "Conflicts=b.service"), unit("b.service")],
        {"b.service": A},
        [],
        {"a.service": "conflicts with b.service on every eligible machine"},
    ),
    Case(
        "repeated-conflicts-lines-all-count",
        [A, B, C],
        [
            unit("x.service"),
            unit("y.service"),
            unit("w.service"),
            unit("z.service", "Conflicts=x.service\nConflicts=y.service"),
        ],
        {"x.service": A, "y.service": B, "w.service": C},
        [Place("z.service", C, LL1)],
    ),
    Case(
        "space-separated-conflicts-and-the-deprecated-alias",
        [A, B, C],
        [
            unit("x.service"),
            unit("y.service"),
            unit("w.service"),
            unit("z.service", "X-Conflicts=x.service y.service"),
        ],
        {"x.service": A, "y.service": B, "w.service": C},
        [Place("z.service", C, LL1)],
    ),
    Case(
        "conflict-between-placed-units-keeps-the-smaller-name",
        [A, B],
        [unit("a.service", "Conflicts=b.service"), unit("b.service")],
        {"a.service": A, "b.service": A},
        [Unplace("b.service", A, "conflicts with a.service"), Place("b.service", B, LL0)],
    ),
    Case(
        "never-next-to-a-conflicting-global-unit",
        {A: {"region": "us"}, B: {"region": "eu"}},
        [unit("g.service", "Global=true\nMachineMetadata=region=us"), unit("u.service", "Conflicts=g.service")],
        {},
        [Place("u.service", B, LL0)],
    ),
    Case(
        "global-units-conflicts-apply-to-engine-units-too",
        [A, B],
        [unit("g.service", "Global=true\nConflicts=u.service"), unit("u.service")],
        {},
        [],
        {"u.service": "conflicts with g.service on every eligible machine"},
    ),
    # --- Replaces ----------------------------------------------------------------------------
    Case(
        "replaces-takes-the-machine-and-moves-the-old-unit",
        [A, B],
        [unit("old.service"), unit("new.service", "Replaces=old.service")],
        {"old.service": A},
        [
            Unplace("old.service", A, "replaced by new.service"),
            Place("new.service", A, "replaces old.service there"),
            Place("old.service", B, LL0),
        ],
    ),
    Case(
        "replaced-unit-with-nowhere-to-go",
        [A],
        [unit("old.service"), unit("new.service", "Replaces=old*.service")],
        {"old.service": A},
        [Unplace("old.service", A, "replaced by new.service"), Place("new.service", A, "replaces old.service there")],
        {"old.service": "replaced by new.service on every eligible machine"},
    ),
    Case(
        "replaces-nothing-running-is-plain-least-loaded",
        [A, B],
        [unit("x.service"), unit("new.service", "Replaces=old.service")],
        {"x.service": A},
        [Place("new.service", B, LL0)],
    ),
    Case(
        "replaced-unit-takes-its-followers-along",
        [A, B],
        [
            unit("old.service"),
            unit("side.service", "MachineOf=old.service"),
            unit("new.service", "Replaces=old.service"),
        ],
        {"old.service": A, "side.service": A},
        [
            Unplace("old.service", A, "replaced by new.service"),
            Unplace("side.service", A, "MachineOf target old.service moved to bbbbbbbb"),
            Place("new.service", A, "replaces old.service there"),
            Place("old.service", B, LL0),
            Place("side.service", B, "MachineOf target old.service is there"),
        ],
    ),
    Case(
        "replaces-cycle-neither-placed-first-name-runs",
        [A, B],
        [unit("a.service", "Replaces=b.service"), unit("b.service", "Replaces=a.service")],
        {},
        [Place("a.service", A, LL0)],
        {
            "b.service": "Replaces cycle: b.service -> a.service -> b.service; "
            "only one may run and a.service was chosen (first by name)"
        },
    ),
    Case(
        "replaces-cycle-the-placed-one-stays",
        [A, B],
        [unit("a.service", "Replaces=b*.service"), unit("b.service", "Replaces=a.service")],
        {"b.service": B},
        [],
        {
            "a.service": "Replaces cycle: a.service -> b.service -> a.service; "
            "only one may run and b.service was chosen (already placed)"
        },
    ),
    Case(
        "replaces-cycle-both-placed-first-name-stays-and-followers-wait",
        [A, B],
        [
            unit("a.service", "Replaces=b.service"),
            unit("b.service", "Replaces=a.service"),
            unit("side.service", "MachineOf=b.service"),
        ],
        {"a.service": A, "b.service": B},
        [
            Unplace(
                "b.service",
                B,
                "Replaces cycle: b.service -> a.service -> b.service; "
                "only one may run and a.service was chosen (first by name)",
            )
        ],
        {
            "b.service": "Replaces cycle: b.service -> a.service -> b.service; "
            "only one may run and a.service was chosen (first by name)",
            "side.service": "MachineOf target b.service is on a Replaces cycle: b.service -> a.service -> "
            "b.service; only one may run and a.service was chosen (first by name)",
        },
    ),
    Case(
        "replaces-one-way-is-not-a-cycle",
        [A, B],
        [unit("a.service", "Replaces=b.service"), unit("b.service", "Replaces=c.service")],
        {"b.service": A},
        [
            Unplace("b.service", A, "replaced by a.service"),
            Place("a.service", A, "replaces b.service there"),
            Place("b.service", B, LL0),
        ],
    ),
    # --- X-ConditionMachineBootID: a machine ID, as fleet's RequiredTarget read it ----------
    Case(
        "boot-id-is-read-as-a-machine-id",
        [A, B, C],
        [
            unit("boot.service", f"X-ConditionMachineBootID={B}"),
            unit("moved.service", "X-ConditionMachineBootID=cccccccc"),
        ],
        {"moved.service": A},
        [
            Unplace("moved.service", A, "X-ConditionMachineBootID=cccccccc selects machine cccccccc"),
            Place("boot.service", B, f"X-ConditionMachineBootID={B}"),
            Place("moved.service", C, "X-ConditionMachineBootID=cccccccc"),
        ],
    ),
    Case(
        "boot-id-of-no-machine-keeps-the-unit-off",
        [A, B],
        [unit("boot.service", f"X-ConditionMachineBootID={BOOT}")],
        {"boot.service": A},
        [
            Unplace(
                "boot.service",
                A,
                NO_BOOT,
            )
        ],
        {"boot.service": NO_BOOT},
    ),
    Case(
        "machine-id-wins-over-boot-id-and-boot-id-keeps-other-rules",
        [A, B],
        [
            unit("both.service", f"MachineID={A}\nX-ConditionMachineBootID={B}"),
            unit("side.service", f"MachineOf=both.service\nX-ConditionMachineBootID={B}"),
        ],
        {},
        [Place("both.service", A, f"MachineID={A}")],
        {
            "side.service": "X-ConditionMachineBootID=" + B + " selects machine bbbbbbbb: "
            "MachineOf target both.service is on aaaaaaaa"
        },
    ),
    # --- MachineID ---------------------------------------------------------------------------
    Case(
        "machineid-full-id-and-prefix",
        [A, B, C],
        [unit("full.service", f"MachineID={B}"), unit("prefix.service", "MachineID=CCCCCCCC")],
        {},
        [Place("full.service", B, f"MachineID={B}"), Place("prefix.service", C, "MachineID=cccccccc")],
    ),
    Case(
        "machineid-missing-machine",
        [A, B],
        [unit("p.service", "MachineID=12345678")],
        {},
        [],
        {"p.service": "no machine with ID 12345678"},
    ),
    Case(
        "machineid-ambiguous-prefix",
        ["abcd0000" + "0" * 24, "abcd1111" + "0" * 24],
        [unit("p.service", "MachineID=abcd")],
        {},
        [],
        {"p.service": f"MachineID=abcd is ambiguous: it matches 2 machines (abcd0000{'0' * 24}, abcd1111{'0' * 24})"},
    ),
    Case(
        "machineid-pinned-machine-left",
        [A],
        [unit("p.service", "MachineID=bbbbbbbb")],
        {"p.service": B},
        [Unplace("p.service", B, LEFT_B)],
        {"p.service": "no machine with ID bbbbbbbb"},
    ),
    Case(
        "machineid-pinned-machine-refuses",
        [A, B],
        [unit("p.service", "MachineID=bbbbbbbb"), unit("x.service", "Conflicts=p.service")],
        {"x.service": B},
        [],
        {"p.service": "MachineID=bbbbbbbb selects machine bbbbbbbb: conflicts with x.service"},
    ),
    # --- metadata ----------------------------------------------------------------------------
    Case(
        "metadata-with-template-instances",
        {A: {"shard": "1"}, B: {"shard": "2"}, C: {"shard": "2"}},
        [instance(f"db@{i}.service", SHARD_TEMPLATE) for i in (1, 2, 3)],
        {},
        [Place("db@1.service", A, LL0), Place("db@2.service", B, LL0)],
        {"db@3.service": "no machine has metadata shard=3 (2 machines: shard=2; 1 machine: shard=1)"},
    ),
    Case(
        "metadata-or-within-a-key-and-across-keys",
        {A: {"region": "us", "disk": "hdd"}, B: {"region": "eu", "disk": "ssd"}, C: {"region": "ap", "disk": "ssd"}},
        [unit("u.service", 'MachineMetadata="region=us" "region=ap"\nMachineMetadata=disk=ssd')],
        {},
        [Place("u.service", C, LL0)],
    ),
    Case(
        "metadata-change-moves-the-unit",
        {A: {"region": "us"}, B: {"region": "eu"}},
        [unit("u.service", "MachineMetadata=region=eu")],
        {"u.service": A},
        [Unplace("u.service", A, "metadata region=eu not present"), Place("u.service", B, LL0)],
    ),
    # --- load, churn, machine loss -----------------------------------------------------------
    Case(
        "least-loaded-with-ties-broken-by-machine-id",
        [C, B, A],
        [
            unit(n)
            for n in ("p1.service", "p2.service", "q.service", "r.service", "n1.service", "n2.service", "n3.service")
        ],
        {"p1.service": A, "p2.service": A, "q.service": B, "r.service": C},
        [Place("n1.service", B, LL1), Place("n2.service", C, LL1), Place("n3.service", A, LL2)],
    ),
    Case(
        "no-churn-when-a-machine-joins",
        [A, B, C, D],
        [unit("a.service"), unit("b.service"), unit("c.service", "Conflicts=a.service")],
        {"a.service": A, "b.service": A, "c.service": B},
        [],
    ),
    Case(
        "machine-loss-moves-only-its-units",
        [A, C],
        [unit(n) for n in ("a1.service", "a2.service", "b1.service", "b2.service", "c1.service")],
        {"a1.service": A, "a2.service": A, "b1.service": B, "b2.service": B, "c1.service": C},
        [
            Unplace("b1.service", B, LEFT_B),
            Unplace("b2.service", B, LEFT_B),
            Place("b1.service", C, LL1),
            Place("b2.service", A, LL2),
        ],
    ),
    Case(
        "inactive-destroyed-and-now-global-units-are-taken-off",
        [A],
        [unit("x.service", desired=INACTIVE), unit("g.service", "Global=yes"), unit("l.service", desired=LOADED)],
        {"x.service": A, "y.service": A, "g.service": A, "l.service": A},
        [
            Unplace("g.service", A, "unit is global: every matching machine runs it"),
            Unplace("x.service", A, "desired state is inactive"),
            Unplace("y.service", A, "unit no longer exists"),
        ],
    ),
    # --- reasons -----------------------------------------------------------------------------
    Case(
        "mixed-rejections-are-counted-per-reason",
        {A: {"disk": "ssd"}, B: {"disk": "ssd"}, C: {"disk": "hdd"}},
        [instance(f"web@{i}.service", WEB_TEMPLATE) for i in (1, 2, 3)],
        {"web@1.service": A, "web@2.service": B},
        [],
        {
            "web@3.service": (
                "2 machines: conflicts with web@1.service or web@2.service; 1 machine: metadata disk=ssd not present"
            )
        },
    ),
    Case(
        "no-machines-at-all",
        [],
        [unit("u.service"), unit("p.service", "MachineID=abc"), unit("g.service", "Global=true")],
        {},
        [],
        {
            "u.service": "no machines in the cluster",
            "p.service": "no machines in the cluster",
            "g.service": "no machines in the cluster",
        },
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    result = plan(snapshot(case.machines, case.units, case.placements))
    assert result.tasks == case.tasks
    assert result.unplaceable == case.unplaceable


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_is_stable_once_applied(case: Case) -> None:
    """Applying a plan and planning again changes nothing: no flapping, no rebalancing."""
    first = plan(snapshot(case.machines, case.units, case.placements))
    again = plan(snapshot(case.machines, case.units, first.placements))
    assert again.tasks == []
    assert again.unplaceable.keys() == first.unplaceable.keys()


def test_plan_placements_are_the_tasks_applied() -> None:
    snap = snapshot(
        [A, C], [unit("a.service"), unit("b.service"), unit("new.service")], {"a.service": A, "b.service": B}
    )
    result = plan(snap)
    applied = dict(snap.placements)
    for task in result.tasks:
        if isinstance(task, Unplace):
            assert applied.pop(task.unit) == task.machine
        else:
            applied[task.unit] = task.machine
    assert applied == result.placements


# -- global units ----------------------------------------------------------------------------


def test_global_runs_on_every_machine() -> None:
    g = unit("g.service", "Global=true")
    snap = snapshot([A, B, C], [g])
    assert global_machines(g, snap) == [A, B, C]
    assert global_unplaceable_reason(g, snap) is None
    result = plan(snap)
    assert result.tasks == [] and result.global_machines == {"g.service": (A, B, C)}


def test_global_with_metadata() -> None:
    g = unit("g.service", "Global=true\nMachineMetadata=role=edge")
    snap = snapshot({A: {"role": "edge"}, B: {"role": "db"}, C: {"role": "edge"}}, [g])
    assert global_machines(g, snap) == [A, C]
    nowhere = unit("n.service", "Global=true\nMachineMetadata=role=gpu")
    snap = snapshot({A: {"role": "edge"}, B: {"role": "db"}, C: {"role": "edge"}}, [g, nowhere])
    assert global_machines(nowhere, snap) == []
    reason = "no machine has metadata role=gpu (2 machines: role=edge; 1 machine: role=db)"
    assert global_unplaceable_reason(nowhere, snap) == reason
    assert plan(snap).unplaceable == {"n.service": reason}


def test_global_yields_to_a_scheduled_unit_it_conflicts_with() -> None:
    g = unit("g.service", "Global=true\nConflicts=x.service")
    snap = snapshot([A, B, C], [g, unit("x.service")], {"x.service": B})
    assert global_machines(g, snap) == [A, C]
    assert plan(snap).global_machines == {"g.service": (A, C)}


def test_conflicting_globals_smaller_name_wins() -> None:
    g1 = unit("g1.service", "Global=true\nConflicts=g2.service")
    g2 = unit("g2.service", "Global=true")
    snap = snapshot([A, B], [g2, g1])
    assert global_machines(g1, snap) == [A, B]
    assert global_machines(g2, snap) == []
    assert global_unplaceable_reason(g2, snap) == "conflicts with g1.service on every eligible machine"
    assert global_placements(snap) == {"g1.service": (A, B), "g2.service": ()}
    # Where the winner does not run, the other one does.
    g1_us = unit("g1.service", "Global=true\nConflicts=g2.service\nMachineMetadata=region=us")
    snap = snapshot({A: {"region": "us"}, B: {"region": "eu"}}, [g2, g1_us])
    assert global_machines(g2, snap) == [B]


def test_global_machines_of_inactive_or_non_global_units_is_empty() -> None:
    snap = snapshot([A], [])
    assert global_machines(unit("g.service", "Global=true", desired=INACTIVE), snap) == []
    assert global_machines(unit("u.service"), snap) == []
    assert global_unplaceable_reason(unit("u.service"), snap) is None


def test_global_machines_ignores_stale_placements() -> None:
    """Placements of gone machines, inactive or destroyed units do not keep a global away."""
    g = unit("g.service", "Global=true\nConflicts=x*.service")
    snap = snapshot(
        [A, B], [g, unit("x1.service", desired=INACTIVE)], {"x1.service": A, "x2.service": B, "x3.service": C}
    )
    assert global_machines(g, snap) == [A, B]


@pytest.mark.parametrize("seed", range(20))
def test_an_agent_with_only_its_own_schedule_agrees_with_the_engine(seed: int) -> None:
    snap = random_cluster(random.Random(2000 + seed))
    result = plan(snap)
    applied = Snapshot(snap.machines, snap.jobs, result.placements)
    for machine, info in snap.machines.items():
        local = Snapshot({machine: info}, snap.jobs, {u: m for u, m in applied.placements.items() if m == machine})
        for name, job in snap.jobs.items():
            if job.active and job.requirements.global_:
                expected = [machine] if machine in result.global_machines[name] else []
                assert global_machines(job, local) == expected, (name, machine)


# -- filters, ordering, ranking, reasons: the pieces alone ---------------------------------


def test_resolve_machine_id() -> None:
    ids = [A, B, "abcd0000" + "0" * 24, "abcd1111" + "0" * 24]
    assert resolve_machine_id(A, ids).machine == A
    assert resolve_machine_id("bbbb", ids).machine == B
    assert resolve_machine_id("ABCD1", ids).machine == "abcd1111" + "0" * 24
    assert resolve_machine_id("ffff", ids).reason == "no machine with ID ffff"
    assert "ambiguous" in resolve_machine_id("abcd", ids).reason
    # An exact id wins even when it is also a prefix of another id.
    assert resolve_machine_id("ab", ["ab", "abc"]).machine == "ab"


def test_glob_index_agrees_with_the_model() -> None:
    globs = ["web@*.service", "db.service", "app[12].service", "x?.service"]
    index = GlobIndex(globs)
    for name in ["web@1.service", "db.service", "app1.service", "app3.service", "xy.service", "other.service"]:
        req = Requirements(conflicts=tuple(globs))
        assert bool(index.matching(name)) == req.conflicts_with(name)
        assert set(index.matching(name)) == {g for g in globs if Requirements(conflicts=(g,)).conflicts_with(name)}


def test_machine_of_order() -> None:
    reqs = {
        "a.service": Requirements(machine_of=("m.service",)),
        "m.service": Requirements(machine_of=("z.service",)),
        "z.service": Requirements(),
        "b.service": Requirements(),
        "s.service": Requirements(machine_of=("s.service",)),
    }
    order = machine_of_order(reqs)
    assert order.units == ["b.service", "z.service", "m.service", "a.service"]
    assert order.cycles == {"s.service": "MachineOf cycle: s.service -> s.service"}


def test_machine_of_order_long_chain_does_not_recurse() -> None:
    n = 5000
    reqs = {f"u{i:05}.service": Requirements(machine_of=(f"u{i + 1:05}.service",)) for i in range(n)}
    reqs[f"u{n:05}.service"] = Requirements(machine_of=("u00000.service",))
    order = machine_of_order(reqs)
    assert order.units == [] and len(order.cycles) == n + 1


def test_ranking_least_loaded_then_id_and_skips_infeasible() -> None:
    load = {A: 1, B: 0, C: 0}
    ranking = Ranking([A, B, C], load)
    assert ranking.best() == B
    load[B] = 1
    assert ranking.best() == C
    load[C] = 1
    assert ranking.best(lambda m: m != A) == B
    assert ranking.best() == A  # the skipped machine is still ranked
    load[C] = 0
    ranking.load_dropped(C, 0)
    assert ranking.best() == C
    assert ranking.best(lambda m: False) is None


def test_reason_helpers() -> None:
    assert name_list(["a"]) == "a"
    assert name_list(["a", "b"]) == "a or b"
    assert name_list(["a", "b", "c", "d", "e"]) == "a, b, c or 2 more"
    assert counted(["x", "y", "x"]) == "2 machines: x; 1 machine: y"
    assert counted([f"r{i}" for i in range(6)]) == (
        "1 machine: r0; 1 machine: r1; 1 machine: r2; 1 machine: r3; 2 machines: other reasons"
    )


# -- properties over random clusters --------------------------------------------------------


def random_cluster(rng: random.Random) -> Snapshot:
    machine_ids = [f"{rng.getrandbits(128):032x}" for _ in range(0 if rng.random() < 0.05 else rng.randint(1, 6))]
    machines = {m: {"region": rng.choice(["us", "eu"])} for m in machine_ids}
    names = [f"u{i}.service" for i in range(rng.randint(1, 25))]
    units = []
    for i, name in enumerate(names):
        roll = rng.random()
        if roll < 0.15:
            body = f"MachineMetadata=region={rng.choice(['us', 'eu', 'ap'])}"
        elif roll < 0.35:
            body = f"Conflicts=u{rng.randint(0, 3)}*.service"
        elif roll < 0.45 and i:
            body = f"MachineOf={rng.choice(names[:i])}"
        elif roll < 0.5:
            body = f"MachineOf={rng.choice(names)}"  # sometimes a cycle
        elif roll < 0.55 and machine_ids:
            body = f"MachineID={rng.choice(machine_ids)[: rng.choice([8, 32])]}"
        elif roll < 0.62:
            body = "Global=true" + rng.choice(["", "\nMachineMetadata=region=us", "\nConflicts=u1*.service"])
        elif roll < 0.68:
            body = f"Replaces=u{rng.randint(0, 9)}*.service"
        else:
            body = ""
        desired = INACTIVE if rng.random() < 0.1 else LAUNCHED
        units.append(unit(name, body, desired))
    gone = [f"{rng.getrandbits(128):032x}"]
    placements = {n: rng.choice(machine_ids + gone) for n in names if rng.random() < 0.5}
    return snapshot(machines, units, placements)


@pytest.mark.parametrize("seed", range(60))
def test_random_clusters_keep_every_rule(seed: int) -> None:
    snap = random_cluster(random.Random(seed))
    result = plan(snap)
    # Deterministic whatever the input order.
    shuffled = Snapshot(
        dict(reversed(list(snap.machines.items()))),
        dict(reversed(list(snap.jobs.items()))),
        dict(reversed(list(snap.placements.items()))),
    )
    assert plan(shuffled) == result
    # Every active engine unit is either placed or explained; never both.
    engine_units = {n for n, j in snap.jobs.items() if j.active and not j.requirements.global_}
    assert set(result.placements) | set(result.unplaceable) >= engine_units
    assert not set(result.placements) & set(result.unplaceable)
    # Every placement passes every filter against the final schedule.
    applied = Snapshot(snap.machines, snap.jobs, result.placements)
    ctx = scheduled_context(applied, applied.jobs)
    run_globals(ctx, [n for n, j in snap.jobs.items() if j.active and j.requirements.global_])
    for name, machine in result.placements.items():
        assert first_rejection(ctx, name, machine, FILTERS) is None, (name, machine)
    # The engine and the agents agree on global units.
    assert global_placements(applied) == result.global_machines
    # Stable once applied. The one exception is a chain of Replaces through a unit that
    # already moved in this plan (moved at most once, so planning always ends); the
    # next plan finishes the job, and then nothing changes.
    again = plan(applied)
    if any("already moved in this plan" in reason for reason in result.unplaceable.values()):
        applied = Snapshot(snap.machines, snap.jobs, again.placements)
        again = plan(applied)
    assert again.tasks == []


def test_unplaceable_units_really_fit_nowhere() -> None:
    """The fast paths (rankings, set narrowing) never miss a machine the filters accept."""
    for seed in range(40):
        snap = random_cluster(random.Random(1000 + seed))
        result = plan(snap)
        applied = Snapshot(snap.machines, snap.jobs, result.placements)
        ctx: Context = scheduled_context(applied, applied.jobs)
        run_globals(ctx, [n for n, j in snap.jobs.items() if j.active and j.requirements.global_])
        for name, reason in result.unplaceable.items():
            if snap.jobs[name].requirements.global_ or "already moved in this plan" in reason:
                continue  # that rule only holds within the plan that moved the unit
            for machine in snap.machines:
                assert first_rejection(ctx, name, machine, FILTERS) is not None, (seed, name, machine)


# -- scale ------------------------------------------------------------------------------------


def test_ten_thousand_units_on_a_hundred_machines_spread_evenly() -> None:
    machines = {f"{i:032x}": MachineInfo(f"{i:032x}") for i in range(100)}
    jobs = {f"u{i}.service": JobInfo(f"u{i}.service") for i in range(10_000)}
    result = plan(Snapshot(machines, jobs, {}))
    assert len(result.places) == 10_000
    per_machine: dict[str, int] = {}
    for machine in result.placements.values():
        per_machine[machine] = per_machine.get(machine, 0) + 1
    assert set(per_machine.values()) == {100}


def test_replace_cycles_pairs_and_stars() -> None:
    reqs = {
        j.name: j.requirements
        for j in (
            unit("hub.service", "Replaces=x*.service"),
            unit("x1.service", "Replaces=hub.service"),
            unit("x2.service", "Replaces=hub.service"),
            unit("self.service", "Replaces=self.service"),
            unit("ring1.service", "Replaces=ring2.service"),
            unit("ring2.service", "Replaces=ring3.service"),
            unit("ring3.service", "Replaces=ring1.service"),
        )
    }
    # hub wins on its name; both x units lose to it. A self-replace and a longer ring are no pair.
    assert sorted(replace_cycles(reqs, set())) == ["x1.service", "x2.service"]
    # With x1 placed, x1 stays, hub loses to it, and x2 (whose only partner lost) runs.
    losers = replace_cycles(reqs, {"x1.service"})
    assert list(losers) == ["hub.service"] and "x1.service was chosen (already placed)" in losers["hub.service"]


def test_global_with_boot_id_runs_only_on_the_machine_with_that_id() -> None:
    units = [
        unit("g.service", f"Global=true\nX-ConditionMachineBootID={B[:8]}"),
        unit("lost.service", f"Global=true\nX-ConditionMachineBootID={BOOT}"),
    ]
    result = plan(snapshot([A, B], units))
    assert result.global_machines == {"g.service": (B,), "lost.service": ()}
    assert result.unplaceable == {"lost.service": f"{NO_BOOT} on every eligible machine"}
    assert global_placements(snapshot([A, B], units)) == result.global_machines
