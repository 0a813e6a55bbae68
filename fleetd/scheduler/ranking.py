"""Machines in least-loaded order, cheaply, while loads change under our feet.

The scorer is "fewest units, then smallest machine id". Sorting every candidate machine
for every unit would make placing N units on M machines cost N·M·log M; a heap per
candidate set instead costs about log M per placement. Loads only go up while a plan
places units, so stale heap entries are detected lazily (recorded load != current load)
and re-pushed; the rare drop (a unit displaced by Replaces) is pushed eagerly through
:meth:`Ranking.load_dropped`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping


class Ranking:
    """A fixed set of machines, popped in (load, machine id) order."""

    def __init__(self, machines: Iterable[str], load: Mapping[str, int]) -> None:
        self._load = load
        self._entry: dict[str, int] = {m: load[m] for m in machines}
        self._heap: list[tuple[int, str]] = [(n, m) for m, n in self._entry.items()]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._entry)

    def load_dropped(self, machine: str, load: int) -> None:
        """A machine's load went down: re-rank it now (lazy fixing only handles rises)."""
        if machine in self._entry:
            self._entry[machine] = load
            heapq.heappush(self._heap, (load, machine))

    def best(self, feasible: Callable[[str], bool] | None = None) -> str | None:
        """The least-loaded machine for which ``feasible`` holds (all, when ``None``).

        Machines that are not feasible stay in the ranking for the next unit.
        """
        heap, entry, load = self._heap, self._entry, self._load
        skipped: list[tuple[int, str]] = []
        found: str | None = None
        while heap:
            recorded, machine = heapq.heappop(heap)
            if entry.get(machine) != recorded:
                continue  # superseded by a newer entry for the same machine
            current = load[machine]
            if current != recorded:
                entry[machine] = current
                heapq.heappush(heap, (current, machine))
                continue
            skipped.append((recorded, machine))
            if feasible is None or feasible(machine):
                found = machine
                break
        for item in skipped:
            heapq.heappush(heap, item)
        return found
