"""Pure scheduling decisions: snapshot in, plan out. No I/O, no asyncio, no third parties.

- :func:`plan` — the engine's decision: which units to place on or take off which machines,
  each with a reason, and why the rest cannot be placed.
- :func:`global_machines` / :func:`global_unplaceable_reason` / :func:`global_placements` —
  where global units run (agents and the engine both use these, so they agree).

Everything is deterministic: the same snapshot always gives the same plan.
"""

from fleetd.model.state import short_id
from fleetd.scheduler.filters import FILTERS, FilterKind, Rejection, resolve_machine_id
from fleetd.scheduler.global_units import (
    global_machines,
    global_placements,
    global_unplaceable_reason,
)
from fleetd.scheduler.placement import plan
from fleetd.scheduler.snapshot import JobInfo, MachineInfo, Snapshot
from fleetd.scheduler.tasks import Place, Plan, Task, Unplace

__all__ = [
    "FILTERS",
    "FilterKind",
    "JobInfo",
    "MachineInfo",
    "Place",
    "Plan",
    "Rejection",
    "Snapshot",
    "Task",
    "Unplace",
    "global_machines",
    "global_placements",
    "global_unplaceable_reason",
    "plan",
    "resolve_machine_id",
    "short_id",
]
