"""The registry's refusals, shared by every implementation so callers catch one set."""

from __future__ import annotations


class RegistryError(Exception):
    """A request the registry refused; the message says why and what to do."""


class UnitExists(RegistryError):
    pass


class UnitNotFound(RegistryError):
    pass


class MachineIdInUse(RegistryError):
    """Another live fleetd holds this machine id."""


class UnreadableRecord(RegistryError):
    """The stored record cannot be read (written by hand, or by something else): it can
    only be destroyed, or replaced."""


class LeaseNotFound(RegistryError):
    """A write on a lease that no longer exists (it expired): the writer must register
    again under a new lease."""


class MachineNotFound(RegistryError):
    """A request named machines that are not registered (nothing was changed)."""


class NotLeader(RegistryError):
    """An engine write was refused because this engine no longer holds leadership."""


class UpdateConflict(RegistryError):
    """An update record was not as the writer read it: another update of the unit is in
    progress, or another writer (an engine of another term, a client) changed it first."""


class Resync(Exception):
    """A watch could not resume (its history was compacted): reload from a fresh read.

    Not a :class:`RegistryError`: nothing was refused, the caller's view is just stale.
    """

    def __init__(self, revision: int) -> None:
        super().__init__(f"watch history compacted at revision {revision}; resync needed")
        self.revision = revision


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached or did not answer in time.

    Callers answer those with "try again" (the API's 503, fleetctl's "not reachable")
    instead of reporting a bug. Only the registry may know which client library raised
    it, so the test lives here.
    """
    module = type(exc).__module__.split(".")[0]
    return module in ("aetcd", "grpc") or isinstance(exc, (ConnectionError, TimeoutError))
