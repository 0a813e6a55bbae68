"""``/fleet/v1/state``: the systemd state each machine published for its units.

A resource of its own in fleet's API (filtered by ``unitName`` and ``machineID``), kept
apart from the units it describes because it is written by the agents, not by users.
"""

from __future__ import annotations

from aiohttp import web

from fleetd.api.context import api_state
from fleetd.api.errors import ApiError
from fleetd.api.machines import MACHINE_ID_RE
from fleetd.api.params import listing, page, unit_name
from fleetd.model.wire import select_states, state_json


async def list_states(request: web.Request) -> web.Response:
    name = request.query.get("unitName") or None
    machine_id = request.query.get("machineID") or None
    if name:
        unit_name(name)
    if machine_id and not MACHINE_ID_RE.fullmatch(machine_id):
        raise ApiError(400, f"invalid machineID {machine_id[:64]!r}")
    states = select_states(await api_state(request).registry.unit_states(name), name, machine_id)
    items, token = page(request, states, lambda s: (s.name, s.machine_id), "state")
    return listing("states", [state_json(s) for s in items], token)


async def get_state(request: web.Request) -> web.Response:
    """fleet's ``UnitState.Get`` (``GET /state/<unitName>``, which fleet's fleetctl asks to
    see a started unit active): the unit's first state, by machine id; 404 when none."""
    name = unit_name(request.match_info["name"])
    states = select_states(await api_state(request).registry.unit_states(name), name, None)
    if not states:
        raise ApiError(404, f"unit state does not exist: no machine reports {name}")
    first = min(states, key=lambda s: s.machine_id)
    return web.json_response(state_json(first))


__all__ = ["get_state", "list_states"]
