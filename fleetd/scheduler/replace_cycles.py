"""Units that replace each other: only one of them may be scheduled.

``a.service`` with ``Replaces=b.service`` and ``b.service`` with ``Replaces=a.service``
cannot both run: wherever one runs, the other must leave, and placing both on different
machines (what a plain Replaces filter ends with) breaks the promise each makes. fleet's
own functional test (TestScheduleCircularReplace) expects exactly one of them active.

The rule, decided from the snapshot alone so every engine decides the same way:

- a unit already placed (on a live machine) is preferred over one that is not, so starting
  the second unit of a pair never moves the first: a valid placement is never moved;
- otherwise (both placed, or neither) the name first in lexical order wins.

Units are taken in that order; one that replaces, and is replaced by, a unit already
chosen is left unscheduled with a reason naming the cycle. Only such mutual pairs are
decided here; a longer ring (a replaces b, b replaces c, c replaces a) does not force any
two of its members onto one machine, and is left to the Replaces filter.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from fleetd.model.names import has_glob
from fleetd.model.requirements import Requirements


def _replaced(req: Requirements, names: Mapping[str, Requirements]) -> list[str]:
    """The units of ``names`` that ``req`` replaces (direct lookups for plain names)."""
    found: set[str] = set()
    for glob in req.replaces:
        if has_glob(glob):
            found.update(name for name in names if req.replaces_unit(name))
        elif glob in names:
            found.add(glob)
    return sorted(found)


def replace_cycles(requirements: Mapping[str, Requirements], placed: Collection[str]) -> dict[str, str]:
    """Units of ``requirements`` that may not be scheduled because they and a unit chosen
    instead replace each other, each with its reason. ``placed`` holds the units the
    snapshot has on a live machine."""
    replacing = {name: req for name, req in requirements.items() if req.replaces}
    mutual: dict[str, list[str]] = {}
    for name, req in replacing.items():
        for other in _replaced(req, replacing):
            if other != name and replacing[other].replaces_unit(name):
                mutual.setdefault(name, []).append(other)
    chosen: set[str] = set()
    losers: dict[str, str] = {}
    for name in sorted(mutual, key=lambda n: (n not in placed, n)):
        winners = [other for other in mutual[name] if other in chosen]
        if not winners:
            chosen.add(name)
            continue
        winner = winners[0]
        why = "already placed" if winner in placed and name not in placed else "first by name"
        losers[name] = f"Replaces cycle: {name} -> {winner} -> {name}; only one may run and {winner} was chosen ({why})"
    return losers
