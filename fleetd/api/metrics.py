"""``GET /metrics``: the cluster and this fleetd in Prometheus' text format.

Answered even while the node refuses the API (503) and while etcd does not answer, since
those are exactly the states monitoring needs to see (``fleet_node_serving 0``,
``fleet_registry_up 0``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.model.unit import DesiredState

log = logging.getLogger("fleetd.api")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Answered even while the node refuses the API (503), so
    monitoring can see that state (``fleet_node_serving 0``)."""
    state = api_state(request)
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    try:
        (units, unreadable), machines, unplaceable = await asyncio.gather(
            state.registry.units_with_errors(), state.registry.machines(), state.registry.unplaceable()
        )
    except Exception as exc:  # noqa: BLE001 - metrics must answer even when etcd does not
        log.warning("metrics: cannot read the registry: %s", exc)
        metric("fleet_registry_up", "gauge", "Whether etcd answered this scrape.", [({}, 0)])
    else:
        metric("fleet_registry_up", "gauge", "Whether etcd answered this scrape.", [({}, 1)])
        by_state = Counter(str(u.desired) for u in units)
        metric("fleet_units_total", "gauge", "Units in the cluster.", [({}, len(units))])
        metric(
            "fleet_units_desired",
            "gauge",
            "Units by desired state.",
            [({"state": str(s)}, by_state.get(str(s), 0)) for s in DesiredState],
        )
        metric("fleet_machines_total", "gauge", "Live machines in the cluster.", [({}, len(machines))])
        metric("fleet_units_unplaceable", "gauge", "Units the engine cannot place.", [({}, len(unplaceable))])
        metric("fleet_units_unreadable", "gauge", "Unit records that cannot be read.", [({}, len(unreadable))])
    metric(
        "fleet_registry_unreadable_records_total",
        "counter",
        "Unreadable records this fleetd met and skipped, by kind (each key and value once).",
        [({"kind": kind}, n) for kind, n in sorted(state.registry.bad_record_counts().items())],
    )
    metric(
        "fleet_node_serving",
        "gauge",
        "1 when this fleetd serves the API, 0 while it answers 503 (see its error).",
        [({}, 0 if state.node.error() else 1)],
    )
    tasks = state.node.tasks()
    metric(
        "fleet_task_up",
        "gauge",
        "1 while a supervised task of this fleetd runs, 0 while it waits to restart after a failure.",
        [({"task": t.name}, 0 if t.restart_at is not None else 1) for t in tasks],
    )
    metric(
        "fleet_task_restarts_total",
        "counter",
        "Restarts of each supervised task of this fleetd after it failed or ended.",
        [({"task": t.name}, t.restarts) for t in tasks],
    )
    metric(
        "fleet_api_requests_total",
        "counter",
        "API requests answered, by method and status code.",
        [({"method": m, "code": str(c)}, n) for (m, c), n in sorted(state.requests.items())],
    )
    body = "\n".join(out) + "\n"
    return web.Response(body=body.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


__all__ = ["metrics"]
