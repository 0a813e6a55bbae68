"""The registry interface: the cluster's shared state as typed records, methods and events.

Everything that reads or writes fleet's records goes through a :class:`Registry`; callers
deal in model records (``StoredUnit``, ``MachineState`` ...) and typed events, and never
see a key, a lease's storage or a transaction. Two implementations exist:
:class:`~fleetd.registry.etcd_registry.EtcdRegistry` (the product, over etcd v3) and
:class:`~fleetd.registry.memory.MemoryRegistry` (an in-memory fake for fast tests of the
engine and agent loops). One contract test suite runs the same cases against both, so
the fake cannot drift from what etcd really does.

The guarantees every implementation gives:

- Writes that must not race are atomic: creating a unit only if absent, changing desired
  state only if the unit is still there, registering a machine only if no other live
  lease holds its id, and every engine write guarded by its leadership term.
- Machine entries and unit states live on the agent's lease: when the lease ends (expired
  or revoked) they vanish together, and watchers see the deletes.
- Watches start at a revision returned by a read, deliver every later change in order,
  in batches, and raise :class:`Resync` when that history is gone.
- A record that cannot be decoded is reported (an event with ``error`` set, a warning in
  the log for listings), never raised into the caller's loop.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fleetd.model.history import HistoryEvent, revision_events
from fleetd.model.names import parse_unit_name
from fleetd.model.revisions import UnitRevision
from fleetd.model.state import MachineState, ScheduledUnit, StoredUnit, UnitState
from fleetd.model.submit import MAX_ATTEMPTS, Action, Decision, Submission, decide, gave_up, template_to_read
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile
from fleetd.model.update import (
    ORIGIN_UPDATE,
    UpdateError,
    UpdateNotFound,
    UpdateParams,
    UpdateRecord,
    check_target,
    current_of,
    new_update,
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

log = logging.getLogger("fleetd.registry")

__all__ = [
    "ClusterRead",
    "Leadership",
    "LeaseNotFound",
    "MachineEvent",
    "MachineIdInUse",
    "MachineNotFound",
    "NotLeader",
    "PlacementEvent",
    "Registry",
    "RegistryError",
    "Resync",
    "UnitEvent",
    "UnitExists",
    "UnitNotFound",
    "UnreadableRecord",
    "UpdateConflict",
]


# -- records and events ------------------------------------------------------------------


@dataclass(frozen=True)
class Leadership:
    """Proof of holding the engine leadership: its term is the leader record's creation
    revision, so a write from a previous term (a deposed engine whose lease expired while
    it was partitioned) is refused even if the same machine has won again since."""

    machine_id: str
    lease: int
    create_revision: int


@dataclass(frozen=True)
class UnitEvent:
    """A unit (or a global unit's copy) was written or removed.

    ``unit`` is None when it was removed, or when the stored record cannot be read: then
    ``error`` says why, and the unit still exists as far as the cluster is concerned.
    """

    name: str
    unit: StoredUnit | None = None
    error: str | None = None

    @property
    def deleted(self) -> bool:
        return self.unit is None and self.error is None


@dataclass(frozen=True)
class MachineEvent:
    """A machine registered, changed its entry, or left (lease ended): ``machine`` None."""

    machine_id: str
    machine: MachineState | None = None
    error: str | None = None

    @property
    def deleted(self) -> bool:
        return self.machine is None and self.error is None


@dataclass(frozen=True)
class PlacementEvent:
    """The engine placed ``name`` on ``machine_id`` (``unit`` is what to run there), or
    took it away (``unit`` None, ``error`` None)."""

    machine_id: str
    name: str
    unit: ScheduledUnit | None = None
    error: str | None = None

    @property
    def deleted(self) -> bool:
        return self.unit is None and self.error is None


@dataclass(frozen=True)
class ClusterRead:
    """What the engine loads when it takes office: every unit, machine and placement as
    put events, and the revision to start watching after."""

    units: list[UnitEvent] = field(default_factory=list)
    machines: list[MachineEvent] = field(default_factory=list)
    placements: list[PlacementEvent] = field(default_factory=list)
    revision: int = 0


# -- the interface -----------------------------------------------------------------------


class Registry(ABC):
    """The cluster's records. See the module docstring for what every implementation
    guarantees; :mod:`tests.integration.test_registry_contract` checks it."""

    # units ------------------------------------------------------------------------------

    @abstractmethod
    async def create_unit(self, unit: StoredUnit, is_global: bool, origin: str = "") -> None:
        """Store a new unit; refuses with :class:`UnitExists` (changing nothing) when the
        name is taken."""

    @abstractmethod
    async def create_units(self, units: Iterable[tuple[StoredUnit, bool]]) -> None:
        """Bulk create (benchmarks, large submits); units already present are left
        unchanged and skipped, so a retried batch is harmless."""

    @abstractmethod
    async def replace_unit(self, unit: StoredUnit, is_global: bool, origin: str = "") -> None:
        """Swap a unit's body (``--replace``) keeping the name; creates it when absent."""

    @abstractmethod
    async def get_unit(self, name: str) -> StoredUnit | None:
        """The unit, None when there is none; :class:`UnreadableRecord` when its stored
        record cannot be read."""

    @abstractmethod
    async def units_with_errors(self) -> tuple[list[StoredUnit], dict[str, str]]:
        """Every readable unit by name, and name -> why for the records that cannot be read
        (listings show those as such; ``destroy_unit`` removes them)."""

    async def units(self) -> list[StoredUnit]:
        """Every readable unit, by name."""
        return (await self.units_with_errors())[0]

    @abstractmethod
    async def set_desired_state(self, name: str, desired: DesiredState) -> StoredUnit:
        """Change a unit's desired state, only if the unit has not changed since read;
        :class:`UnitNotFound` when it does not exist."""

    @abstractmethod
    async def destroy_unit(self, name: str) -> bool:
        """Remove a unit (the engine then unschedules it); False when it did not exist."""

    async def submit(self, request: Submission) -> Decision:
        """Carry out a ``PUT /units/<name>`` (the API's and ``fleetctl --driver etcd``'s
        one write path): read the unit and its template, let the model decide, write.

        A write overtaken by another client (the unit created or destroyed in between)
        is decided again against what is there now; refusals raise the model's
        ``SubmitError``. Returns the decision that was carried out.
        """
        name = request.name
        for _ in range(MAX_ATTEMPTS):
            existing = await self.get_unit(name)
            wanted = template_to_read(request, existing)
            template = await self.get_unit(wanted) if wanted else None
            decision = decide(request, existing, template)
            if decision.action is Action.CREATE:
                try:
                    await self.create_unit(decision.stored, decision.is_global, decision.origin)
                except UnitExists:
                    continue
            elif decision.action is Action.REPLACE:
                await self.replace_unit(decision.stored, decision.is_global, decision.origin)
            elif decision.action is Action.SET_DESIRED:
                try:
                    await self.set_desired_state(name, request.desired)
                except UnitNotFound:
                    continue
            await self.note_replaced([decision])
            return decision
        raise gave_up(name)

    async def note_replaced(self, decisions: Iterable[Decision]) -> None:
        """History: each replace among ``decisions`` as ``revision-changed`` (the new
        revision and who asked), for every writer of units alike (the API, fleetctl's etcd
        driver). Best effort: the units are written already, so a failure is logged."""
        events = revision_events(decisions, time.time())
        if not events:
            return
        try:
            await self.record_events(events)
        except Exception as exc:  # noqa: BLE001 - the history must not fail a done write
            log.warning("history: cannot record %d replaced units: %s", len(events), exc)

    @abstractmethod
    async def submit_many(self, requests: Sequence[Submission]) -> list[Decision]:
        """Carry out many ``PUT /units/<name>`` at once (``POST /units:batch``, fleetctl's
        submit/load/start/stop/unload of many): read every unit (and the templates new
        instances need), decide all with :func:`fleetd.model.batch.decide_all`, and only
        when none is refused write them, in as few transactions as etcd's limits allow
        (at most 128 operations and 1 MiB each; a unit is two to four).

        Atomicity: when any unit is refused nothing is written and
        :class:`~fleetd.model.batch.BatchError` names every problem. Each transaction is
        all or nothing and each unit's write in it is conditional on the unit being as it
        was read (absent for a create), as :meth:`submit`'s is; when another writer
        changed one, that transaction writes nothing and its units are read and decided
        again (up to ``MAX_ATTEMPTS``), the transactions already committed staying
        written: then a refusal names them in ``BatchError.written``. A failure between
        transactions (etcd lost, the process killed) leaves the earlier ones written and
        the later ones not; repeating the batch finishes it (it is idempotent). Names
        must be unique (ValueError). Returns the decisions, in the requests' order.
        """

    @abstractmethod
    async def destroy_units(self, names: Sequence[str]) -> list[str]:
        """Remove many units (and their global copies) in as few transactions as etcd's
        limits allow; returns the names that existed and were removed, in the given order.
        Each transaction is all or nothing; a failure between them leaves the earlier
        removed (repeating it finishes the job)."""

    # leases -----------------------------------------------------------------------------

    @abstractmethod
    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; records written on it end with it."""

    @abstractmethod
    async def keepalive(self, lease: int) -> int:
        """Refresh a lease once; the TTL left, 0 when the lease no longer exists."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """End a lease now (its records vanish); never raises for an unknown lease."""

    # machines ---------------------------------------------------------------------------

    @abstractmethod
    async def register_machine(self, machine: MachineState, lease: int) -> None:
        """Publish this machine's entry on its lease.

        Refused with :class:`MachineIdInUse` when the id is held under another live lease:
        two fleetd with one machine id would fight over its units. The same lease (a
        re-registration after a metadata change) is fine.
        """

    @abstractmethod
    async def machine_lease(self, machine_id: str) -> int:
        """The lease holding this machine's entry, 0 when it is not registered (a
        restarted fleetd adopts its previous registration with it)."""

    @abstractmethod
    async def machines(self) -> list[MachineState]: ...

    @abstractmethod
    async def dynamic_metadata(self, machine_id: str) -> dict[str, str]:
        """Metadata set through the API for a machine (kept across agent restarts)."""

    @abstractmethod
    async def all_dynamic_metadata(self) -> dict[str, dict[str, str]]:
        """machine id -> its dynamic metadata, for every machine that has some, in one read
        (a listing of a thousand machines must not cost a thousand reads)."""

    @abstractmethod
    async def update_dynamic_metadata(
        self, machine_id: str, set_: Mapping[str, str], remove: Iterable[str] = ()
    ) -> dict[str, str]:
        """Change a machine's dynamic metadata atomically; returns the new metadata."""

    @abstractmethod
    async def update_machines_metadata(
        self, changes: Mapping[str, tuple[Mapping[str, str], Sequence[str]]]
    ) -> dict[str, dict[str, str]]:
        """Change several machines' dynamic metadata all at once, or not at all.

        ``changes`` maps a machine id to (keys to set, keys to remove). Every machine must
        be registered now, else :class:`MachineNotFound` names the unknown ones and nothing
        is written. Returns each machine's new dynamic metadata.
        """

    @abstractmethod
    def follow_dynamic_metadata(self, machine_id: str) -> AsyncIterator[dict[str, str]]:
        """The machine's dynamic metadata now, then again after every change (forever)."""

    # unit states ------------------------------------------------------------------------

    @abstractmethod
    async def publish_states(
        self, machine_id: str, lease: int, changed: Iterable[UnitState], removed: Iterable[str] = ()
    ) -> None:
        """Write this machine's changed unit states (on its lease) and drop removed ones."""

    @abstractmethod
    async def unit_states(self, name: str | None = None) -> list[UnitState]: ...

    @abstractmethod
    async def unit_states_at(self, name: str | None = None) -> tuple[list[UnitState], int]:
        """:meth:`unit_states` and the store revision the read saw (what
        :meth:`wait_unit_changes` waits after)."""

    @abstractmethod
    async def wait_unit_changes(self, after: int) -> int:
        """Return once a unit state or a placement (what a unit's ``currentState`` is made
        of) changed at a revision after ``after``: that revision (at once when the change
        is already in the past). When that history is compacted away, or ``after`` is
        beyond the store's revision (an index no read gave, or from before a restore),
        returns the current revision at once (the caller reads again). Waits for ever
        otherwise: callers bound it."""

    # the schedule -----------------------------------------------------------------------

    @abstractmethod
    async def placements(self) -> dict[str, list[str]]:
        """unit name -> machines it is scheduled on (one, for non-global units)."""

    @abstractmethod
    async def machine_schedule(self, machine_id: str) -> tuple[dict[str, ScheduledUnit], int]:
        """What the engine placed on one machine, and the revision to watch after."""

    @abstractmethod
    def watch_machine_schedule(self, machine_id: str, revision: int) -> AsyncIterator[list[PlacementEvent]]:
        """Changes to one machine's schedule from ``revision`` on."""

    @abstractmethod
    async def global_units(self) -> tuple[dict[str, StoredUnit], int]:
        """Every global unit (each agent decides which run on it), and a revision."""

    @abstractmethod
    def watch_global_units(self, revision: int) -> AsyncIterator[list[UnitEvent]]: ...

    # the engine -------------------------------------------------------------------------

    @abstractmethod
    async def acquire_leadership(self, machine_id: str, lease: int) -> Leadership | None:
        """Become the engine leader on ``lease`` if nobody is; None when another engine is."""

    @abstractmethod
    async def leader(self) -> str | None:
        """The machine id of the engine leader, if any."""

    @abstractmethod
    async def wait_leader_vacant(self) -> None:
        """Return once there is no leader (at once if there is none now)."""

    @abstractmethod
    async def unplaceable(self) -> dict[str, str]:
        """unit name -> the engine's reason it cannot be placed (what users are shown)."""

    # revisions --------------------------------------------------------------------------

    @abstractmethod
    async def revisions(self, name: str) -> list[UnitRevision]:
        """The kept revisions of unit ``name``, oldest first; each create or replace
        (with a revision number in the unit) adds one in the same transaction, and the
        oldest beyond the registry's ``revisions_keep`` is deleted there too. A destroyed
        unit's revisions go with it. Unreadable records are skipped (and reported)."""

    @abstractmethod
    async def unit_revision(self, name: str, number: int) -> UnitRevision | None:
        """One kept revision; None when it is not (or no longer) kept."""

    # rolling updates --------------------------------------------------------------------

    async def begin_update(
        self,
        name: str,
        target: UnitFile,
        params: UpdateParams,
        now: float,
        *,
        kind: str = ORIGIN_UPDATE,
        target_revision: int | None = None,
        origin: str = "",
    ) -> tuple[UpdateRecord, int]:
        """Start a rolling update of ``name`` to ``target`` (the API's and ``fleetctl
        --driver etcd``'s one way to): read the unit and, for a template, its instances,
        let the model build the record (:func:`fleetd.model.update.new_update`: refusals
        raise ``UpdateError``), and store it, only if no update of ``name`` is in
        progress (:class:`UpdateConflict` otherwise). The engine leader does the rest."""
        check_target(name, target)
        for _ in range(MAX_ATTEMPTS):
            existing = await self.get_update(name)
            if existing is not None and not existing[0].state.final:
                raise UpdateConflict(f"an update of {name} is already {existing[0].state}; wait for it to end")
            named = await self.get_unit(name)
            instances = []
            if parse_unit_name(name).is_template:
                instances = [
                    u for u in await self.units() if parse_unit_name(u.name).template == name and u.name != name
                ]
            record = new_update(
                name,
                target,
                None if named is None else current_of(named),
                [current_of(u) for u in instances],
                params,
                now,
                kind=kind,
                target_revision=target_revision,
                origin=origin,
            )
            try:
                return record, await self.create_update(record, existing[1] if existing else 0)
            except UpdateConflict:
                continue  # another client got there first: look again
        raise UpdateError(f"the update record of {name} kept changing; try again")

    async def rollback_target(self, name: str, number: int | None = None) -> tuple[UnitFile, int]:
        """The body of kept revision ``number`` of ``name`` and its number; None: the newest
        kept one before the unit's current revision. ``UpdateNotFound`` says what is missing."""
        if number is None:
            unit = await self.get_unit(name)
            if unit is None:
                raise UpdateNotFound(f"unit {name} not found")
            older = [r for r in await self.revisions(name) if r.revision < unit.revision]
            if not older:
                raise UpdateNotFound(f"unit {name} has no kept revision before its current one ({unit.revision})")
            return older[-1].file, older[-1].revision
        kept = await self.unit_revision(name, number)
        if kept is None:
            raise UpdateNotFound(f"unit {name} has no kept revision {number}")
        return kept.file, number

    @abstractmethod
    async def create_update(self, record: UpdateRecord, replacing: int = 0) -> int:
        """Store a new update record for ``record.name``: only if there is none
        (``replacing`` 0), or only if the one there is still at version ``replacing`` (a
        finished update read by the caller); :class:`UpdateConflict` otherwise, nothing
        written. Returns the record's version (what :meth:`advance_update` compares)."""

    @abstractmethod
    async def get_update(self, name: str) -> tuple[UpdateRecord, int] | None:
        """The update record of ``name`` and its version; None when there is none;
        :class:`UnreadableRecord` when the stored record cannot be read."""

    @abstractmethod
    async def updates(self) -> tuple[list[tuple[UpdateRecord, int]], dict[str, str]]:
        """Every readable update record with its version, by name, and name -> why for
        the records that cannot be read (reported, never raised: the engine goes on)."""

    @abstractmethod
    async def update_versions(self) -> dict[str, int]:
        """name -> version of every update record, without reading the records (the
        engine looks every few seconds and reads only those that changed)."""

    @abstractmethod
    async def advance_update(
        self,
        leadership: Leadership,
        record: UpdateRecord,
        version: int,
        replaces: Mapping[str, UnitFile],
        origin: str,
    ) -> tuple[int, dict[str, int]]:
        """One step of an update, all or nothing: store ``record`` (its next state) only
        if the stored one is still at ``version`` and ``leadership`` still holds, and in
        the same transaction give each unit in ``replaces`` that body (its desired state
        kept, its revision one more, a revision record with ``origin``; its global copy
        too if it has one), each only if unchanged since this method read it. A unit that
        is gone or unreadable is skipped. So a step is written once, by the leader of the
        moment, whoever else (a deposed engine, a client) tries the same.

        Returns the record's new version and each replaced unit's new revision. Raises
        :class:`NotLeader` or :class:`UpdateConflict`: then nothing was written."""

    # history ----------------------------------------------------------------------------

    @abstractmethod
    async def record_events(self, events: Sequence[HistoryEvent]) -> list[HistoryEvent]:
        """Store events; each gets an ``id`` that sorts after every id stored before it by
        this registry (and, across writers, by time). Returns them with their ids."""

    @abstractmethod
    async def events(
        self, after: str = "", limit: int = 1000, unit: str | None = None
    ) -> tuple[list[HistoryEvent], str, int]:
        """Events in id order after the id ``after`` (all when empty), at most ``limit``,
        only ``unit``'s when given. Also the id to read on from ("" when there is no more)
        and the revision to :meth:`watch_events` after. Unreadable records are skipped
        (and reported once)."""

    @abstractmethod
    def watch_events(self, revision: int) -> AsyncIterator[list[HistoryEvent]]:
        """Events stored after ``revision``, in order, as they are stored."""

    @abstractmethod
    async def prune_events(self, keep: int, before: float) -> int:
        """Delete every event older than ``before`` (Unix time) and all but the newest
        ``keep``; returns how many were deleted."""

    # between fleetds --------------------------------------------------------------------

    @abstractmethod
    async def peer_secret(self) -> bytes:
        """The cluster's key for signing requests from one fleetd to another (journal and
        status relayed to the machine running a unit). The first caller creates it, in one
        conditional write, so every fleetd ends up with the same key. It is exactly as
        secret as etcd: whoever can read etcd can already run anything on every machine.
        Raises :class:`~fleetd.registry.errors.UnreadableRecord` when the stored value is
        not a key this code wrote (it is then never used, nor silently replaced)."""

    @abstractmethod
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

    @abstractmethod
    async def read_cluster(self) -> ClusterRead:
        """Units, machines and placements for the engine, and where to watch from."""

    @abstractmethod
    def watch_units(self, revision: int) -> AsyncIterator[list[UnitEvent]]: ...

    @abstractmethod
    def watch_machines(self, revision: int) -> AsyncIterator[list[MachineEvent]]: ...

    @abstractmethod
    def watch_placements(self, revision: int) -> AsyncIterator[list[PlacementEvent]]:
        """Changes to every machine's schedule (the engine's own writes among them)."""

    # housekeeping -----------------------------------------------------------------------

    def bad_record_counts(self) -> dict[str, int]:
        """Unreadable records met so far, by kind (each counted once per key and value)."""
        return {}

    @property
    @abstractmethod
    def requests(self) -> int:
        """Requests sent to the store so far (for benchmarks)."""

    @abstractmethod
    async def close(self) -> None: ...
