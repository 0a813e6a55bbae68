"""``/fleet/v1/state``: the systemd state each machine published for its units.

A resource of its own in fleet's API (filtered by ``unitName`` and ``machineID``), kept
apart from the units it describes because it is written by the agents, not by users.

Beyond fleet, a listing carries the etcd revision it reflects in ``X-Fleet-Index``, and
``?wait=true&index=N`` makes it a long-poll: it answers once a unit state or a placement
(what a unit's ``currentState`` is made of) changed after revision N, or after ``timeout``
seconds, so a client waiting for units to start asks once per change instead of listing
everything every fraction of a second. Each waiter holds a connection and an etcd watch,
so a fleetd holds at most MAX_STATE_WAITERS at once (429 beyond).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.machines import MACHINE_ID_RE
from fleetd.api.params import listing, page, query_bool, query_int, unit_name
from fleetd.model.limits import MAX_STATE_WAIT_SECONDS, MAX_STATE_WAITERS
from fleetd.model.wire import select_states, state_json

# the header carrying the revision a listing reflects (the next long-poll's ``index``)
INDEX_HEADER = "X-Fleet-Index"
# how long a long-poll waits when the request does not say (``timeout``), in seconds
DEFAULT_STATE_WAIT_SECONDS = MAX_STATE_WAIT_SECONDS
# what a client refused a long-poll is told to wait before trying again, in seconds
WAIT_RETRY_AFTER = 1
# the largest index accepted (18 digits, what the API's numbers allow); etcd's revisions
# never get there
MAX_INDEX = 10**18 - 1


@dataclass
class WaitSlots:
    """The long-polls this fleetd holds now, how many it allows, and the event that ends
    them all when the API shuts down (so a shutdown does not wait out their timeouts)."""

    limit: int = MAX_STATE_WAITERS
    active: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)


STATE_WAITS = web.AppKey("fleet_state_waits", WaitSlots)


async def _wait_for_change(request: web.Request, index: int, timeout: int) -> None:
    """Return once a unit state or placement changed after ``index``, after ``timeout``
    seconds, or when the API shuts down; 429 when MAX_STATE_WAITERS already wait."""
    slots = request.app[STATE_WAITS]
    if slots.active >= slots.limit:
        raise ApiError(
            429,
            f"this fleetd already holds {slots.active} waits for unit changes (the limit is {slots.limit}); "
            "try again shortly, or list without wait",
            {"Retry-After": str(WAIT_RETRY_AFTER)},
        )
    slots.active += 1
    changed = asyncio.ensure_future(api_state(request).registry.wait_unit_changes(index))
    closing = asyncio.ensure_future(slots.closing.wait())
    try:
        await asyncio.wait({changed, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if changed.done():
            changed.result()  # a failure to watch (etcd unreachable) answers as any read would
    finally:
        slots.active -= 1
        for task in (changed, closing):
            task.cancel()
        await asyncio.gather(changed, closing, return_exceptions=True)


async def list_states(request: web.Request) -> web.Response:
    name = request.query.get("unitName") or None
    machine_id = request.query.get("machineID") or None
    if name:
        unit_name(name)
    if machine_id and not MACHINE_ID_RE.fullmatch(machine_id):
        raise ApiError(400, f"invalid machineID {machine_id[:64]!r}")
    wait = query_bool(request, "wait")
    index = query_int(request, "index", -1, 0, MAX_INDEX)
    timeout = query_int(request, "timeout", DEFAULT_STATE_WAIT_SECONDS, 1, MAX_STATE_WAIT_SECONDS)
    if wait:
        if index < 0:
            raise ApiError(400, f"wait=true needs index: the {INDEX_HEADER} of a previous answer")
        await _wait_for_change(request, index, timeout)
    found, revision = await api_state(request).registry.unit_states_at(name)
    states = select_states(found, name, machine_id)
    items, token = page(request, states, lambda s: (s.name, s.machine_id), "state")
    response = listing("states", [state_json(s) for s in items], token)
    response.headers[INDEX_HEADER] = str(revision)
    return response


async def get_state(request: web.Request) -> web.Response:
    """fleet's ``UnitState.Get`` (``GET /state/<unitName>``, which fleet's fleetctl asks to
    see a started unit active): the unit's first state, by machine id; 404 when none."""
    name = unit_name(request.match_info["name"])
    states = select_states(await api_state(request).registry.unit_states(name), name, None)
    if not states:
        raise ApiError(404, f"unit state does not exist: no machine reports {name}")
    first = min(states, key=lambda s: s.machine_id)
    return web.json_response(state_json(first))


__all__ = ["DEFAULT_STATE_WAIT_SECONDS", "INDEX_HEADER", "STATE_WAITS", "WaitSlots", "get_state", "list_states"]
