"""The order units are placed in: MachineOf targets before their followers, then by name.

A follower can only be placed once its target's machine is known, so placement walks the
MachineOf graph topologically (ties by name, so a plan never depends on dict order).
Units on a MachineOf cycle can never be placed; they are reported with the cycle spelled
out instead of being silently skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fleetd.model.requirements import Requirements


@dataclass(frozen=True)
class Order:
    """``units`` in placement order; ``cycles`` maps each unit on a cycle to its reason."""

    units: list[str] = field(default_factory=list)
    cycles: dict[str, str] = field(default_factory=dict)


def _targets(req: Requirements, names: Mapping[str, Requirements]) -> list[str]:
    return sorted({t for t in req.machine_of if t in names})


def _kahn(nodes: Iterable[str], edges: Mapping[str, list[str]]) -> tuple[list[str], set[str]]:
    """Topological order of ``nodes`` (edges: follower -> targets), smallest name first.

    Returns the order and the nodes left over (on or behind a cycle).
    """
    nodeset = set(nodes)
    waiting: dict[str, int] = {}
    followers: dict[str, list[str]] = {}
    for node in nodeset:
        targets = [t for t in edges.get(node, ()) if t in nodeset]
        waiting[node] = len(targets)
        for target in targets:
            followers.setdefault(target, []).append(node)
    ready = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for follower in followers.get(node, ()):
            waiting[follower] -= 1
            if waiting[follower] == 0:
                heapq.heappush(ready, follower)
    return order, nodeset - set(order)


def _strongly_connected(nodes: Iterable[str], edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a long MachineOf chain must not hit the recursion limit)."""
    nodeset = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def successors(node: str) -> list[str]:
        return [t for t in edges.get(node, ()) if t in nodeset]

    for root in sorted(nodeset):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(successors(root)))]
        while work:
            node, pending = work[-1]
            descended = False
            for succ in pending:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(successors(succ))))
                    descended = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycle_text(component: list[str], edges: Mapping[str, list[str]]) -> str:
    """``a.service -> b.service -> a.service``: a shortest cycle through the smallest name."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in edges.get(node, ()):
                if target == start:
                    path = [target, node]
                    while node != start:
                        node = parent[node]
                        path.append(node)
                    return " -> ".join(reversed(path))
                if target in members and target not in seen:
                    seen.add(target)
                    parent[target] = node
                    following.append(target)
        frontier = following
    return " -> ".join(component)  # unreachable for a real cycle; keeps the type honest


def machine_of_order(requirements: Mapping[str, Requirements]) -> Order:
    """Order the units of ``requirements`` for placement (see the module docstring)."""
    if not any(req.machine_of for req in requirements.values()):
        return Order(sorted(requirements))
    edges = {name: _targets(req, requirements) for name, req in requirements.items() if req.machine_of}
    order, left = _kahn(requirements, edges)
    if not left:
        return Order(order)
    cycles: dict[str, str] = {}
    for component in _strongly_connected(left, edges):
        if len(component) > 1 or component[0] in edges.get(component[0], ()):
            reason = f"MachineOf cycle: {_cycle_text(component, edges)}"
            for member in component:
                cycles[member] = reason
    behind, _ = _kahn(left - set(cycles), edges)
    return Order(order + behind, cycles)
