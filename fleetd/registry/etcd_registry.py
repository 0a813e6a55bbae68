"""The registry over etcd v3: the one implementation of :class:`Registry` the product runs.

The key layout is in :mod:`fleetd.registry.keys`, the value encoding in
:mod:`fleetd.registry.codec`; this module maps the interface's methods onto reads,
transactions, leases and watches of :class:`~fleetd.registry.etcd.Etcd`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from fleetd.model.batch import BatchError, Problem, decide_all, templates_to_read
from fleetd.model.revisions import DEFAULT_KEEP as DEFAULT_REVISIONS_KEEP
from fleetd.model.revisions import UnitRevision
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.submit import MAX_ATTEMPTS, Action, Decision, Refusal, Submission, gave_up
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile
from fleetd.model.update import UpdateRecord
from fleetd.registry.codec import (
    PEER_SECRET_BYTES,
    EventIds,
    RecordError,
    decode_machine,
    decode_metadata,
    decode_peer_secret,
    decode_state,
    decode_stored_unit,
    decode_unit_revision,
    decode_update_record,
    encode_machine,
    encode_metadata,
    encode_peer_secret,
    encode_state,
    encode_unit,
    encode_unit_revision,
    encode_update_record,
)
from fleetd.registry.errors import (
    LeaseNotFound,
    MachineIdInUse,
    MachineNotFound,
    NotLeader,
    RegistryError,
    Resync,
    UnitExists,
    UnitNotFound,
    UnreadableRecord,
    UpdateConflict,
)
from fleetd.registry.etcd import (
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    BatchWriter,
    Etcd,
    EtcdConfig,
    EtcdError,
    KeyValue,
    chunks,
    op_size,
)
from fleetd.registry.etcd_history import EtcdHistory
from fleetd.registry.keys import Keys
from fleetd.registry.registry import ClusterRead, Leadership, MachineEvent, PlacementEvent, Registry, UnitEvent

log = logging.getLogger(__name__)

E = TypeVar("E")

# The decode memo is dropped when it grows past this (names churn, e.g. template instances).
MEMO_LIMIT = 65536
# A batch of up to this many units reads them one by one (at once); a larger one reads every
# unit in one prefix read, which is cheaper than hundreds of reads.
FEW_READS = 16
# A unit's write in a batch is up to four operations (its record, its global copy or the
# nested transaction that updates one, its revision record and the deletion of the oldest
# kept revision); etcd counts a nested transaction's operations too. Batches are split by
# operations (see _op_runs), so a batch of creates still takes about 64 units a transaction.


class EtcdRegistry(EtcdHistory, Registry):
    def __init__(self, etcd: Etcd, prefix: str | None = None, revisions_keep: int = DEFAULT_REVISIONS_KEEP) -> None:
        self._etcd = etcd
        self._event_ids = EventIds()
        self._revisions_keep = max(1, revisions_keep)
        self._keys = Keys(prefix) if prefix else Keys()
        # name -> (stored bytes, decoded unit): a placement holds the same bytes as its
        # unit, so the engine's thousands of placement events decode to the very object
        # it already has (no JSON parse; equality is then an identity check).
        self._memo: dict[str, tuple[bytes, StoredUnit]] = {}
        # key -> (stored bytes, decoded state): listings read every state each time (GET
        # /state, GET /units for currentState), and most are unchanged since the last one
        self._state_memo: dict[str, tuple[bytes, UnitState]] = {}
        # unreadable records already logged (key -> the bad value), and how many by kind
        self._reported: dict[str, bytes] = {}
        self._bad_counts: dict[str, int] = {}

    @property
    def requests(self) -> int:
        return self._etcd.requests

    async def close(self) -> None:
        await self._etcd.close()

    # decoding ---------------------------------------------------------------------------

    def bad_record_counts(self) -> dict[str, int]:
        return dict(self._bad_counts)

    def _bad(self, kind: str, key: str, raw: bytes, exc: Exception) -> str:
        """Report an unreadable record: logged once per key and value (not on every read
        of a listing or every watch replay), counted by kind; returns the reason."""
        reason = str(exc)
        if self._reported.get(key) != raw:
            if len(self._reported) >= MEMO_LIMIT:
                self._reported.clear()
            self._reported[key] = raw
            self._bad_counts[kind] = self._bad_counts.get(kind, 0) + 1
            log.warning("unreadable %s record at %s, skipped: %s", kind, key, reason)
        return reason

    def _unit(self, name: str, raw: bytes, what: str) -> StoredUnit:
        cached = self._memo.get(name)
        if cached is not None and cached[0] == raw:
            return cached[1]
        unit = decode_stored_unit(raw, f"{what} {name}")
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[name] = (raw, unit)
        return unit

    def _state(self, kv: KeyValue) -> UnitState:
        cached = self._state_memo.get(kv.key)
        if cached is not None and cached[0] == kv.value:
            return cached[1]
        state = decode_state(kv.value, f"unit state at {kv.key}")
        if len(self._state_memo) >= MEMO_LIMIT:
            self._state_memo.clear()
        self._state_memo[kv.key] = (kv.value, state)
        return state

    def _unit_event(self, key: str, name: str, raw: bytes | None, what: str) -> UnitEvent:
        if raw is None:
            return UnitEvent(name)
        try:
            return UnitEvent(name, self._unit(name, raw, what))
        except RecordError as exc:
            return UnitEvent(name, None, self._bad(what, key, raw, exc))

    def _placement_event(self, key: str, raw: bytes | None) -> PlacementEvent:
        machine_id, _, name = key[len(self._keys.schedule) :].partition("/")
        if raw is None:
            return PlacementEvent(machine_id, name)
        try:
            return PlacementEvent(machine_id, name, self._unit(name, raw, "placement of"))
        except RecordError as exc:
            return PlacementEvent(machine_id, name, None, self._bad("placement", key, raw, exc))

    def _machine_event(self, key: str, machine_id: str, raw: bytes | None) -> MachineEvent:
        if raw is None:
            return MachineEvent(machine_id)
        try:
            return MachineEvent(machine_id, decode_machine(raw, f"machine {machine_id}"))
        except RecordError as exc:
            return MachineEvent(machine_id, None, self._bad("machine", key, raw, exc))

    def _readable(self, kind: str, items: Iterable[KeyValue], decode: Callable[[KeyValue], E]) -> list[E]:
        """Decode each record, reporting and leaving out the ones that cannot be read."""
        result: list[E] = []
        for kv in items:
            try:
                result.append(decode(kv))
            except RecordError as exc:
                self._bad(kind, kv.key, kv.value, exc)
        return result

    # units ------------------------------------------------------------------------------

    def _unit_ops(self, unit: StoredUnit, is_global: bool, origin: str = "") -> list[Any]:
        """The unit's record (and its global copy), and, for a numbered body, its
        revision record with the oldest kept one beyond ``revisions_keep`` deleted."""
        etcd, keys = self._etcd, self._keys
        value = encode_unit(unit)
        ops = [etcd.op_put(keys.unit(unit.name), value)]
        if is_global:
            ops.append(etcd.op_put(keys.global_unit(unit.name), value))
        if unit.revision:
            record = UnitRevision(unit.name, unit.revision, time.time(), origin, unit.file)
            ops.append(etcd.op_put(keys.revision(unit.name, unit.revision), encode_unit_revision(record)))
            if unit.revision > self._revisions_keep:
                ops.append(etcd.op_delete(keys.revision(unit.name, unit.revision - self._revisions_keep)))
        return ops

    async def create_unit(self, unit: StoredUnit, is_global: bool, origin: str = "") -> None:
        ok, _ = await self._etcd.txn(
            [self._etcd.cmp_absent(self._keys.unit(unit.name))], self._unit_ops(unit, is_global, origin)
        )
        if not ok:
            raise UnitExists(f"unit {unit.name} already exists")

    async def create_units(self, units: Iterable[tuple[StoredUnit, bool]]) -> None:
        batch: list[tuple[StoredUnit, bool]] = list(units)
        etcd, keys = self._etcd, self._keys
        # a global unit takes two operations, so half as many units as operations fit
        sizes = [op_size(keys.unit(u.name), encode_unit(u)) * (2 if g else 1) for u, g in batch]
        # up to three operations a unit: its record, its global copy, its revision
        runs = [batch[run.start : run.stop] for run in chunks(sizes, max_ops=MAX_TXN_OPS // 3)]
        in_flight = asyncio.Semaphore(4)

        async def write(chunk: list[tuple[StoredUnit, bool]]) -> None:
            ops = [etcd.txn_op([etcd.cmp_absent(keys.unit(u.name))], self._unit_ops(u, g)) for u, g in chunk]
            async with in_flight:
                await etcd.txn([], ops)

        await asyncio.gather(*(write(run) for run in runs))

    async def replace_unit(self, unit: StoredUnit, is_global: bool, origin: str = "") -> None:
        ops = self._unit_ops(unit, is_global, origin)
        if not is_global:
            ops.append(self._etcd.op_delete(self._keys.global_unit(unit.name)))
        await self._etcd.txn([], ops)

    def _stored(self, kv: KeyValue, name: str) -> StoredUnit:
        try:
            return self._unit(name, kv.value, "unit")
        except RecordError as exc:
            reason = self._bad("unit", kv.key, kv.value, exc)
            raise UnreadableRecord(f"{reason}; destroy the unit and submit it again") from None

    async def get_unit(self, name: str) -> StoredUnit | None:
        kv = await self._etcd.get(self._keys.unit(name))
        return None if kv is None else self._stored(kv, name)

    async def units_with_errors(self) -> tuple[list[StoredUnit], dict[str, str]]:
        prefix = self._keys.units
        items, _ = await self._etcd.get_prefix(prefix)
        found: list[StoredUnit] = []
        errors: dict[str, str] = {}
        for kv in items:
            event = self._unit_event(kv.key, kv.key[len(prefix) :], kv.value, "unit")
            if event.unit is not None:
                found.append(event.unit)
            else:
                errors[event.name] = event.error or "unreadable"
        return sorted(found, key=lambda u: u.name), errors

    async def set_desired_state(self, name: str, desired: DesiredState) -> StoredUnit:
        etcd, keys = self._etcd, self._keys
        for _ in range(10):
            kv = await etcd.get(keys.unit(name))
            if kv is None:
                raise UnitNotFound(f"unit {name} not found")
            current = self._stored(kv, name)
            updated = replace(current, desired=desired)
            value = encode_unit(updated)
            ok, _ = await etcd.txn(
                [etcd.cmp_mod(kv.key, kv.mod_revision)],
                [
                    etcd.op_put(kv.key, value),
                    etcd.txn_op(
                        [etcd.cmp_present(keys.global_unit(name))], [etcd.op_put(keys.global_unit(name), value)]
                    ),
                ],
            )
            if ok:
                return updated
        raise RegistryError(f"unit {name} kept changing; try again")

    async def destroy_unit(self, name: str) -> bool:
        etcd, keys = self._etcd, self._keys
        ok, _ = await etcd.txn(
            [etcd.cmp_present(keys.unit(name))],
            [
                etcd.op_delete(keys.unit(name)),
                etcd.op_delete(keys.global_unit(name)),
                etcd.op_delete_prefix(keys.revisions(name)),
            ],
        )
        return ok

    async def revisions(self, name: str) -> list[UnitRevision]:
        items, _ = await self._etcd.get_prefix(self._keys.revisions(name))
        found = []
        for kv in sorted(items, key=lambda kv: kv.key):
            try:
                found.append(decode_unit_revision(kv.value, f"revision {kv.key}"))
            except RecordError as exc:
                self._bad("revision", kv.key, kv.value, exc)
        return found

    async def unit_revision(self, name: str, number: int) -> UnitRevision | None:
        kv = await self._etcd.get(self._keys.revision(name, number))
        if kv is None:
            return None
        try:
            return decode_unit_revision(kv.value, f"revision {kv.key}")
        except RecordError as exc:
            raise UnreadableRecord(self._bad("revision", kv.key, kv.value, exc)) from None

    # units in batches -------------------------------------------------------------------

    async def _read_units(self, names: Sequence[str]) -> dict[str, KeyValue]:
        """The stored records of ``names`` (absent ones left out): a few read one by one,
        many in one prefix read."""
        if not names:
            return {}
        etcd, keys = self._etcd, self._keys
        if len(names) <= FEW_READS:
            found = await asyncio.gather(*(etcd.get(keys.unit(name)) for name in names))
            return {name: kv for name, kv in zip(names, found, strict=True) if kv is not None}
        wanted = set(names)
        prefix = keys.units
        items, _ = await etcd.get_prefix(prefix)
        return {kv.key[len(prefix) :]: kv for kv in items if kv.key[len(prefix) :] in wanted}

    def _decode_read(self, kvs: Mapping[str, KeyValue]) -> tuple[dict[str, StoredUnit], dict[str, str]]:
        """Decoded units, and name -> why for those that cannot be read."""
        units: dict[str, StoredUnit] = {}
        unreadable: dict[str, str] = {}
        for name, kv in kvs.items():
            try:
                units[name] = self._unit(name, kv.value, "unit")
            except RecordError as exc:
                unreadable[name] = self._bad("unit", kv.key, kv.value, exc)
        return units, unreadable

    async def _decide_batch(
        self, requests: Sequence[Submission], written: Sequence[str]
    ) -> tuple[list[Decision], dict[str, int]]:
        """Read and decide ``requests``; the decisions and each unit's mod revision as
        read (absent: not there). A refusal raises BatchError naming ``written``."""
        kvs = await self._read_units([r.name for r in requests])
        existing, unreadable = self._decode_read(kvs)
        wanted = sorted(templates_to_read(requests, existing) - set(unreadable) - set(existing))
        templates, _ = self._decode_read(await self._read_units(wanted))
        templates.update({name: existing[name] for name in templates_to_read(requests, existing) if name in existing})
        try:
            decisions = decide_all(requests, existing, templates, unreadable)
        except BatchError as exc:
            raise BatchError(exc.problems, written) from None
        return decisions, {name: kv.mod_revision for name, kv in kvs.items()}

    def _batch_write(self, decision: Decision, mod_revision: int | None) -> tuple[Any, list[Any], int]:
        """One unit's conditional write: (its compare, its operations, their size)."""
        etcd, keys = self._etcd, self._keys
        name = decision.stored.name
        key = keys.unit(name)
        value = encode_unit(decision.stored)
        if decision.action is Action.CREATE:
            compare = etcd.cmp_absent(key)
            ops = self._unit_ops(decision.stored, decision.is_global, decision.origin)
        elif decision.action is Action.REPLACE:
            compare = etcd.cmp_mod(key, mod_revision or 0)
            ops = self._unit_ops(decision.stored, decision.is_global, decision.origin)
            if not decision.is_global:
                ops.append(etcd.op_delete(keys.global_unit(name)))
        else:  # SET_DESIRED: the global copy follows when there is one
            compare = etcd.cmp_mod(key, mod_revision or 0)
            global_key = keys.global_unit(name)
            ops = [
                etcd.op_put(key, value),
                etcd.txn_op([etcd.cmp_present(global_key)], [etcd.op_put(global_key, value)]),
            ]
        size = op_size(key, value) * len(ops)  # a revision record is about the size of the unit
        return compare, ops, size

    async def submit_many(self, requests: Sequence[Submission]) -> list[Decision]:
        requests = list(requests)
        if len({r.name for r in requests}) != len(requests):
            raise ValueError("a batch names each unit at most once")
        done: dict[str, Decision] = {}
        written: list[str] = []
        pending = requests
        for _ in range(MAX_ATTEMPTS):
            if not pending:
                break
            decisions, revisions = await self._decide_batch(pending, written)
            writes = []
            for decision in decisions:
                if decision.action is Action.NOTHING:
                    done[decision.stored.name] = decision
                else:
                    writes.append((decision, self._batch_write(decision, revisions.get(decision.stored.name))))
            overtaken: set[str] = set()
            # a desired-state change holds a nested transaction: its operation counts too
            counts = [len(ops) + (d.action is Action.SET_DESIRED) for d, (_, ops, _) in writes]
            for run in _op_runs([(count, size) for count, (_, (_, _, size)) in zip(counts, writes, strict=True)]):
                chunk = writes[run.start : run.stop]
                ok, _ = await self._etcd.txn(
                    [compare for _, (compare, _, _) in chunk], [op for _, (_, ops, _) in chunk for op in ops]
                )
                names = [decision.stored.name for decision, _ in chunk]
                if ok:
                    done.update((decision.stored.name, decision) for decision, _ in chunk)
                    written.extend(names)
                else:  # another writer changed one of them: decide these again
                    overtaken.update(names)
            pending = [r for r in pending if r.name in overtaken]
        if pending:
            raise BatchError([Problem(r.name, Refusal.BUSY, gave_up(r.name).message) for r in pending], written)
        decisions = [done[r.name] for r in requests]
        await self.note_replaced(decisions)
        return decisions

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        etcd, keys = self._etcd, self._keys
        unique = list(dict.fromkeys(names))
        present = await self._read_units(unique)
        targets = [name for name in unique if name in present]
        sizes = [op_size(keys.unit(name)) + op_size(keys.global_unit(name)) for name in targets]
        destroyed: list[str] = []
        for run in chunks(sizes, max_ops=MAX_TXN_OPS // 3):
            chunk = targets[run.start : run.stop]
            ops = [
                op
                for name in chunk
                for op in (
                    etcd.op_delete(keys.unit(name)),
                    etcd.op_delete(keys.global_unit(name)),
                    etcd.op_delete_prefix(keys.revisions(name)),
                )
            ]
            await etcd.txn([], ops)
            destroyed.extend(chunk)
        return destroyed

    # leases -----------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        return await self._etcd.grant(ttl)

    async def keepalive(self, lease: int) -> int:
        return await self._etcd.keepalive(lease)

    async def revoke_lease(self, lease: int) -> None:
        await self._etcd.revoke(lease)

    # machines ---------------------------------------------------------------------------

    async def register_machine(self, machine: MachineState, lease: int) -> None:
        etcd = self._etcd
        key = self._keys.machine(machine.id)
        value = encode_machine(machine)
        async with _lease_checked(lease):
            ok, _ = await etcd.txn([etcd.cmp_absent(key)], [etcd.op_put(key, value, lease=lease)])
        if ok:
            return
        existing = await etcd.get(key)
        if existing is None or existing.lease == lease:
            compare = [etcd.cmp_lease(key, existing.lease)] if existing else [etcd.cmp_absent(key)]
            ok, _ = await etcd.txn(compare, [etcd.op_put(key, value, lease=lease)])
            if ok:
                return
            existing = await etcd.get(key)
        holder: MachineState | None = None
        if existing is not None:
            try:
                holder = decode_machine(existing.value)
            except RecordError:
                holder = None
        where = f" (public IP {holder.public_ip})" if holder and holder.public_ip else ""
        raise MachineIdInUse(
            f"machine ID {machine.id} is already registered by another live fleetd{where}; "
            "each machine needs a unique /etc/machine-id (regenerate it with systemd-machine-id-setup "
            "on cloned machines). Retrying until that registration expires."
        )

    async def machine_lease(self, machine_id: str) -> int:
        kv = await self._etcd.get(self._keys.machine(machine_id))
        return 0 if kv is None else kv.lease

    async def machines(self) -> list[MachineState]:
        items, _ = await self._etcd.get_prefix(self._keys.machines)
        found = self._readable("machine", items, lambda kv: decode_machine(kv.value, f"machine at {kv.key}"))
        return sorted(found, key=lambda m: m.id)

    async def dynamic_metadata(self, machine_id: str) -> dict[str, str]:
        kv = await self._etcd.get(self._keys.machine_metadata(machine_id))
        return self._metadata_or_empty(machine_id, kv.value if kv else None)

    async def all_dynamic_metadata(self) -> dict[str, dict[str, str]]:
        prefix = self._keys.machine_metadata_prefix
        items, _ = await self._etcd.get_prefix(prefix)
        found = {kv.key[len(prefix) :]: self._metadata_or_empty(kv.key[len(prefix) :], kv.value) for kv in items}
        return {machine_id: metadata for machine_id, metadata in found.items() if metadata}

    async def update_dynamic_metadata(
        self, machine_id: str, set_: Mapping[str, str], remove: Iterable[str] = ()
    ) -> dict[str, str]:
        etcd = self._etcd
        key = self._keys.machine_metadata(machine_id)
        removed = list(remove)
        for _ in range(10):
            kv = await etcd.get(key)
            updated = decode_metadata(kv.value if kv else None)
            updated.update(set_)
            for name in removed:
                updated.pop(name, None)
            compare = [etcd.cmp_absent(key)] if kv is None else [etcd.cmp_mod(key, kv.mod_revision)]
            op = etcd.op_put(key, encode_metadata(updated)) if updated else etcd.op_delete(key)
            ok, _ = await etcd.txn(compare, [op])
            if ok:
                return updated
        raise RegistryError(f"metadata of machine {machine_id} kept changing; try again")

    async def update_machines_metadata(
        self, changes: Mapping[str, tuple[Mapping[str, str], Sequence[str]]]
    ) -> dict[str, dict[str, str]]:
        etcd, keys = self._etcd, self._keys
        if 2 * len(changes) > MAX_TXN_OPS:
            raise RegistryError(f"at most {MAX_TXN_OPS // 2} machines can be changed in one request")
        for _ in range(10):
            compare: list[Any] = []
            ops: list[Any] = []
            result: dict[str, dict[str, str]] = {}
            unknown: list[str] = []
            for machine_id, (set_, remove) in changes.items():
                if await etcd.get(keys.machine(machine_id)) is None:
                    unknown.append(machine_id)
                    continue
                key = keys.machine_metadata(machine_id)
                kv = await etcd.get(key)
                updated = self._metadata_or_empty(machine_id, kv.value if kv else None)
                updated.update(set_)
                for name in remove:
                    updated.pop(name, None)
                result[machine_id] = updated
                compare.append(etcd.cmp_present(keys.machine(machine_id)))
                compare.append(etcd.cmp_absent(key) if kv is None else etcd.cmp_mod(key, kv.mod_revision))
                ops.append(etcd.op_put(key, encode_metadata(updated)) if updated else etcd.op_delete(key))
            if unknown:
                raise MachineNotFound(f"machines not registered: {', '.join(sorted(unknown))}")
            ok, _ = await etcd.txn(compare, ops)
            if ok:
                return result
        raise RegistryError("machine metadata kept changing; try again")

    async def follow_dynamic_metadata(self, machine_id: str) -> AsyncIterator[dict[str, str]]:
        key = self._keys.machine_metadata(machine_id)
        kv = await self._etcd.get(key)
        # the revision is taken before yielding: a change made meanwhile must not be missed
        revision = kv.mod_revision if kv else await self._etcd.revision()
        yield self._metadata_or_empty(machine_id, kv.value if kv else None)
        async for batch in self._etcd.watch_prefix(key, revision + 1):
            yield self._metadata_or_empty(machine_id, batch[-1].value)

    def _metadata_or_empty(self, machine_id: str, raw: bytes | None) -> dict[str, str]:
        try:
            return decode_metadata(raw, f"dynamic metadata of machine {machine_id}")
        except RecordError as exc:
            self._bad("machine metadata", self._keys.machine_metadata(machine_id), raw or b"", exc)
            return {}

    # unit states ------------------------------------------------------------------------

    async def publish_states(
        self, machine_id: str, lease: int, changed: Iterable[UnitState], removed: Iterable[str] = ()
    ) -> None:
        writer = BatchWriter(self._etcd)
        for state in changed:
            writer.put(self._keys.state(state.name, machine_id), encode_state(state), lease=lease)
        for name in removed:
            writer.delete(self._keys.state(name, machine_id))
        async with _lease_checked(lease):
            await writer.commit()

    async def unit_states(self, name: str | None = None) -> list[UnitState]:
        prefix = self._keys.unit_states(name) if name else self._keys.states
        items, _ = await self._etcd.get_prefix(prefix)
        found = self._readable("unit state", items, self._state)
        return sorted(found, key=lambda s: (s.name, s.machine_id))

    async def unit_states_at(self, name: str | None = None) -> tuple[list[UnitState], int]:
        prefix = self._keys.unit_states(name) if name else self._keys.states
        items, revision = await self._etcd.get_prefix(prefix)
        found = self._readable("unit state", items, self._state)
        return sorted(found, key=lambda s: (s.name, s.machine_id)), revision

    async def wait_unit_changes(self, after: int) -> int:
        current = await self._etcd.revision()
        if after > current:  # a watch from there would wait for revisions that may never come
            return current
        # two watches (states, the schedule), not one on the whole prefix: units' bodies
        # and machines' entries would wake every waiter for nothing
        watches = [self._etcd.watch_prefix(prefix, after + 1) for prefix in (self._keys.states, self._keys.schedule)]

        async def first(watch: AsyncIterator[list[Any]]) -> int:
            async for batch in watch:
                return int(batch[0].revision)
            raise RegistryError("watch ended")  # watch_prefix never ends on its own

        tasks = [asyncio.ensure_future(first(watch)) for watch in watches]
        try:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            try:
                return next(iter(finished)).result()
            except Resync:
                return await self._etcd.revision()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for watch in watches:
                await watch.aclose()

    # the schedule -----------------------------------------------------------------------

    async def placements(self) -> dict[str, list[str]]:
        # keys only: a placement's value is the unit's whole body, and GET /units reads
        # every placement on every listing
        keys, _ = await self._etcd.keys_prefix(self._keys.schedule)
        result: dict[str, list[str]] = {}
        for key in keys:
            machine_id, name = self._keys.split_placement(key)
            result.setdefault(name, []).append(machine_id)
        return result

    async def machine_schedule(self, machine_id: str) -> tuple[dict[str, ScheduledUnit], int]:
        items, revision = await self._etcd.get_prefix(self._keys.machine_schedule(machine_id))
        events = [self._placement_event(kv.key, kv.value) for kv in items]
        return {e.name: e.unit for e in events if e.unit is not None}, revision

    async def watch_machine_schedule(self, machine_id: str, revision: int) -> AsyncIterator[list[PlacementEvent]]:
        async for batch in self._etcd.watch_prefix(self._keys.machine_schedule(machine_id), revision):
            yield [self._placement_event(event.key, event.value) for event in batch]

    async def global_units(self) -> tuple[dict[str, StoredUnit], int]:
        prefix = self._keys.globals
        items, revision = await self._etcd.get_prefix(prefix)
        events = [self._unit_event(kv.key, kv.key[len(prefix) :], kv.value, "global unit") for kv in items]
        return {e.name: e.unit for e in events if e.unit is not None}, revision

    async def watch_global_units(self, revision: int) -> AsyncIterator[list[UnitEvent]]:
        prefix = self._keys.globals
        async for batch in self._etcd.watch_prefix(prefix, revision):
            yield [self._unit_event(e.key, e.key[len(prefix) :], e.value, "global unit") for e in batch]

    # rolling updates --------------------------------------------------------------------

    def _update(self, kv: KeyValue) -> tuple[UpdateRecord, int]:
        try:
            return decode_update_record(kv.value, f"update {kv.key}"), kv.mod_revision
        except RecordError as exc:
            raise UnreadableRecord(self._bad("update", kv.key, kv.value, exc)) from None

    async def create_update(self, record: UpdateRecord, replacing: int = 0) -> int:
        etcd, key = self._etcd, self._keys.update(record.name)
        guard = etcd.cmp_mod(key, replacing) if replacing else etcd.cmp_absent(key)
        ok, responses = await etcd.txn([guard], [etcd.op_put(key, encode_update_record(record)), etcd.op_get(key)])
        if not ok:
            raise UpdateConflict(f"an update of {record.name} is in progress, or changed since it was read")
        return _mod_revision(responses[-1])

    async def get_update(self, name: str) -> tuple[UpdateRecord, int] | None:
        kv = await self._etcd.get(self._keys.update(name))
        return None if kv is None else self._update(kv)

    async def updates(self) -> tuple[list[tuple[UpdateRecord, int]], dict[str, str]]:
        prefix = self._keys.updates
        items, _ = await self._etcd.get_prefix(prefix)
        found: list[tuple[UpdateRecord, int]] = []
        errors: dict[str, str] = {}
        for kv in items:
            try:
                found.append(self._update(kv))
            except UnreadableRecord as exc:
                errors[kv.key[len(prefix) :]] = str(exc)
        return found, errors

    async def update_versions(self) -> dict[str, int]:
        prefix = self._keys.updates
        versions = await self._etcd.versions_prefix(prefix)
        return {key[len(prefix) :]: version for key, version in versions.items()}

    async def advance_update(
        self,
        leadership: Leadership,
        record: UpdateRecord,
        version: int,
        replaces: Mapping[str, UnitFile],
        origin: str,
    ) -> tuple[int, dict[str, int]]:
        etcd, keys = self._etcd, self._keys
        key = keys.update(record.name)
        for _ in range(MAX_ATTEMPTS):
            compare = [etcd.cmp_create(keys.leader, leadership.create_revision), etcd.cmp_mod(key, version)]
            ops: list[Any] = []
            numbers: dict[str, int] = {}
            for name, body in replaces.items():
                kv = await etcd.get(keys.unit(name))
                if kv is None:
                    continue
                try:
                    current = self._unit(name, kv.value, "unit")
                except RecordError as exc:
                    self._bad("unit", kv.key, kv.value, exc)
                    continue
                new = replace(current, file=body, revision=current.revision + 1)
                compare.append(etcd.cmp_mod(kv.key, kv.mod_revision))
                ops += self._unit_ops(new, False, origin)
                value = encode_unit(new)
                global_key = keys.global_unit(name)
                ops.append(etcd.txn_op([etcd.cmp_present(global_key)], [etcd.op_put(global_key, value)]))
                numbers[name] = new.revision
            ops += [etcd.op_put(key, encode_update_record(record)), etcd.op_get(key)]
            ok, responses = await etcd.txn(compare, ops, [etcd.op_get(keys.leader), etcd.op_get(key)])
            if ok:
                return _mod_revision(responses[-1]), numbers
            leader, stored = responses[0], responses[1]
            if not leader or int(leader[0][1].create_revision) != leadership.create_revision:
                raise NotLeader(f"engine on {leadership.machine_id} lost leadership; update step refused")
            if not stored or int(stored[0][1].mod_revision) != version:
                raise UpdateConflict(f"the update of {record.name} changed since it was read")
            # a unit changed under us (a client's write): read it again and retry
        raise RegistryError(f"the units of the update of {record.name} kept changing; will try again")

    # the engine -------------------------------------------------------------------------

    async def acquire_leadership(self, machine_id: str, lease: int) -> Leadership | None:
        etcd, key = self._etcd, self._keys.leader
        ok, responses = await etcd.txn(
            [etcd.cmp_absent(key)],
            [etcd.op_put(key, machine_id.encode(), lease=lease), etcd.op_get(key)],
            [etcd.op_get(key)],
        )
        if not ok:
            return None
        _, got = responses[-1][0]
        return Leadership(machine_id, lease, int(got.create_revision))

    async def leader(self) -> str | None:
        kv = await self._etcd.get(self._keys.leader)
        return None if kv is None else kv.value.decode(errors="replace")

    async def wait_leader_vacant(self) -> None:
        kv = await self._etcd.get(self._keys.leader)
        if kv is None:
            return
        watcher = self._etcd.watch_prefix(self._keys.leader, kv.mod_revision + 1)
        try:
            async for batch in watcher:
                if any(event.deleted for event in batch):
                    return
        finally:
            await watcher.aclose()

    async def unplaceable(self) -> dict[str, str]:
        prefix = self._keys.unplaceable_prefix
        items, _ = await self._etcd.get_prefix(prefix)
        return {kv.key[len(prefix) :]: kv.value.decode(errors="replace") for kv in items}

    async def peer_secret(self) -> bytes:
        etcd, key = self._etcd, self._keys.peer_secret
        fresh = encode_peer_secret(secrets.token_bytes(PEER_SECRET_BYTES))
        created, responses = await etcd.txn([etcd.cmp_absent(key)], [etcd.op_put(key, fresh)], [etcd.op_get(key)])
        raw = fresh if created or not responses[-1] else bytes(responses[-1][0][0])
        try:
            return decode_peer_secret(raw, f"peer secret at {key}")
        except RecordError as exc:
            raise UnreadableRecord(self._bad("peer secret", key, raw, exc)) from None

    async def apply_schedule(
        self,
        leadership: Leadership,
        puts: Iterable[tuple[str, ScheduledUnit]],
        deletes: Iterable[tuple[str, str]],
        reasons: Mapping[str, str | None] | None = None,
    ) -> None:
        etcd, keys = self._etcd, self._keys
        writer = BatchWriter(etcd, guard=[etcd.cmp_create(keys.leader, leadership.create_revision)])
        for machine_id, name in deletes:
            writer.delete(keys.placement(machine_id, name))
        for machine_id, unit in puts:
            cached = self._memo.get(unit.name)
            value = cached[0] if cached is not None and cached[1] is unit else encode_unit(unit)
            writer.put(keys.placement(machine_id, unit.name), value)
        for name, reason in (reasons or {}).items():
            key = keys.unplaceable(name)
            if reason is None:
                writer.delete(key)
            else:
                writer.put(key, reason.encode())
        if not await writer.commit():
            raise NotLeader(f"engine on {leadership.machine_id} lost leadership; write refused")

    async def read_cluster(self) -> ClusterRead:
        keys = self._keys
        units, rev_units = await self._etcd.get_prefix(keys.units)
        machines, rev_machines = await self._etcd.get_prefix(keys.machines)
        placements, rev_placements = await self._etcd.get_prefix(keys.schedule)
        return ClusterRead(
            units=[self._unit_event(kv.key, kv.key[len(keys.units) :], kv.value, "unit") for kv in units],
            machines=[self._machine_event(kv.key, kv.key[len(keys.machines) :], kv.value) for kv in machines],
            placements=[self._placement_event(kv.key, kv.value) for kv in placements],
            # watch from the oldest read: replaying a few events is harmless
            revision=min(rev_units, rev_machines, rev_placements),
        )

    async def watch_units(self, revision: int) -> AsyncIterator[list[UnitEvent]]:
        prefix = self._keys.units
        async for batch in self._etcd.watch_prefix(prefix, revision):
            events = [self._unit_event(e.key, e.key[len(prefix) :], e.value, "unit") for e in batch]
            for event in events:
                if event.deleted:
                    self._memo.pop(event.name, None)
            yield events

    async def watch_machines(self, revision: int) -> AsyncIterator[list[MachineEvent]]:
        prefix = self._keys.machines
        async for batch in self._etcd.watch_prefix(prefix, revision):
            yield [self._machine_event(e.key, e.key[len(prefix) :], e.value) for e in batch]

    async def watch_placements(self, revision: int) -> AsyncIterator[list[PlacementEvent]]:
        async for batch in self._etcd.watch_prefix(self._keys.schedule, revision):
            yield [self._placement_event(e.key, e.value) for e in batch]


def _mod_revision(response: Any) -> int:
    """The mod revision of the key a transaction's get read (its last operation)."""
    if not response:
        raise RegistryError("the record just written cannot be read back")
    return int(response[0][1].mod_revision)


def _op_runs(units: Sequence[tuple[int, int]]) -> list[range]:
    """Split units, each ``(operations, bytes)``, in order, into transactions that etcd
    takes: at most MAX_TXN_OPS operations (and as many compares, one a unit) and
    MAX_TXN_BYTES bytes each; a unit bigger than that goes alone."""
    runs: list[range] = []
    start, ops, size = 0, 0, 0
    for index, (unit_ops, unit_size) in enumerate(units):
        if index > start and (ops + unit_ops > MAX_TXN_OPS or size + unit_size > MAX_TXN_BYTES):
            runs.append(range(start, index))
            start, ops, size = index, 0, 0
        ops += unit_ops
        size += unit_size
    if start < len(units):
        runs.append(range(start, len(units)))
    return runs


def connect(
    config: EtcdConfig, prefix: str | None = None, revisions_keep: int = DEFAULT_REVISIONS_KEEP
) -> EtcdRegistry:
    """A registry on the etcd cluster ``config`` describes (connects on first use);
    ``revisions_keep``: how many bodies of each unit to keep."""
    return EtcdRegistry(Etcd(config), prefix, revisions_keep)


@contextlib.asynccontextmanager
async def _lease_checked(lease: int) -> AsyncIterator[None]:
    """etcd refuses a write on an expired lease with a generic error: name it, so the
    agent registers again instead of retrying a write that can never succeed."""
    try:
        yield
    except EtcdError as exc:
        if "lease not found" in str(exc):
            raise LeaseNotFound(f"lease {lease:x} not found (expired)") from exc
        raise
