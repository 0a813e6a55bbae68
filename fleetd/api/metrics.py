"""``GET /metrics``: this fleetd's series (:mod:`fleetd.metrics`), in Prometheus' text format
or OpenMetrics when the scraper asks for it (``Accept``).

Answered even while the node refuses the API (503) and while etcd does not answer, since
those are exactly the states monitoring needs to see (``fleet_node_serving 0``,
``fleet_registry_up 0``). A scrape reads nothing from etcd: every value is in memory (the
engine leader's view of the cluster, the agent's states, counters), so scraping every
fleetd often costs the cluster nothing.
"""

from __future__ import annotations

from aiohttp import web

from fleetd.api.context import api_state


async def metrics(request: web.Request) -> web.Response:
    """Every series of this fleetd; docs/metrics.md describes them."""
    body, content_type = api_state(request).metrics.exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


__all__ = ["metrics"]
