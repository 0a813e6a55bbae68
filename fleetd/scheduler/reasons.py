"""Turn per-machine rejections into the one line a user is shown for an unplaceable unit.

Nomad's lesson: a scheduler that only says "no" is useless; the user needs to know which
rule kept the unit off which machines. With hundreds of machines that list must be
summarised: identical reasons are counted, conflicts are merged into one group naming
the units in the way, and a metadata mismatch everywhere shows what the machines do have.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from fleetd.scheduler.filters import Context, FilterKind, Rejection, format_metadata

# Long lists are cut: the user needs the gist, and the line must stay readable.
MAX_NAMES = 3
MAX_GROUPS = 4


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def name_list(names: Sequence[str], conjunction: str = "or") -> str:
    """``a``, ``a or b``, ``a, b or c``, ``a, b, c or 4 more``."""
    if len(names) > MAX_NAMES:
        shown = list(names[:MAX_NAMES]) + [f"{len(names) - MAX_NAMES} more"]
    else:
        shown = list(names)
    if len(shown) <= 1:
        return "".join(shown)
    return f"{', '.join(shown[:-1])} {conjunction} {shown[-1]}"


def counted(labels: Iterable[str], noun: str = "machine") -> str:
    """``2 machines: x; 1 machine: y`` — most common first, ties by text, capped."""
    counts = Counter(labels)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{plural(n, noun)}: {label}" for label, n in ordered[:MAX_GROUPS]]
    rest = sum(n for _, n in ordered[MAX_GROUPS:])
    if rest:
        parts.append(f"{plural(rest, noun)}: other reasons")
    return "; ".join(parts)


def _metadata_seen(ctx: Context, unit: str, machines: Iterable[str]) -> str:
    """What the refused machines carry for the required keys, e.g. ``3 machines: region=us``."""
    keys = [key for key, _ in ctx.requirements(unit).metadata]
    labels = []
    for machine in machines:
        metadata = ctx.machines[machine].metadata
        have = [f"{key}={metadata[key]}" for key in keys if key in metadata]
        labels.append(",".join(have) if have else f"no {'/'.join(keys)}")
    return counted(labels)


def _conflict_names(ctx: Context, unit: str, machines: Iterable[str]) -> list[str]:
    names: set[str] = set()
    for machine in machines:
        clash = ctx.occupancy.conflicting(unit, machine)
        if clash:
            names.add(clash[0])
    return sorted(names)


def summarise(ctx: Context, unit: str, rejections: Sequence[Rejection]) -> str:
    """One line saying why every machine refused ``unit``.

    ``rejections`` holds one entry per machine considered (MachineID and MachineOf, which
    single out one machine, are summarised by the caller instead).
    """
    if not ctx.machines:
        return "no machines in the cluster"
    if not rejections:
        return "no eligible machine"
    kinds = {r.kind for r in rejections}
    machines = [r.machine for r in rejections]
    if kinds == {FilterKind.METADATA}:
        wanted = format_metadata(ctx.requirements(unit).metadata)
        return f"no machine has metadata {wanted} ({_metadata_seen(ctx, unit, machines)})"
    if kinds == {FilterKind.CONFLICTS}:
        names = _conflict_names(ctx, unit, machines)
        return f"conflicts with {name_list(names)} on every eligible machine"
    reasons = {r.reason for r in rejections}
    if len(reasons) == 1:
        return f"{reasons.pop()} on every eligible machine"
    conflicted = [r.machine for r in rejections if r.kind is FilterKind.CONFLICTS]
    if conflicted:
        merged = f"conflicts with {name_list(_conflict_names(ctx, unit, conflicted))}"
    labels = [merged if r.kind is FilterKind.CONFLICTS else r.reason for r in rejections]
    return counted(labels)
