"""The cluster's state in etcd: units, machines, placements, unit states, leadership.

Everything that reads or writes fleet's records goes through :class:`Registry`; callers
deal in model records (``StoredUnit``, ``MachineState`` ...) and never see a key. Writes
that must not race are transactions: creating a unit only if absent, changing desired
state only if the unit is still there, registering a machine only if no live machine
holds the id, and every engine write guarded by its leadership.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile
from fleetd.registry.etcd import MAX_TXN_OPS, BatchWriter, Etcd
from fleetd.registry.keys import Keys


class RegistryError(Exception):
    """A request the registry refused; the message says why and what to do."""


class UnitExists(RegistryError):
    pass


class UnitNotFound(RegistryError):
    pass


class MachineIdInUse(RegistryError):
    """Another live fleetd holds this machine id."""


class NotLeader(RegistryError):
    """An engine write was refused because this engine no longer holds leadership."""


# -- encoding ----------------------------------------------------------------------------


def _dumps(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def encode_unit(unit: StoredUnit) -> bytes:
    return _dumps({"name": unit.name, "options": unit.file.to_options(), "desiredState": str(unit.desired)})


def decode_stored_unit(raw: bytes) -> StoredUnit:
    data = json.loads(raw)
    return StoredUnit(data["name"], UnitFile.from_options(data["options"]), DesiredState(data["desiredState"]))


decode_scheduled_unit = decode_stored_unit


def encode_machine(machine: MachineState) -> bytes:
    return _dumps(
        {"id": machine.id, "publicIP": machine.public_ip, "metadata": dict(machine.metadata), "version": machine.version}
    )


def decode_machine(raw: bytes) -> MachineState:
    data = json.loads(raw)
    return MachineState(data["id"], data.get("publicIP", ""), dict(data.get("metadata") or {}), data.get("version", ""))


def decode_metadata(raw: bytes | None) -> dict[str, str]:
    return {} if not raw else {str(k): str(v) for k, v in json.loads(raw).items()}


def encode_state(state: UnitState) -> bytes:
    return _dumps(
        {
            "name": state.name,
            "machineID": state.machine_id,
            "hash": state.hash,
            "load": state.load_state,
            "active": state.active_state,
            "sub": state.sub_state,
        }
    )


def decode_state(raw: bytes) -> UnitState:
    data = json.loads(raw)
    return UnitState(data["name"], data["machineID"], data["hash"], data["load"], data["active"], data["sub"])


# -- leadership ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Leadership:
    """Proof of holding the engine leader key: its creation revision identifies the term.

    A guard compares that revision, so a write from a previous term (a deposed engine whose
    lease expired while it was partitioned) is refused even if the same machine won again.
    """

    machine_id: str
    lease: int
    create_revision: int


# -- the registry -------------------------------------------------------------------------


class Registry:
    def __init__(self, etcd: Etcd, prefix: str | None = None) -> None:
        self.etcd = etcd
        self.keys = Keys(prefix) if prefix else Keys()

    # units ------------------------------------------------------------------------------

    def _unit_ops(self, unit: StoredUnit, is_global: bool) -> list[Any]:
        value = encode_unit(unit)
        ops = [self.etcd.op_put(self.keys.unit(unit.name), value)]
        if is_global:
            ops.append(self.etcd.op_put(self.keys.global_unit(unit.name), value))
        return ops

    async def create_unit(self, unit: StoredUnit, is_global: bool) -> None:
        """Store a new unit; refuses (and changes nothing) when the name is taken."""
        ok, _ = await self.etcd.txn(
            [self.etcd.cmp_absent(self.keys.unit(unit.name))], self._unit_ops(unit, is_global)
        )
        if not ok:
            raise UnitExists(f"unit {unit.name} already exists")

    async def create_units(self, units: Iterable[tuple[StoredUnit, bool]]) -> None:
        """Bulk create (benchmarks, large submits): batched, each unit only if absent.

        Units already present are left unchanged and silently skipped, so a retried
        batch is harmless.
        """
        batch: list[tuple[StoredUnit, bool]] = list(units)
        size = MAX_TXN_OPS // 2  # a global unit takes two operations
        chunks = [batch[start : start + size] for start in range(0, len(batch), size)]
        in_flight = asyncio.Semaphore(4)

        async def write(chunk: list[tuple[StoredUnit, bool]]) -> None:
            ops = [
                self.etcd.txn_op([self.etcd.cmp_absent(self.keys.unit(u.name))], self._unit_ops(u, g))
                for u, g in chunk
            ]
            async with in_flight:
                await self.etcd.txn([], ops)

        await asyncio.gather(*(write(chunk) for chunk in chunks))

    async def replace_unit(self, unit: StoredUnit, is_global: bool) -> None:
        """Swap a unit's body (``--replace``) keeping the name; creates it when absent."""
        ops = self._unit_ops(unit, is_global)
        if not is_global:
            ops.append(self.etcd.op_delete(self.keys.global_unit(unit.name)))
        await self.etcd.txn([], ops)

    async def get_unit(self, name: str) -> StoredUnit | None:
        kv = await self.etcd.get(self.keys.unit(name))
        return None if kv is None else decode_stored_unit(kv.value)

    async def units(self) -> list[StoredUnit]:
        items, _ = await self.etcd.get_prefix(self.keys.units)
        return sorted((decode_stored_unit(kv.value) for kv in items), key=lambda u: u.name)

    async def set_desired_state(self, name: str, desired: DesiredState) -> StoredUnit:
        """Change a unit's desired state, only if the unit has not changed since read."""
        for _ in range(10):
            kv = await self.etcd.get(self.keys.unit(name))
            if kv is None:
                raise UnitNotFound(f"unit {name} not found")
            current = decode_stored_unit(kv.value)
            updated = StoredUnit(current.name, current.file, desired)
            value = encode_unit(updated)
            ok, _ = await self.etcd.txn(
                [self.etcd.cmp_mod(kv.key, kv.mod_revision)],
                [
                    self.etcd.op_put(kv.key, value),
                    self.etcd.txn_op(
                        [self.etcd.cmp_present(self.keys.global_unit(name))],
                        [self.etcd.op_put(self.keys.global_unit(name), value)],
                    ),
                ],
            )
            if ok:
                return updated
        raise RegistryError(f"unit {name} kept changing; try again")

    async def destroy_unit(self, name: str) -> bool:
        """Remove a unit; the engine then unschedules it. False when it did not exist."""
        ok, _ = await self.etcd.txn(
            [self.etcd.cmp_present(self.keys.unit(name))],
            [self.etcd.op_delete(self.keys.unit(name)), self.etcd.op_delete(self.keys.global_unit(name))],
        )
        return ok

    # machines ---------------------------------------------------------------------------

    async def register_machine(self, machine: MachineState, lease: int) -> None:
        """Publish this machine's entry on its lease.

        Refused with :class:`MachineIdInUse` when the id is held under another lease
        that is still alive: two fleetd with one machine id would fight over its units.
        The same lease (a re-registration after a metadata change) is fine.
        """
        key = self.keys.machine(machine.id)
        value = encode_machine(machine)
        ok, _ = await self.etcd.txn(
            [self.etcd.cmp_absent(key)], [self.etcd.op_put(key, value, lease=lease)]
        )
        if ok:
            return
        existing = await self.etcd.get(key)
        if existing is None or existing.lease == lease:
            ok, _ = await self.etcd.txn(
                [self.etcd.cmp_lease(key, existing.lease if existing else 0)] if existing else [self.etcd.cmp_absent(key)],
                [self.etcd.op_put(key, value, lease=lease)],
            )
            if ok:
                return
            existing = await self.etcd.get(key)
        holder = decode_machine(existing.value) if existing else None
        where = f" (public IP {holder.public_ip})" if holder and holder.public_ip else ""
        raise MachineIdInUse(
            f"machine ID {machine.id} is already registered by another live fleetd{where}; "
            "each machine needs a unique /etc/machine-id (regenerate it with systemd-machine-id-setup "
            "on cloned machines). Retrying until that registration expires."
        )

    async def dynamic_metadata(self, machine_id: str) -> dict[str, str]:
        """Metadata set through the API for a machine (kept across agent restarts)."""
        kv = await self.etcd.get(self.keys.machine_metadata(machine_id))
        return decode_metadata(kv.value if kv else None)

    async def update_dynamic_metadata(
        self, machine_id: str, set_: Mapping[str, str], remove: Iterable[str] = ()
    ) -> dict[str, str]:
        """Change a machine's dynamic metadata atomically (compare-and-swap on its key).

        The machine's agent watches this key and re-publishes its machine entry, so the
        engine sees the new metadata without a restart.
        """
        key = self.keys.machine_metadata(machine_id)
        for _ in range(10):
            kv = await self.etcd.get(key)
            current = decode_metadata(kv.value if kv else None)
            updated = dict(current)
            updated.update(set_)
            for name in remove:
                updated.pop(name, None)
            compare = [self.etcd.cmp_absent(key)] if kv is None else [self.etcd.cmp_mod(key, kv.mod_revision)]
            op = self.etcd.op_put(key, _dumps(updated)) if updated else self.etcd.op_delete(key)
            ok, _ = await self.etcd.txn(compare, [op])
            if ok:
                return updated
        raise RegistryError(f"metadata of machine {machine_id} kept changing; try again")

    async def machines(self) -> list[MachineState]:
        items, _ = await self.etcd.get_prefix(self.keys.machines)
        return sorted((decode_machine(kv.value) for kv in items), key=lambda m: m.id)

    # unit states ------------------------------------------------------------------------

    async def publish_states(
        self, machine_id: str, lease: int, changed: Iterable[UnitState], removed: Iterable[str] = ()
    ) -> None:
        """Write this machine's changed unit states (on its lease) and drop removed ones."""
        writer = BatchWriter(self.etcd)
        for state in changed:
            writer.add(self.etcd.op_put(self.keys.state(state.name, machine_id), encode_state(state), lease=lease))
        for name in removed:
            writer.add(self.etcd.op_delete(self.keys.state(name, machine_id)))
        await writer.commit()

    async def unit_states(self, name: str | None = None) -> list[UnitState]:
        prefix = self.keys.unit_states(name) if name else self.keys.states
        items, _ = await self.etcd.get_prefix(prefix)
        return sorted((decode_state(kv.value) for kv in items), key=lambda s: (s.name, s.machine_id))

    # schedule ---------------------------------------------------------------------------

    async def placements(self) -> dict[str, list[str]]:
        """unit name -> machines it is scheduled on (one, for non-global units)."""
        items, _ = await self.etcd.get_prefix(self.keys.schedule)
        result: dict[str, list[str]] = {}
        for kv in items:
            machine_id, name = self.keys.split_placement(kv.key)
            result.setdefault(name, []).append(machine_id)
        return result

    async def machine_schedule(self, machine_id: str) -> tuple[dict[str, ScheduledUnit], int]:
        items, revision = await self.etcd.get_prefix(self.keys.machine_schedule(machine_id))
        prefix = self.keys.machine_schedule(machine_id)
        return {kv.key[len(prefix):]: decode_scheduled_unit(kv.value) for kv in items}, revision

    async def global_units(self) -> tuple[dict[str, StoredUnit], int]:
        items, revision = await self.etcd.get_prefix(self.keys.globals)
        return {kv.key[len(self.keys.globals):]: decode_stored_unit(kv.value) for kv in items}, revision

    # leadership -------------------------------------------------------------------------

    async def acquire_leadership(self, machine_id: str, lease: int) -> Leadership | None:
        """Take the engine leader key if nobody holds it; None when another engine does."""
        key = self.keys.leader
        ok, responses = await self.etcd.txn(
            [self.etcd.cmp_absent(key)],
            [self.etcd.op_put(key, machine_id.encode(), lease=lease), self.etcd.op_get(key)],
            [self.etcd.op_get(key)],
        )
        if not ok:
            return None
        _, got = responses[-1][0]
        return Leadership(machine_id, lease, int(got.create_revision))

    async def leader(self) -> str | None:
        kv = await self.etcd.get(self.keys.leader)
        return None if kv is None else kv.value.decode()

    def leader_guard(self, leadership: Leadership) -> list[Any]:
        return [self.etcd.cmp_create(self.keys.leader, leadership.create_revision)]

    async def unplaceable(self) -> dict[str, str]:
        """unit name -> the engine's reason it cannot be placed (what users are shown)."""
        prefix = self.keys.unplaceable_prefix
        items, _ = await self.etcd.get_prefix(prefix)
        return {kv.key[len(prefix):]: kv.value.decode() for kv in items}

    async def apply_schedule(
        self,
        leadership: Leadership,
        puts: Iterable[tuple[str, ScheduledUnit]],
        deletes: Iterable[tuple[str, str]],
        reasons: Mapping[str, str | None] | None = None,
    ) -> None:
        """Write placements ``(machine, unit)``, remove ``(machine, name)``, and set or clear
        unplaceable reasons (``None`` clears), all guarded by leadership.

        Deletes go first so a unit moving between machines is never briefly on both.
        Raises :class:`NotLeader` when the guard fails: nothing of that chunk was written.
        """
        writer = BatchWriter(self.etcd, guard=self.leader_guard(leadership))
        for machine_id, name in deletes:
            writer.add(self.etcd.op_delete(self.keys.placement(machine_id, name)))
        for machine_id, unit in puts:
            writer.add(self.etcd.op_put(self.keys.placement(machine_id, unit.name), encode_unit(unit)))
        for name, reason in (reasons or {}).items():
            key = self.keys.unplaceable(name)
            writer.add(self.etcd.op_delete(key) if reason is None else self.etcd.op_put(key, reason.encode()))
        if not await writer.commit():
            raise NotLeader(f"engine on {leadership.machine_id} lost leadership; write refused")
