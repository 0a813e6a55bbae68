"""A cluster of SIMULATED machines, on a real etcd or on the in-memory registry.

Each machine is a real ``Agent`` with an in-memory service manager instead of systemd;
engines are real ``Engine`` instances. Everything runs in the caller's event loop.
On etcd (integration tests, benchmarks) each agent and engine has its own connection;
:meth:`SimCluster.in_memory` shares one :class:`MemoryRegistry` instead, for unit tests
of the loops that run in milliseconds. Crashing a machine cancels its agent without
leaving: on etcd its lease then expires after agent_ttl, as a dead machine's would; in
memory time does not pass, so :meth:`SimCluster.expire_machine` ends the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetd.agent.agent import Agent
from fleetd.engine.engine import Engine
from fleetd.model.state import MachineState, StoredUnit
from fleetd.model.unit import DesiredState, build_unit
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.registry.memory import MemoryRegistry
from fleetd.registry.registry import Registry
from fleetd.settings import Settings
from fleetlab.simulated import SimulatedManager
from fleetlab.wait import wait_until_async


@dataclass
class SimMachine:
    agent: Agent
    task: asyncio.Task[None]

    @property
    def id(self) -> str:
        return self.agent.machine_id

    @property
    def manager(self) -> SimulatedManager:
        assert isinstance(self.agent.manager, SimulatedManager)
        return self.agent.manager

    def running(self) -> set[str]:
        return {name for name, state in self.manager.states.items() if state.active == "active"}


@dataclass
class SimEngine:
    engine: Engine
    task: asyncio.Task[None]


@dataclass
class SimCluster:
    endpoints: tuple[str, ...] = ()
    prefix: str = ""
    settings: Settings = field(
        default_factory=lambda: Settings(agent_ttl=2, engine_ttl=2, engine_reconcile_interval=0.5)
    )
    machines: dict[str, SimMachine] = field(default_factory=dict)
    engines: list[SimEngine] = field(default_factory=list)
    registries: list[Registry] = field(default_factory=list)
    memory: MemoryRegistry | None = None

    @classmethod
    def in_memory(cls, settings: Settings | None = None) -> SimCluster:
        """Every agent and engine on one shared in-memory registry."""
        memory = MemoryRegistry()
        return cls(settings=settings, memory=memory) if settings else cls(memory=memory)

    def registry(self) -> Registry:
        """A registry for one more participant: its own etcd connection, or the shared fake."""
        if self.memory is not None:
            return self.memory
        registry = connect(EtcdConfig(endpoints=self.endpoints, request_timeout=5), self.prefix)
        self.registries.append(registry)
        return registry

    async def expire_machine(self, machine_id: str) -> None:
        """Crash a machine and end its lease now (in memory, where no TTL runs out)."""
        sim = self.machines[machine_id]
        lease = sim.agent.status.lease
        await self.crash_machine(machine_id)
        assert self.memory is not None, "on etcd the lease expires by itself after agent_ttl"
        self.memory.expire_lease(lease)

    async def add_machine(self, metadata: Mapping[str, str] | None = None, machine_id: str | None = None) -> SimMachine:
        machine = MachineState(machine_id or uuid.uuid4().hex, "", dict(metadata or {}))
        agent = Agent(self.registry(), SimulatedManager(), machine, self.settings)
        sim = SimMachine(agent, asyncio.create_task(agent.run()))
        self.machines[machine.id] = sim
        await wait_until_async(agent.ready.is_set, 10, f"machine {machine.short_id} to start")
        return sim

    async def add_engine(self, name: str | None = None) -> SimEngine:
        engine = Engine(self.registry(), name or f"engine-{len(self.engines)}", self.settings)
        sim = SimEngine(engine, asyncio.create_task(engine.run()))
        self.engines.append(sim)
        return sim

    def leader(self) -> SimEngine | None:
        return next((e for e in self.engines if e.engine.leading.is_set() and not e.task.done()), None)

    async def crash_machine(self, machine_id: str) -> None:
        """Kill the agent without leaving: its lease expires after agent_ttl."""
        sim = self.machines.pop(machine_id)
        await _cancel(sim.task)

    async def crash_engine(self, sim: SimEngine) -> None:
        await _cancel(sim.task)
        sim.engine.leading.clear()

    async def submit(self, name: str, text: str, desired: DesiredState = DesiredState.LAUNCHED) -> None:
        file = parse_unit_file(text, name)
        unit, _ = build_unit(name, file)
        registry = self.registries[0] if self.registries else self.registry()
        await registry.create_unit(StoredUnit(name, file, desired), unit.requirements.global_)

    def where(self, name: str) -> list[str]:
        """Machines whose (simulated) systemd runs ``name`` right now."""
        return sorted(m.id for m in self.machines.values() if name in m.running())

    def placement(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for machine in self.machines.values():
            for name in machine.running():
                result.setdefault(name, []).append(machine.id)
        return {name: sorted(ids) for name, ids in result.items()}

    async def close(self) -> None:
        for sim in list(self.machines.values()):
            await _cancel(sim.task)
        for engine in self.engines:
            await _cancel(engine.task)
        for registry in self.registries:
            with contextlib.suppress(Exception):
                await registry.close()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
