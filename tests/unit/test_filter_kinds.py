"""Filter kinds are a closed enum (fleetd.scheduler.filters.FilterKind), and every
pipeline and every rejection uses its members, with the names the filters always had."""

from __future__ import annotations

from fleetd.model.unit import build_unit
from fleetd.scheduler import FILTERS, FilterKind, JobInfo, MachineInfo, Snapshot
from fleetd.scheduler.filters import DYNAMIC_FILTERS, STATIC_FILTERS, first_rejection
from fleetd.scheduler.global_units import GLOBAL_FILTERS, scheduled_context
from fleetd.scheduler.placement import PINNED_FILTERS

A = "aaaaaaaa" + "0" * 24
B = "bbbbbbbb" + "0" * 24


def _job(name: str, xfleet: str) -> JobInfo:
    built, _ = build_unit(name, f"[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{xfleet}\n")
    return JobInfo(name, built.requirements)


def test_kinds_keep_their_names() -> None:
    assert [str(kind) for kind in FilterKind] == ["machine-id", "machine-of", "metadata", "conflicts", "replaces"]
    assert f"{FilterKind.MACHINE_OF}" == "machine-of"


def test_every_pipeline_is_typed_and_in_report_order() -> None:
    assert [kind for kind, _ in FILTERS] == list(FilterKind)
    for pipeline in (STATIC_FILTERS, DYNAMIC_FILTERS, GLOBAL_FILTERS, PINNED_FILTERS):
        assert all(isinstance(kind, FilterKind) for kind, _ in pipeline)
    order = list(FilterKind)
    for pipeline in (GLOBAL_FILTERS, PINNED_FILTERS):
        kinds = [kind for kind, _ in pipeline]
        assert kinds == sorted(kinds, key=order.index)


def test_rejections_carry_the_kind() -> None:
    jobs = {
        "pinned.service": _job("pinned.service", f"MachineID={A}"),
        "meta.service": _job("meta.service", "MachineMetadata=role=db"),
    }
    snap = Snapshot({m: MachineInfo(m) for m in (A, B)}, jobs, {})
    ctx = scheduled_context(snap, jobs)
    pinned = first_rejection(ctx, "pinned.service", B)
    meta = first_rejection(ctx, "meta.service", A)
    assert pinned is not None and pinned.kind is FilterKind.MACHINE_ID
    assert pinned.reason == "MachineID=" + A + " selects machine aaaaaaaa"
    assert meta is not None and meta.kind is FilterKind.METADATA
    assert meta.reason == "metadata role=db not present"
