"""Publishing unit states: from the service manager's signals to the registry, in batches.

systemd reports every state change of every unit; a burst of a thousand starts produces
thousands of changes. They are collected (the latest state per unit wins), and written
after a short debounce as a handful of batched writes on the agent's lease, so a dead
machine's states vanish with it. A failed write keeps the states pending and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from fleetd.agent.manager import LocalUnit, SystemdState, UnitManager
from fleetd.model.state import UnitState
from fleetd.registry.registry import Registry
from fleetd.settings import Settings

log = logging.getLogger(__name__)

# How long to wait before retrying a failed write of states (the registry is away).
RETRY_DELAY = 0.5


class StatePublisher:
    def __init__(
        self,
        registry: Registry,
        manager: UnitManager,
        machine_id: str,
        settings: Settings,
        lease: Callable[[], int | None],
    ) -> None:
        """``lease()`` gives the agent's current lease, or None while it is not registered."""
        self.registry = registry
        self.manager = manager
        self.machine_id = machine_id
        self.settings = settings
        self._lease = lease
        self.published: dict[str, UnitState] = {}
        self._pending: dict[str, SystemdState] = {}
        self._dirty = asyncio.Event()

    def changed(self, name: str, state: SystemdState) -> None:
        """The service manager's callback: remember the latest state, publish soon."""
        self._pending[name] = state
        self._dirty.set()

    def republish(self, local: Mapping[str, LocalUnit]) -> None:
        """After a new registration: the new lease holds no states yet, so publish all."""
        self.published.clear()
        for name, unit in local.items():
            self._pending[name] = unit.state
        self._dirty.set()

    async def unpublish(self, names: Iterable[str]) -> None:
        """Units that left this machine: drop what is pending and what was published."""
        gone = []
        for name in names:
            self._pending.pop(name, None)
            if self.published.pop(name, None) is not None:
                gone.append(name)
        lease = self._lease()
        if gone and lease is not None:
            await self.registry.publish_states(self.machine_id, lease, [], gone)

    async def run(self) -> None:
        """Write state changes in batches, forever."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.settings.debounce)
            self._dirty.clear()
            pending, self._pending = self._pending, {}
            local = await self.manager.units()
            changed = []
            for name, state in pending.items():
                unit = local.get(name)
                if unit is None:
                    continue
                record = UnitState(name, self.machine_id, unit.hash, state.load, state.active, state.sub)
                if self.published.get(name) != record:
                    changed.append(record)
            lease = self._lease()
            if not changed or lease is None:
                if changed:  # not registered: keep them for when it is
                    self._keep(changed)
                continue
            try:
                await self.registry.publish_states(self.machine_id, lease, changed)
            except Exception:
                log.info("publishing unit states failed; will retry", exc_info=True)
                self._keep(changed)
                await asyncio.sleep(RETRY_DELAY)
                self._dirty.set()
                continue
            for record in changed:
                self.published[record.name] = record

    def _keep(self, records: list[UnitState]) -> None:
        for record in records:
            self._pending.setdefault(
                record.name, SystemdState(record.load_state, record.active_state, record.sub_state)
            )
