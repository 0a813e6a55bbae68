"""fleetd's Prometheus metrics: every series, in one registry per daemon.

The only module that imports ``prometheus_client`` (an import-linter contract says so).
:class:`Metrics` owns a :class:`~prometheus_client.CollectorRegistry` of its own, never the
library's global one, so a test can build several daemons' worth in one process. The daemon
makes one (with the process collectors) and hands it to the API, the engine, the agent and
the etcd connection; a part built without one gets a private, unexported instance, so the
instrumented code never checks for None.

Two kinds of series:

- events, counted or timed where they happen (a scheduling pass, a systemd batch, an etcd
  request, an API request): :class:`~prometheus_client.Counter` and
  :class:`~prometheus_client.Histogram`;
- states, read at scrape time from what this fleetd already holds in memory (the engine
  leader's cluster view, the agent's published unit states, the supervised tasks): a
  collector (:class:`_State`). A scrape reads nothing from etcd.

docs/metrics.md describes every series.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from fleetd.aio import TaskHealth
from fleetd.model.unit import DesiredState
from fleetd.registry import is_unavailable
from fleetd.scheduler.tasks import Place, Task, Unplace

if TYPE_CHECKING:
    from fleetd.model.state import StoredUnit

# ``*_created`` series (one per counter and histogram child) say when a series began; nobody
# graphs them and they double the size of a scrape
disable_created_metrics()

# -- bounded label values ---------------------------------------------------------------------

#: HTTP methods named as such in ``method`` labels; any other is "other" (a client may send
#: any token as a method, and each would be a series of its own)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: the ``route`` of a request no route matched (404, and 405 from the router)
UNMATCHED = "unmatched"
#: systemd's active states, always exported (0 when no unit is in one)
ACTIVE_STATES = ("active", "reloading", "inactive", "failed", "activating", "deactivating", "maintenance")

# Why the engine took a unit off a machine: the scheduler's reason (free text, written for
# users) by its first words. tests/unit/test_metrics.py drives the real scheduler into each.
_UNPLACE_REASONS: tuple[tuple[str, str], ...] = (
    ("unit no longer exists", "unit-gone"),
    ("desired state is inactive", "inactive"),
    ("unit is global", "global"),
    ("machine ", "machine-lost"),  # "machine 1a2b3c4d left the cluster"
    ("replaced by ", "replaced"),
    ("would replace ", "replaced"),
    ("conflicts with ", "conflict"),
    ("metadata ", "metadata"),
    ("MachineOf", "machine-of"),
    ("MachineID", "machine-id"),
    ("X-Condition", "machine-id"),
    ("no machine with ID", "machine-id"),
)
#: every ``reason`` label of ``fleet_engine_decisions_total``
DECISION_REASONS = ("new", *dict.fromkeys(kind for _, kind in _UNPLACE_REASONS), "other")


def unplace_reason(reason: str) -> str:
    """The reason class (a bounded label value) of an Unplace's reason text."""
    for prefix, kind in _UNPLACE_REASONS:
        if reason.startswith(prefix):
            return kind
    return "other"


def decisions(tasks: Sequence[Task]) -> list[tuple[str, str]]:
    """(decision, reason class) for each unit a pass changed: ``placed`` (reason ``new``),
    ``moved`` (off one machine onto another, by why it left) or ``unplaced``."""
    taken_off = {task.unit: task for task in tasks if isinstance(task, Unplace)}
    result: list[tuple[str, str]] = []
    for task in tasks:
        if isinstance(task, Place):
            old = taken_off.pop(task.unit, None)
            result.append(("placed", "new") if old is None else ("moved", unplace_reason(old.reason)))
    result += [("unplaced", unplace_reason(task.reason)) for task in taken_off.values()]
    return result


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


# -- what the scrape reads ------------------------------------------------------------------------


class NodeSource(Protocol):
    def error(self) -> str | None: ...
    def tasks(self) -> list[TaskHealth]: ...


class RegistrySource(Protocol):
    def bad_record_counts(self) -> dict[str, int]: ...


