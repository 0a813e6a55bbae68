"""Who is on which machine, kept incrementally while one plan is being made.

Placement asks the same questions thousands of times ("how loaded is this machine?",
"does anything here conflict with this unit?"). Answering them by scanning every unit
would make a plan O(units²); instead this index is built once per plan and updated on
every placement, and the conflict and replace rules are answered from per-machine,
per-glob sets, so a check costs a few dictionary lookups whatever the cluster size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Protocol

from fleetd.model.names import has_glob
from fleetd.model.requirements import Requirements


def is_literal(glob: str) -> bool:
    """A glob without wildcards matches exactly its own text (a cheap dict lookup)."""
    return not has_glob(glob)


class GlobIndex:
    """A fixed set of globs, answering "which of them match this name?" with a cache.

    Matching uses :func:`fnmatch.fnmatchcase`, exactly like
    :meth:`Requirements.conflicts_with` and :meth:`Requirements.replaces_unit`, so the index
    and the model can never disagree.
    """

    def __init__(self, globs: Iterable[str]) -> None:
        unique = set(globs)
        self._literal = {g for g in unique if is_literal(g)}
        self._patterns = sorted(unique - self._literal)
        self._cache: dict[str, tuple[str, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._literal or self._patterns)

    def matching(self, name: str) -> tuple[str, ...]:
        """The globs of the index that match ``name``."""
        found = self._cache.get(name)
        if found is None:
            hits = [g for g in self._patterns if fnmatchcase(name, g)]
            if name in self._literal:
                hits.append(name)
            found = self._cache[name] = tuple(hits)
        return found


def _add(table: dict[str, dict[str, set[str]]], machine: str, glob: str, unit: str) -> None:
    table.setdefault(machine, {}).setdefault(glob, set()).add(unit)


def _discard(table: dict[str, dict[str, set[str]]], machine: str, glob: str, unit: str) -> None:
    by_glob = table.get(machine)
    if by_glob is None:
        return
    units = by_glob.get(glob)
    if units is not None:
        units.discard(unit)
        if not units:
            del by_glob[glob]


class GlobRelation:
    """One glob-valued rule (Conflicts or Replaces) indexed per machine, in both directions.

    For every machine it knows the units that *carry* each glob and the units whose *name
    matches* each glob; so "units here whose glob matches X" and "units here that X's
    globs match" are both unions of a few small sets.
    """

    def __init__(self, globs: Iterable[str]) -> None:
        self.index = GlobIndex(globs)
        self._carriers: dict[str, dict[str, set[str]]] = {}
        self._matched: dict[str, dict[str, set[str]]] = {}
        self._matched_anywhere: dict[str, set[str]] = {}

    def involves(self, name: str, globs: tuple[str, ...]) -> bool:
        """Whether the rule can ever concern a unit (it has globs, or a glob matches it)."""
        return bool(globs) or bool(self.index and self.index.matching(name))

    def add(self, unit: str, globs: tuple[str, ...], machine: str) -> None:
        for glob in globs:
            _add(self._carriers, machine, glob, unit)
        if self.index:
            for glob in self.index.matching(unit):
                _add(self._matched, machine, glob, unit)
                self._matched_anywhere.setdefault(glob, set()).add(unit)

    def remove(self, unit: str, globs: tuple[str, ...], machine: str) -> None:
        for glob in globs:
            _discard(self._carriers, machine, glob, unit)
        if self.index:
            for glob in self.index.matching(unit):
                _discard(self._matched, machine, glob, unit)
                self._matched_anywhere.get(glob, set()).discard(unit)

    def carriers_matching(self, name: str, machine: str) -> set[str]:
        """Units on ``machine`` carrying a glob that matches ``name``."""
        by_glob = self._carriers.get(machine)
        if not by_glob or not self.index:
            return set()
        found: set[str] = set()
        for glob in self.index.matching(name):
            found.update(by_glob.get(glob, ()))
        return found

    def matched_anywhere(self, globs: tuple[str, ...]) -> set[str]:
        """Units on any machine whose names match one of ``globs``."""
        found: set[str] = set()
        for glob in globs:
            found.update(self._matched_anywhere.get(glob, ()))
        return found

    def matched_by(self, globs: tuple[str, ...], machine: str) -> set[str]:
        """Units on ``machine`` whose names match one of ``globs``."""
        by_glob = self._matched.get(machine)
        if not by_glob:
            return set()
        found: set[str] = set()
        for glob in globs:
            found.update(by_glob.get(glob, ()))
        return found


class LoadListener(Protocol):
    def load_dropped(self, machine: str, load: int) -> None: ...


class Occupancy:
    """The schedule being built: engine placements, global units, load, and rule indexes.

    ``load`` counts engine-placed units only: global units run on every matching machine,
    so they say little about which machine is busier, and counting them would make the
    least-loaded choice depend on which globals happen to match.
    """

    def __init__(self, machine_ids: Iterable[str], requirements: Mapping[str, Requirements]) -> None:
        self.requirements = requirements
        self.units: dict[str, set[str]] = {m: set() for m in machine_ids}
        self.load: dict[str, int] = dict.fromkeys(self.units, 0)
        self.placed: dict[str, str] = {}
        self.globals_on: dict[str, set[str]] = {m: set() for m in self.units}
        self.conflicts = GlobRelation(g for r in requirements.values() for g in r.conflicts)
        self.replaces = GlobRelation(g for r in requirements.values() for g in r.replaces)
        self._listeners: list[LoadListener] = []

    def listen(self, listener: LoadListener) -> None:
        """Be told when a machine's load goes down (rankings cache loads, see ranking.py)."""
        self._listeners.append(listener)

    # -- changes ---------------------------------------------------------------------------

    def add(self, unit: str, machine: str) -> None:
        """Schedule an engine unit on ``machine``."""
        req = self.requirements[unit]
        self.units[machine].add(unit)
        self.load[machine] += 1
        self.placed[unit] = machine
        if req.conflicts or self.conflicts.index:
            self.conflicts.add(unit, req.conflicts, machine)
        if req.replaces or self.replaces.index:
            self.replaces.add(unit, req.replaces, machine)

    def add_global(self, unit: str, machine: str) -> None:
        """Record that a global unit runs on ``machine`` (it takes part in Conflicts only)."""
        self.globals_on[machine].add(unit)
        self.conflicts.add(unit, self.requirements[unit].conflicts, machine)

    def remove(self, unit: str) -> str:
        """Unschedule an engine unit; returns the machine it was on."""
        machine = self.placed.pop(unit)
        req = self.requirements[unit]
        self.units[machine].discard(unit)
        self.load[machine] -= 1
        self.conflicts.remove(unit, req.conflicts, machine)
        self.replaces.remove(unit, req.replaces, machine)
        for listener in self._listeners:
            listener.load_dropped(machine, self.load[machine])
        return machine

    # -- questions -------------------------------------------------------------------------

    def conflicting(self, unit: str, machine: str) -> list[str]:
        """Units on ``machine`` (global ones included) that ``unit`` may not share it with.

        Both directions count: ``unit``'s Conflicts globs matching them, and their globs
        matching ``unit``. Sorted, so reasons name the same unit every time.
        """
        req = self.requirements[unit]
        found = self.conflicts.carriers_matching(unit, machine)
        if req.conflicts:
            found |= self.conflicts.matched_by(req.conflicts, machine)
        found.discard(unit)
        return sorted(found)

    def replacers(self, unit: str, machine: str) -> list[str]:
        """Engine units on ``machine`` whose Replaces globs match ``unit``."""
        found = self.replaces.carriers_matching(unit, machine)
        found.discard(unit)
        return sorted(found)

    def machines_with_replaced(self, unit: str) -> set[str]:
        """Machines running an engine unit that ``unit`` replaces (its preferred machines)."""
        req = self.requirements[unit]
        if not req.replaces:
            return set()
        return {self.placed[v] for v in self.replaces.matched_anywhere(req.replaces) if v != unit}

    def replaced_by(self, unit: str, machine: str) -> list[str]:
        """Engine units on ``machine`` that ``unit`` replaces."""
        req = self.requirements[unit]
        if not req.replaces:
            return []
        found = self.replaces.matched_by(req.replaces, machine)
        found.discard(unit)
        return sorted(found)
