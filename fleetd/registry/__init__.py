"""The cluster's shared state: the only package that knows etcd keys or imports the etcd client.

:class:`Registry` is the interface the engine, the agent and the API use;
:class:`EtcdRegistry` implements it over etcd (build one with :func:`connect`), and
:class:`MemoryRegistry` is the in-memory fake for fast tests of the loops above it.

The etcd implementation is imported on first use only: it pulls in grpc, which costs a
short-lived command such as ``fleetctl list-units`` over the API a noticeable start-up.
"""

from __future__ import annotations

from typing import Any

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
    is_unavailable,
)
from fleetd.registry.keys import DEFAULT_PREFIX
from fleetd.registry.registry import ClusterRead, Leadership, MachineEvent, PlacementEvent, Registry, UnitEvent

_LAZY = {
    "EtcdConfig": "fleetd.registry.etcd",
    "EtcdRegistry": "fleetd.registry.etcd_registry",
    "connect": "fleetd.registry.etcd_registry",
    "MemoryRegistry": "fleetd.registry.memory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetd.registry' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_PREFIX",
    "ClusterRead",
    "EtcdConfig",
    "EtcdRegistry",
    "Leadership",
    "LeaseNotFound",
    "MachineEvent",
    "MachineIdInUse",
    "MachineNotFound",
    "MemoryRegistry",
    "NotLeader",
    "PlacementEvent",
    "Registry",
    "RegistryError",
    "Resync",
    "UnitEvent",
    "UnitExists",
    "UnitNotFound",
    "UnreadableRecord",
    "connect",
    "is_unavailable",
]
