"""The history part of :class:`~fleetd.registry.etcd_registry.EtcdRegistry`.

Events live under ``<prefix>events/<id>``; ids sort by time (see
:class:`~fleetd.registry.codec.EventIds`), so reading in key order reads in time order,
pruning by age is one range delete, and pruning by count is a range delete up to the
first key to keep. Writes are plain puts (no condition: an event never replaces another).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

from fleetd.model.history import HistoryEvent, clipped
from fleetd.registry.codec import EventIds, RecordError, decode_history_event, encode_history_event, event_id_before
from fleetd.registry.etcd import Etcd, chunks, op_size
from fleetd.registry.keys import Keys

PAGE = 500  # keys per range read
MAX_SCAN = 100_000  # keys one events() call may examine (a unit filter over a long history)


def _range_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdHistory:
    """Mixed into EtcdRegistry: needs ``_etcd``, ``_keys``, ``_event_ids`` and ``_bad``."""

    _etcd: Etcd
    _keys: Keys
    _event_ids: EventIds
    _bad: Callable[[str, str, bytes, Exception], str]

    async def record_events(self, events: Sequence[HistoryEvent]) -> list[HistoryEvent]:
        stored = [replace(clipped(e), id=self._event_ids.next(e.time)) for e in events]
        etcd, prefix = self._etcd, self._keys.events
        puts = [(prefix + e.id, encode_history_event(e)) for e in stored]
        for part in chunks([op_size(key, value) for key, value in puts]):
            await etcd.txn([], [etcd.op_put(key, value) for key, value in puts[part.start : part.stop]])
        return stored

    def _decode(self, key: str, raw: bytes) -> HistoryEvent | None:
        try:
            return decode_history_event(raw, key[len(self._keys.events) :])
        except RecordError as exc:
            self._bad("event", key, raw, exc)
            return None

    async def events(
        self, after: str = "", limit: int = 1000, unit: str | None = None
    ) -> tuple[list[HistoryEvent], str, int]:
        prefix = self._keys.events
        start, end = (prefix + after + "\0") if after else prefix, _range_end(prefix)
        found: list[HistoryEvent] = []
        cursor, revision, scanned, more = "", 0, 0, True
        while more and len(found) < limit and scanned < MAX_SCAN:
            items, more, seen = await self._etcd.get_page(start, end, PAGE)
            revision = revision or seen
            for index, kv in enumerate(items):
                scanned += 1
                cursor = kv.key[len(prefix) :]
                event = self._decode(kv.key, kv.value)
                if event is not None and (unit is None or event.unit == unit):
                    found.append(event)
                if len(found) >= limit:
                    more = more or index < len(items) - 1
                    break
            if items:
                start = items[-1].key + "\0"
        return found, cursor if more else "", revision

    async def watch_events(self, revision: int) -> AsyncIterator[list[HistoryEvent]]:
        async for batch in self._etcd.watch_prefix(self._keys.events, revision):
            events = [self._decode(e.key, e.value) for e in batch if e.value is not None]
            found = [e for e in events if e is not None]
            if found:
                yield found

    async def prune_events(self, keep: int, before: float) -> int:
        prefix = self._keys.events
        deleted = await self._etcd.delete_range(prefix, prefix + event_id_before(before))
        if keep <= 0:
            return deleted + await self._etcd.delete_range(prefix, _range_end(prefix))
        # the newest `keep`: walk from the oldest, counting (keys only), to the cut
        keys: list[str] = []
        start, end, more = prefix, _range_end(prefix), True
        while more:
            items, more, _ = await self._etcd.get_page(start, end, 10 * PAGE, keys_only=True)
            keys.extend(kv.key for kv in items)
            if items:
                start = items[-1].key + "\0"
        if len(keys) > keep:
            deleted += await self._etcd.delete_range(prefix, keys[len(keys) - keep])
        return deleted