class _State:
    """The collector of state series, read at scrape time from memory; see the module."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: which families appear depends on leadership

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        if m.registry_up is not None:
            yield _gauge("fleet_registry_up", "1 when this fleetd's last etcd request was answered.", m.registry_up)
        if m.store is not None:
            bad = CounterMetricFamily(
                "fleet_registry_unreadable_records",
                "Unreadable records this fleetd met and skipped, by kind (each key and value once).",
                labels=["kind"],
            )
            for kind, count in sorted(m.store.bad_record_counts().items()):
                bad.add_metric([kind], count)
            yield bad
        if m.node is not None:
            yield _gauge(
                "fleet_node_serving",
                "1 when this fleetd serves the API, 0 while it answers 503 (see its error).",
                0 if m.node.error() else 1,
            )
            tasks = m.node.tasks()
            up = GaugeMetricFamily(
                "fleet_task_up",
                "1 while a supervised task of this fleetd runs, 0 while it waits to restart after a failure.",
                labels=["task"],
            )
            restarts = CounterMetricFamily(
                "fleet_task_restarts",
                "Restarts of each supervised task of this fleetd after it failed or ended.",
                labels=["task"],
            )
            for task in tasks:
                up.add_metric([task.name], 0 if task.restart_at is not None else 1)
                restarts.add_metric([task.name], task.restarts)
            yield up
            yield restarts
        yield from self._engine()
        if m.agent is not None:
            by_state = Tally(unit.active_state for unit in m.agent.states.published.values())
            units = GaugeMetricFamily(
                "fleet_agent_units", "Units fleet runs on this machine, by systemd active state.", labels=["state"]
            )
            for state in (*ACTIVE_STATES, *sorted(set(by_state) - set(ACTIVE_STATES))):
                units.add_metric([state], by_state.get(state, 0))
            yield units
        if m.dbus is not None:
            errors = CounterMetricFamily(
                "fleet_systemd_dbus_errors",
                "D-Bus calls to systemd that failed (error reply, no reply in time, bus lost), by method.",
                labels=["method"],
            )
            for method, count in sorted(m.dbus.errors.items()):
                errors.add_metric([method], count)
            yield errors

    def _engine(self) -> Iterator[Metric]:
        engine = self.metrics.engine
        leading = engine is not None and engine.leading.is_set()
        yield _gauge("fleet_engine_leader", "1 while this fleetd's engine is the cluster's leader.", int(leading))
        if not leading:
            return
        # the leader's view, kept current by its watches: nothing is read from etcd here
        view = engine.view
        units: list[StoredUnit] = list(view.units.values())
        yield _gauge("fleet_units_total", "Units in the cluster.", len(units))
        desired = GaugeMetricFamily("fleet_units_desired", "Units by desired state.", labels=["state"])
        by_state = Tally(str(unit.desired) for unit in units)
        for state in DesiredState:
            desired.add_metric([str(state)], by_state.get(str(state), 0))
        yield desired
        yield _gauge("fleet_machines_total", "Live machines in the cluster.", len(view.machines))
        yield _gauge("fleet_units_unplaceable", "Units the engine cannot place.", len(engine.reasons))
        yield _gauge("fleet_units_unreadable", "Unit records that cannot be read.", len(view.invalid))
        updater = getattr(engine, "updater", None)  # the term's rolling updates (from its last look)
        running = updater.running if updater is not None else 0
        yield _gauge("fleet_engine_updates_in_progress", "Rolling updates pending, running or reverting.", running)


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=value)


# -- the metrics -------------------------------------------------------------------------------------


class Metrics:
    """Every series of one fleetd, in its own registry (``self.registry``).

    ``process=True`` (the daemon) adds prometheus-client's process and platform collectors.
    The parts that hold state are plugged in by whoever builds them: ``node`` and
    ``store`` (the fleet registry, for its count of bad records) by the API's ``make_app``,
    ``engine``, ``agent`` and ``dbus`` by the daemon.
    """

    def __init__(self, *, process: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.node: NodeSource | None = None
        self.store: RegistrySource | None = None
        self.engine: Any = None  # fleetd.engine.Engine (above this layer)
        self.agent: Any = None  # fleetd.agent.Agent (idem)
        self.dbus: Any = None  # the systemd adapter's bus: its ``errors`` Counter, by D-Bus method
        self.registry_up: int | None = None  # unknown until an etcd request ended
        # engine
        self.engine_pass_seconds = Histogram(
            "fleet_engine_pass_duration_seconds",
            "Duration of the leader's scheduling passes: planning and writing the changes.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.engine_decisions = Counter(
            "fleet_engine_decisions",
            "Units the leader placed, moved or unplaced, by reason class.",
            ["decision", "reason"],
            registry=r,
        )
        # agent
        self.systemd_seconds = Histogram(
            "fleet_agent_systemd_batch_duration_seconds",
            "Duration of the agent's batches of systemd operations, by operation.",
            ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.systemd_errors = Counter(
            "fleet_agent_systemd_errors",
            "systemd operations of the agent that failed as a whole (unit file errors, bus lost), by operation.",
            ["operation"],
            registry=r,
        )
        self.etcd_seconds = Histogram(
            "fleet_etcd_request_duration_seconds",
            "Duration of this fleetd's etcd requests (each attempt), by operation.",
            ["operation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        # API
        self.api_requests = Counter(
            "fleet_api_requests", "API requests answered, by method and status code.", ["method", "code"], registry=r
        )
        self.api_seconds = Histogram(
            "fleet_api_request_duration_seconds",
            "Duration of API requests, by method, route (its pattern) and status code.",
            ["method", "route", "code"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        r.register(_State(self))
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    # -- events ------------------------------------------------------------------------------

    @contextmanager
    def engine_pass(self) -> Iterator[None]:
        """Time one scheduling pass (with its writes)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.engine_pass_seconds.observe(time.perf_counter() - started)

    def scheduled(self, tasks: Sequence[Task]) -> None:
        """A pass's decisions were written: count them."""
        for decision, reason in decisions(tasks):
            self.engine_decisions.labels(decision, reason).inc()

    @contextmanager
    def systemd_batch(self, operation: str) -> Iterator[None]:
        """Time one call of the agent to the service manager; count it when it fails."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.systemd_errors.labels(operation).inc()
            raise
        finally:
            self.systemd_seconds.labels(operation).observe(time.perf_counter() - started)

    def etcd_request(self, operation: str, seconds: float, error: BaseException | None) -> None:
        """The etcd connection's hook (``Etcd.observe``): one attempt of one request ended."""
        self.etcd_seconds.labels(operation).observe(seconds)
        if error is None:
            self.registry_up = 1
        elif is_unavailable(error):
            self.registry_up = 0

    def api_request(self, method: str, route: str, code: int, seconds: float) -> None:
        method, status = method_label(method), str(code)
        self.api_requests.labels(method, status).inc()
        self.api_seconds.labels(method, route, status).observe(seconds)

    # -- exposition -----------------------------------------------------------------------------

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type: OpenMetrics when ``accept`` asks for it,
        else Prometheus' text format 0.0.4."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


__all__ = [
    "ACTIVE_STATES",
    "DECISION_REASONS",
    "METHODS",
    "UNMATCHED",
    "Metrics",
    "decisions",
    "method_label",
    "unplace_reason",
]
