"""An in-memory :class:`Registry`: the fake the engine and agent loops are unit-tested on.

It keeps etcd's semantics that the loops depend on, and the contract test suite
(``tests/integration/test_registry_contract.py``) runs the same cases against it and
against a real etcd to keep it that way:

- one global revision, raised once per write (a transaction's keys share a revision);
- records on a lease vanish together when the lease ends, and watchers see the deletes;
- watches replay history from any revision still kept, in order, in batches, and raise
  :class:`Resync` from before a :meth:`compact`;
- deleting a missing record changes nothing and produces no event.

Time does not pass here: a lease ends only when revoked or when a test calls
:meth:`expire_lease`, so tests decide exactly when a machine or an engine is lost
instead of sleeping through a TTL.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleetd.model.batch import decide_all, templates_to_read
from fleetd.model.history import HistoryEvent, clipped
from fleetd.model.revisions import DEFAULT_KEEP as DEFAULT_REVISIONS_KEEP
from fleetd.model.revisions import UnitRevision
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.submit import Action, Decision, Submission
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile
from fleetd.model.update import UpdateRecord
from fleetd.registry.codec import (
    PEER_SECRET_BYTES,
    EventIds,
    RecordError,
    decode_update_record,
    encode_update_record,
    event_id_before,
)
from fleetd.registry.errors import (
    LeaseNotFound,
    MachineIdInUse,
    MachineNotFound,
    NotLeader,
    Resync,
    UnitExists,
    UnitNotFound,
    UnreadableRecord,
    UpdateConflict,
)
from fleetd.registry.registry import ClusterRead, Leadership, MachineEvent, PlacementEvent, Registry, UnitEvent

# Record keys are tuples: (kind, *names). Kinds mirror the etcd layout's prefixes.
Key = tuple[str, ...]
UNITS, GLOBALS, MACHINES, METADATA, SCHEDULE, STATES, LEADER, UNPLACEABLE, PEER, EVENTS, REVISIONS = (
    "units", "global", "machines", "machine-metadata", "schedule", "states", "leader", "unplaceable", "peer",
    "events", "revisions",
)  # fmt: skip
UPDATES = "updates"


@dataclass
class _Entry:
    value: Any
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class _Unreadable:
    """A unit record as a broken writer left it (see :meth:`MemoryRegistry.corrupt_unit`)."""

    reason: str


@dataclass(frozen=True)
class _Change:
    revision: int
    key: Key
    value: Any  # None: deleted


class MemoryRegistry(Registry):
    def __init__(self) -> None:
        self._event_ids = EventIds()
        self.revisions_keep = DEFAULT_REVISIONS_KEEP
        self._store: dict[Key, _Entry] = {}
        self._revision = 1  # etcd's first revision of an empty store
        self._history: list[_Change] = []
        self._compacted = 0
        self._leases: dict[int, int] = {}
        self._lease_ids = itertools.count(0x1000)
        self._wakeup: asyncio.Event | None = None
        self._requests = 0
        self.closed = False

    # -- the store ------------------------------------------------------------------------

    async def _request(self) -> None:
        """Every operation yields to the loop once, as a network round trip would."""
        self._requests += 1
        await asyncio.sleep(0)

    @property
    def requests(self) -> int:
        return self._requests

    async def close(self) -> None:
        self.closed = True

    def _commit(self, changes: Iterable[tuple[Key, Any, int]]) -> int:
        """Apply puts (value) and deletes (value None) at one new revision."""
        applied: list[_Change] = []
        revision = self._revision + 1
        for key, value, lease in changes:
            if value is None:
                if self._store.pop(key, None) is not None:
                    applied.append(_Change(revision, key, None))
                continue
            entry = self._store.get(key)
            created = entry.create_revision if entry is not None else revision
            self._store[key] = _Entry(value, created, revision, lease)
            applied.append(_Change(revision, key, value))
        if applied:
            self._revision = revision
            self._history.extend(applied)
            if self._wakeup is not None:
                self._wakeup.set()
                self._wakeup = None
        return self._revision

    def _items(self, kind: str, *names: str) -> list[tuple[Key, _Entry]]:
        """Records of a kind (and name prefix), in etcd's order: sorted by key."""
        size = 1 + len(names)
        found = [(k, e) for k, e in self._store.items() if k[:size] == (kind, *names)]
        return sorted(found, key=lambda item: item[0])

    async def _watch(self, match: Callable[[Key], bool], revision: int) -> AsyncIterator[list[_Change]]:
        position = max(1, revision)
        while True:
            if position < self._compacted:
                raise Resync(self._compacted)
            start = bisect.bisect_left(self._history, position, key=lambda change: change.revision)
            batch = [change for change in self._history[start:] if match(change.key)]
            position = self._revision + 1
            if batch:
                yield batch
                continue
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            await self._wakeup.wait()

    # -- test controls --------------------------------------------------------------------

    def expire_lease(self, lease: int) -> None:
        """End a lease as if its TTL ran out (a machine or engine died)."""
        self._leases.pop(lease, None)
        self._commit((key, None, 0) for key, entry in list(self._store.items()) if entry.lease == lease)

    def corrupt_unit(self, name: str, reason: str = "unit record: expected a JSON object, found list") -> None:
        """Store an unreadable record under a unit's name, as a broken client might."""
        self._commit([((UNITS, name), _Unreadable(f"unit {name}: {reason}"), 0)])

    def compact(self) -> None:
        """Forget all history: watches from an older revision then raise Resync."""
        self._compacted = self._revision
        self._history.clear()

    @property
    def revision(self) -> int:
        return self._revision

    # -- units ----------------------------------------------------------------------------

    def _unit_changes(self, unit: StoredUnit, is_global: bool, origin: str = "") -> list[tuple[Key, Any, int]]:
        changes: list[tuple[Key, Any, int]] = [((UNITS, unit.name), unit, 0)]
        changes.append(((GLOBALS, unit.name), unit if is_global else None, 0))
        if unit.revision:
            record = UnitRevision(unit.name, unit.revision, time.time(), origin, unit.file)
            changes.append(((REVISIONS, unit.name, f"{unit.revision:010d}"), record, 0))
            if unit.revision > self.revisions_keep:
                changes.append(((REVISIONS, unit.name, f"{unit.revision - self.revisions_keep:010d}"), None, 0))
        return changes

    def _revision_keys(self, name: str) -> list[Key]:
        return sorted(key for key in self._store if key[0] == REVISIONS and key[1] == name)

    async def revisions(self, name: str) -> list[UnitRevision]:
        await self._request()
        return [self._store[key].value for key in self._revision_keys(name)]

    async def unit_revision(self, name: str, number: int) -> UnitRevision | None:
        await self._request()
        entry = self._store.get((REVISIONS, name, f"{number:010d}"))
        return None if entry is None else entry.value

    async def create_unit(self, unit: StoredUnit, is_global: bool, origin: str = "") -> None:
        await self._request()
        if (UNITS, unit.name) in self._store:
            raise UnitExists(f"unit {unit.name} already exists")
        self._commit(self._unit_changes(unit, is_global, origin))

    async def create_units(self, units: Iterable[tuple[StoredUnit, bool]]) -> None:
        await self._request()
        changes = []
        for unit, is_global in units:
            if (UNITS, unit.name) not in self._store:
                changes += self._unit_changes(unit, is_global)
        self._commit(changes)

    async def replace_unit(self, unit: StoredUnit, is_global: bool, origin: str = "") -> None:
        await self._request()
        self._commit(self._unit_changes(unit, is_global, origin))

    async def get_unit(self, name: str) -> StoredUnit | None:
        await self._request()
        entry = self._store.get((UNITS, name))
        return None if entry is None else _readable(entry.value)

    async def units_with_errors(self) -> tuple[list[StoredUnit], dict[str, str]]:
        await self._request()
        found: list[StoredUnit] = []
        errors: dict[str, str] = {}
        for key, entry in self._items(UNITS):
            if isinstance(entry.value, _Unreadable):
                errors[key[1]] = entry.value.reason
            else:
                found.append(entry.value)
        return found, errors

    async def set_desired_state(self, name: str, desired: DesiredState) -> StoredUnit:
        await self._request()
        entry = self._store.get((UNITS, name))
        if entry is None:
            raise UnitNotFound(f"unit {name} not found")
        current = _readable(entry.value)
        updated = replace(current, desired=desired)
        changes: list[tuple[Key, Any, int]] = [((UNITS, name), updated, 0)]
        if (GLOBALS, name) in self._store:
            changes.append(((GLOBALS, name), updated, 0))
        self._commit(changes)
        return updated

    async def destroy_unit(self, name: str) -> bool:
        await self._request()
        if (UNITS, name) not in self._store:
            return False
        gone = [(key, None, 0) for key in self._revision_keys(name)]
        self._commit([((UNITS, name), None, 0), ((GLOBALS, name), None, 0), *gone])
        return True

    async def submit_many(self, requests: Sequence[Submission]) -> list[Decision]:
        await self._request()
        requests = list(requests)
        if len({r.name for r in requests}) != len(requests):
            raise ValueError("a batch names each unit at most once")
        existing: dict[str, StoredUnit] = {}
        unreadable: dict[str, str] = {}
        for request in requests:
            entry = self._store.get((UNITS, request.name))
            if entry is None:
                continue
            if isinstance(entry.value, _Unreadable):
                unreadable[request.name] = entry.value.reason
            else:
                existing[request.name] = entry.value
        templates: dict[str, StoredUnit] = {}
        for name in templates_to_read(requests, existing):
            entry = self._store.get((UNITS, name))
            if entry is not None and not isinstance(entry.value, _Unreadable):
                templates[name] = entry.value
        decisions = decide_all(requests, existing, templates, unreadable)  # BatchError: nothing written
        changes: list[tuple[Key, Any, int]] = []
        for decision in decisions:
            unit = decision.stored
            if decision.action in (Action.CREATE, Action.REPLACE):
                changes += self._unit_changes(unit, decision.is_global, decision.origin)
            elif decision.action is Action.SET_DESIRED:
                changes.append(((UNITS, unit.name), unit, 0))
                if (GLOBALS, unit.name) in self._store:
                    changes.append(((GLOBALS, unit.name), unit, 0))
        # one commit: the fake never splits a batch (etcd may, see Registry.submit_many)
        self._commit(changes)
        await self.note_replaced(decisions)
        return decisions

    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        await self._request()
        targets = [name for name in dict.fromkeys(names) if (UNITS, name) in self._store]
        changes: list[tuple[Key, Any, int]] = []
        for name in targets:
            changes += [((UNITS, name), None, 0), ((GLOBALS, name), None, 0)]
            changes += [(key, None, 0) for key in self._revision_keys(name)]
        self._commit(changes)
        return targets

    # -- leases ---------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        await self._request()
        lease = next(self._lease_ids)
        self._leases[lease] = max(1, int(ttl))
        return lease

    async def keepalive(self, lease: int) -> int:
        await self._request()
        return self._leases.get(lease, 0)

    async def revoke_lease(self, lease: int) -> None:
        await self._request()
        self.expire_lease(lease)

    def _check_lease(self, lease: int) -> None:
        if lease and lease not in self._leases:
            raise LeaseNotFound(f"lease {lease:x} not found (expired)")

    # -- machines -------------------------------------------------------------------------

    async def register_machine(self, machine: MachineState, lease: int) -> None:
        await self._request()
        self._check_lease(lease)
        entry = self._store.get((MACHINES, machine.id))
        if entry is not None and entry.lease != lease:
            holder: MachineState = entry.value
            where = f" (public IP {holder.public_ip})" if holder.public_ip else ""
            raise MachineIdInUse(f"machine ID {machine.id} is already registered by another live fleetd{where}")
        self._commit([((MACHINES, machine.id), machine, lease)])

    async def machine_lease(self, machine_id: str) -> int:
        await self._request()
        entry = self._store.get((MACHINES, machine_id))
        return 0 if entry is None else entry.lease

    async def machines(self) -> list[MachineState]:
        await self._request()
        return [entry.value for _, entry in self._items(MACHINES)]

    async def dynamic_metadata(self, machine_id: str) -> dict[str, str]:
        await self._request()
        entry = self._store.get((METADATA, machine_id))
        return {} if entry is None else dict(entry.value)

    async def all_dynamic_metadata(self) -> dict[str, dict[str, str]]:
        await self._request()
        return {key[1]: dict(entry.value) for key, entry in self._items(METADATA)}

    async def update_dynamic_metadata(
        self, machine_id: str, set_: Mapping[str, str], remove: Iterable[str] = ()
    ) -> dict[str, str]:
        await self._request()
        entry = self._store.get((METADATA, machine_id))
        updated = {} if entry is None else dict(entry.value)
        updated.update(set_)
        for name in remove:
            updated.pop(name, None)
        self._commit([((METADATA, machine_id), dict(updated) if updated else None, 0)])
        return updated

    async def update_machines_metadata(
        self, changes: Mapping[str, tuple[Mapping[str, str], Sequence[str]]]
    ) -> dict[str, dict[str, str]]:
        await self._request()
        unknown = sorted(m for m in changes if (MACHINES, m) not in self._store)
        if unknown:
            raise MachineNotFound(f"machines not registered: {', '.join(unknown)}")
        result: dict[str, dict[str, str]] = {}
        writes: list[tuple[Key, Any, int]] = []
        for machine_id, (set_, remove) in changes.items():
            entry = self._store.get((METADATA, machine_id))
            updated = {} if entry is None else dict(entry.value)
            updated.update(set_)
            for name in remove:
                updated.pop(name, None)
            result[machine_id] = updated
            writes.append(((METADATA, machine_id), dict(updated) if updated else None, 0))
        self._commit(writes)
        return result

    async def follow_dynamic_metadata(self, machine_id: str) -> AsyncIterator[dict[str, str]]:
        current = await self.dynamic_metadata(machine_id)
        revision = self._revision  # before yielding: a change made meanwhile must not be missed
        yield current
        key = (METADATA, machine_id)
        async for batch in self._watch(lambda k: k == key, revision + 1):
            last = batch[-1].value
            yield {} if last is None else dict(last)

    # -- unit states ----------------------------------------------------------------------

    async def publish_states(
        self, machine_id: str, lease: int, changed: Iterable[UnitState], removed: Iterable[str] = ()
    ) -> None:
        await self._request()
        self._check_lease(lease)
        changes: list[tuple[Key, Any, int]] = [((STATES, s.name, machine_id), s, lease) for s in changed]
        changes += [((STATES, name, machine_id), None, 0) for name in removed]
        self._commit(changes)

    async def unit_states(self, name: str | None = None) -> list[UnitState]:
        await self._request()
        items = self._items(STATES, name) if name else self._items(STATES)
        return sorted((entry.value for _, entry in items), key=lambda s: (s.name, s.machine_id))

    async def unit_states_at(self, name: str | None = None) -> tuple[list[UnitState], int]:
        return await self.unit_states(name), self._revision

    async def wait_unit_changes(self, after: int) -> int:
        if after > self._revision:
            return self._revision
        try:
            async for batch in self._watch(lambda k: k[0] in (STATES, SCHEDULE), after + 1):
                return batch[0].revision
        except Resync:
            return self._revision
        raise AssertionError("a watch of the fake never ends")

    # -- the schedule ---------------------------------------------------------------------

    async def placements(self) -> dict[str, list[str]]:
        await self._request()
        result: dict[str, list[str]] = {}
        for (_, machine_id, name), _entry in self._items(SCHEDULE):
            result.setdefault(name, []).append(machine_id)
        return result

    async def machine_schedule(self, machine_id: str) -> tuple[dict[str, ScheduledUnit], int]:
        await self._request()
        return {key[2]: entry.value for key, entry in self._items(SCHEDULE, machine_id)}, self._revision

    async def watch_machine_schedule(self, machine_id: str, revision: int) -> AsyncIterator[list[PlacementEvent]]:
        async for batch in self._watch(lambda k: k[0] == SCHEDULE and k[1] == machine_id, revision):
            yield [PlacementEvent(c.key[1], c.key[2], c.value) for c in batch]

    async def global_units(self) -> tuple[dict[str, StoredUnit], int]:
        await self._request()
        return {key[1]: entry.value for key, entry in self._items(GLOBALS)}, self._revision

    async def watch_global_units(self, revision: int) -> AsyncIterator[list[UnitEvent]]:
        async for batch in self._watch(lambda k: k[0] == GLOBALS, revision):
            yield [UnitEvent(c.key[1], c.value) for c in batch]

    # -- rolling updates ------------------------------------------------------------------
    # stored encoded, as etcd holds them, so what is read back is decoded (and checked)

    def corrupt_update(self, name: str, raw: bytes = b'{"name": 7}') -> None:
        """Store an unreadable update record, as a hand edit could."""
        self._commit([((UPDATES, name), raw, 0)])

    def _update(self, name: str, entry: _Entry) -> tuple[UpdateRecord, int]:
        try:
            return decode_update_record(entry.value, f"update {name}"), entry.mod_revision
        except RecordError as exc:
            raise UnreadableRecord(str(exc)) from None

    async def create_update(self, record: UpdateRecord, replacing: int = 0) -> int:
        await self._request()
        entry = self._store.get((UPDATES, record.name))
        if (entry.mod_revision if entry is not None else 0) != replacing:
            raise UpdateConflict(f"an update of {record.name} is in progress, or changed since it was read")
        return self._commit([((UPDATES, record.name), encode_update_record(record), 0)])

    async def get_update(self, name: str) -> tuple[UpdateRecord, int] | None:
        await self._request()
        entry = self._store.get((UPDATES, name))
        return None if entry is None else self._update(name, entry)

    async def updates(self) -> tuple[list[tuple[UpdateRecord, int]], dict[str, str]]:
        await self._request()
        found: list[tuple[UpdateRecord, int]] = []
        errors: dict[str, str] = {}
        for key, entry in self._items(UPDATES):
            try:
                found.append(self._update(key[1], entry))
            except UnreadableRecord as exc:
                errors[key[1]] = str(exc)
        return found, errors

    async def update_versions(self) -> dict[str, int]:
        await self._request()
        return {key[1]: entry.mod_revision for key, entry in self._items(UPDATES)}

    async def advance_update(
        self,
        leadership: Leadership,
        record: UpdateRecord,
        version: int,
        replaces: Mapping[str, UnitFile],
        origin: str,
    ) -> tuple[int, dict[str, int]]:
        await self._request()
        leader = self._store.get((LEADER,))
        if leader is None or leader.create_revision != leadership.create_revision:
            raise NotLeader(f"engine on {leadership.machine_id} lost leadership; update step refused")
        entry = self._store.get((UPDATES, record.name))
        if entry is None or entry.mod_revision != version:
            raise UpdateConflict(f"the update of {record.name} changed since it was read")
        changes: list[tuple[Key, Any, int]] = []
        numbers: dict[str, int] = {}
        for name, body in replaces.items():
            unit = self._store.get((UNITS, name))
            if unit is None or isinstance(unit.value, _Unreadable):
                continue
            new = replace(unit.value, file=body, revision=unit.value.revision + 1)
            is_global = (GLOBALS, name) in self._store
            changes += self._unit_changes(new, is_global, origin)
            numbers[name] = new.revision
        changes.append(((UPDATES, record.name), encode_update_record(record), 0))
        return self._commit(changes), numbers

    # -- the engine -----------------------------------------------------------------------

    async def acquire_leadership(self, machine_id: str, lease: int) -> Leadership | None:
        await self._request()
        self._check_lease(lease)
        if (LEADER,) in self._store:
            return None
        revision = self._commit([((LEADER,), machine_id, lease)])
        return Leadership(machine_id, lease, revision)

    async def leader(self) -> str | None:
        await self._request()
        entry = self._store.get((LEADER,))
        return None if entry is None else entry.value

    async def wait_leader_vacant(self) -> None:
        await self._request()
        if (LEADER,) not in self._store:
            return
        async for batch in self._watch(lambda k: k == (LEADER,), self._revision + 1):
            if any(change.value is None for change in batch):
                return

    async def unplaceable(self) -> dict[str, str]:
        await self._request()
        return {key[1]: entry.value for key, entry in self._items(UNPLACEABLE)}

    # -- history -----------------------------------------------------------------------------

    async def record_events(self, events: Sequence[HistoryEvent]) -> list[HistoryEvent]:
        await self._request()
        stored = [replace(clipped(e), id=self._event_ids.next(e.time)) for e in events]
        if stored:
            self._commit([((EVENTS, e.id), e, 0) for e in stored])
        return stored

    async def events(
        self, after: str = "", limit: int = 1000, unit: str | None = None
    ) -> tuple[list[HistoryEvent], str, int]:
        await self._request()
        ids = sorted(key[1] for key in self._store if key[0] == EVENTS and key[1] > after)
        found: list[HistoryEvent] = []
        for index, event_id in enumerate(ids):
            event = self._store[(EVENTS, event_id)].value
            if unit is None or event.unit == unit:
                found.append(event)
            if len(found) >= limit:
                return found, (event_id if index < len(ids) - 1 else ""), self._revision
        return found, "", self._revision

    async def watch_events(self, revision: int) -> AsyncIterator[list[HistoryEvent]]:
        async for batch in self._watch(lambda k: k[0] == EVENTS, revision):
            found = [c.value for c in batch if c.value is not None]
            if found:
                yield found

    async def prune_events(self, keep: int, before: float) -> int:
        await self._request()
        ids = sorted(key[1] for key in self._store if key[0] == EVENTS)
        cut = event_id_before(before)
        old = [i for i in ids if i < cut]
        rest = [i for i in ids if i >= cut]
        gone = old + rest[: max(0, len(rest) - max(0, keep))]
        if gone:
            self._commit([((EVENTS, i), None, 0) for i in gone])
        return len(gone)

    async def peer_secret(self) -> bytes:
        await self._request()
        entry = self._store.get((PEER,))
        if entry is None:
            self._commit([((PEER,), secrets.token_bytes(PEER_SECRET_BYTES), 0)])
            entry = self._store[(PEER,)]
        if not isinstance(entry.value, bytes):
            raise UnreadableRecord(f"peer secret: {entry.value}")
        return entry.value

    def corrupt_peer_secret(self, reason: str = "not base64") -> None:
        """Leave a peer secret that cannot be used, as a hand edit could."""
        self._commit([((PEER,), reason, 0)])

    async def apply_schedule(
        self,
        leadership: Leadership,
        puts: Iterable[tuple[str, ScheduledUnit]],
        deletes: Iterable[tuple[str, str]],
        reasons: Mapping[str, str | None] | None = None,
    ) -> None:
        await self._request()
        leader = self._store.get((LEADER,))
        if leader is None or leader.create_revision != leadership.create_revision:
            raise NotLeader(f"engine on {leadership.machine_id} lost leadership; write refused")
        changes: list[tuple[Key, Any, int]] = [((SCHEDULE, m, name), None, 0) for m, name in deletes]
        changes += [((SCHEDULE, m, unit.name), unit, 0) for m, unit in puts]
        changes += [((UNPLACEABLE, name), reason, 0) for name, reason in (reasons or {}).items()]
        self._commit(changes)

    async def read_cluster(self) -> ClusterRead:
        await self._request()
        return ClusterRead(
            units=[_unit_event(key[1], entry.value) for key, entry in self._items(UNITS)],
            machines=[MachineEvent(key[1], entry.value) for key, entry in self._items(MACHINES)],
            placements=[PlacementEvent(key[1], key[2], entry.value) for key, entry in self._items(SCHEDULE)],
            revision=self._revision,
        )

    async def watch_units(self, revision: int) -> AsyncIterator[list[UnitEvent]]:
        async for batch in self._watch(lambda k: k[0] == UNITS, revision):
            yield [_unit_event(c.key[1], c.value) for c in batch]

    async def watch_machines(self, revision: int) -> AsyncIterator[list[MachineEvent]]:
        async for batch in self._watch(lambda k: k[0] == MACHINES, revision):
            yield [MachineEvent(c.key[1], c.value) for c in batch]

    async def watch_placements(self, revision: int) -> AsyncIterator[list[PlacementEvent]]:
        async for batch in self._watch(lambda k: k[0] == SCHEDULE, revision):
            yield [PlacementEvent(c.key[1], c.key[2], c.value) for c in batch]


def _readable(value: StoredUnit | _Unreadable) -> StoredUnit:
    if isinstance(value, _Unreadable):
        raise UnreadableRecord(f"{value.reason}; destroy the unit and submit it again")
    return value


def _unit_event(name: str, value: StoredUnit | _Unreadable | None) -> UnitEvent:
    if isinstance(value, _Unreadable):
        return UnitEvent(name, None, value.reason)
    return UnitEvent(name, value)
