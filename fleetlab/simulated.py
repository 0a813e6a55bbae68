"""A SIMULATED service manager: units live in memory, nothing runs.

For tests of scale and benchmarks only, where hundreds of machines run in one process.
It is never the default; the daemon always uses the real systemd adapter. Starting a unit
here reports ``active/running`` at once (optionally after ``start_delay``), so it measures
fleet's own overhead, not systemd's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from fleetd.agent.manager import LocalUnit, StateCallback, SystemdState
from fleetd.model.unitfile import UnitFile

LOADED = SystemdState("loaded", "inactive", "dead")
RUNNING = SystemdState("loaded", "active", "running")


class SimulatedManager:
    def __init__(self, start_delay: float = 0.0) -> None:
        self.files: dict[str, UnitFile] = {}
        self.states: dict[str, SystemdState] = {}
        self._local: dict[str, LocalUnit] = {}
        self.start_delay = start_delay
        self.calls = 0
        self.starts: dict[str, int] = {}  # how often each unit was started (restart detection)
        self._callbacks: list[StateCallback] = []
        # Poison for tests: a load batch holding one of these names raises (as a unit file
        # that cannot be written fails the whole batch), and a start of one of these is
        # refused for that unit only (as systemd refuses a job).
        self.poison_loads: dict[str, str] = {}
        self.refused_starts: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def failures(self) -> dict[str, str]:
        return dict(self.errors)

    def subscribe(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)

    def _set(self, name: str, state: SystemdState) -> None:
        self.states[name] = state
        self._local[name] = LocalUnit(name, self.files[name].hash(), state)
        for callback in self._callbacks:
            callback(name, state)

    async def load(self, units: Mapping[str, UnitFile]) -> None:
        self.calls += 1
        poisoned = [name for name in units if name in self.poison_loads]
        if poisoned:
            raise OSError(self.poison_loads[poisoned[0]])
        for name, file in units.items():
            self.files[name] = file
            self._set(name, self.states.get(name, LOADED))

    async def unload(self, names: Sequence[str]) -> None:
        self.calls += 1
        for name in names:
            self.files.pop(name, None)
            self.states.pop(name, None)
            self._local.pop(name, None)

    async def start(self, names: Sequence[str]) -> None:
        self.calls += 1
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        for name in names:
            if name in self.refused_starts:
                self.errors[name] = self.refused_starts[name]
            elif name in self.files:
                self.errors.pop(name, None)
                self.starts[name] = self.starts.get(name, 0) + 1
                self._set(name, RUNNING)

    async def stop(self, names: Sequence[str]) -> None:
        self.calls += 1
        for name in names:
            if name in self.files:
                self._set(name, LOADED)

    async def units(self) -> dict[str, LocalUnit]:
        return dict(self._local)
