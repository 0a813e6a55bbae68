"""Every timing and limit of fleetd in one place, each with its default and the reason for it.

The daemon's configuration (file, environment, flags) fills these in; tests and benchmarks
build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    # How long a machine may be silent before its lease expires and its units move.
    # fleet used 30 s, which made every failover take half a minute; 10 s keeps failover
    # quick while tolerating a few seconds of etcd or network trouble (keepalives go out
    # every agent_ttl / 3, so two can be lost before the lease is at risk).
    agent_ttl: float = 10.0
    # Engine: how often its timer looks whether a full resync is due (placement itself
    # reacts to watch events at once; an unchanged view is never re-planned).
    engine_reconcile_interval: float = 2.0
    # Engine: re-read the whole state from etcd this often, in case a watch missed
    # something; cheap insurance, rare because it reads every unit.
    engine_resync_interval: float = 60.0
    # Engine leadership lease; a new engine takes over at most this long after the
    # leader dies or is partitioned.
    engine_ttl: float = 10.0
    # Agent: full resync of its own schedule and systemd state (events do the real work).
    agent_reconcile_interval: float = 30.0
    # Coalescing window for bursts of watch events before planning (seconds).
    debounce: float = 0.02
    # History retention (the engine leader prunes to it): the newest this many events,
    # none older than this many seconds.
    history_keep: int = 10_000
    history_max_age: float = 7 * 24 * 3600.0

    def keepalive_interval(self, ttl: float) -> float:
        return max(0.2, ttl / 3.0)
