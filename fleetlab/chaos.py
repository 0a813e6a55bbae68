"""Chaos runs: a real fleet cluster under a steady workload while faults strike it.

Unit tests and the failover benchmark each exercise one failure in isolation; a cluster in
production meets them in any order, while clients keep submitting, starting, stopping and
destroying units. A chaos run reproduces that on the lab: a 3-member etcd and N hosts
running fleetd (:class:`fleetlab.fleetcluster.FleetCluster`), a workload thread that keeps
changing units through fleetd's HTTP API, and faults injected one at a time at random
(seeded, so a failing run can be replayed with the same choices):

- ``crash-host``: SIGKILL a host's systemd, which takes every process of the host with it
  (the lab's crash), then boot a replacement host, as an operator would;
- ``kill-fleetd``: SIGKILL fleetd on a host (``Restart=always`` brings it back; its units
  keep running and the new fleetd must adopt them);
- ``stop-etcd``: SIGSTOP an etcd member (half of the time the leader) for a while, then
  SIGCONT: a hung server is harder on clients than a dead one;
- ``restart-etcd``: stop an etcd member (SIGTERM or SIGKILL, half of the time the leader)
  and start it again on its data;
- ``partition-host``: take a host off the network for longer than ``agent_ttl``, then heal.

After each fault the run checks the cluster's invariants, polling until they hold or a
deadline passes; the time they took is the fault's recovery time. The invariants are
checked where they matter: in each host's own systemd (``systemctl list-units``) and unit
directory, not only in fleet's view of itself (:func:`evaluate` lists them). A background
monitor also watches every host's cgroups the whole time, because Conflicts must never be
co-located, not merely be apart again once things settle.

Only processes and hosts this run started are signalled (through the lab's own objects),
every fault is undone in a ``finally``, and the cluster is removed at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import random
import shutil
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fleetd.model.unitfile import parse_unit_file
from fleetlab.etcd import EtcdMember
from fleetlab.fleetcluster import FleetCluster, FleetHost, fleetd_log

PREFIX = "chaos-"
TEMPLATE = "chaos-c@.service"
GLOBAL = "chaos-g.service"
EXTRA_GLOBAL = "chaos-g2.service"
SLEEP_BODY = "[Unit]\nDescription=chaos %n\n\n[Service]\nExecStart=/bin/sleep infinity\n"
#: systemd states of a unit that has (or is about to have, or still has) processes
RUNNING_STATES = frozenset({"active", "activating", "deactivating", "reloading"})
FAULT_KINDS = ("crash-host", "kill-fleetd", "stop-etcd", "restart-etcd", "partition-host")
UNITS_DIRECTORY = "run/fleet/units"  # fleetd's default units_directory, inside a host


class Kind(StrEnum):
    """What a unit of the workload is, which decides the invariants it must satisfy."""

    PLAIN = "plain"
    INSTANCE = "instance"  # of TEMPLATE: Conflicts with every other instance
    LEADER = "leader"  # of a MachineOf pair
    FOLLOWER = "follower"  # MachineOf its leader
    GLOBAL = "global"
    TEMPLATE = "template"  # stored, never placed


@dataclass
class Expected:
    """What the workload asked for a unit (updated only when fleetd acknowledged it)."""

    kind: Kind
    desired: str  # launched, loaded or inactive
    leader: str = ""  # for a follower: the unit it must share a machine with


def unit_text(kind: Kind, name: str, leader: str = "") -> str:
    """The body of a workload unit: a sleep, plus the ``[X-Fleet]`` rule its kind tests."""
    if kind is Kind.TEMPLATE:
        return SLEEP_BODY + "\n[X-Fleet]\nConflicts=chaos-c@*.service\n"
    if kind is Kind.FOLLOWER:
        return SLEEP_BODY + f"\n[X-Fleet]\nMachineOf={leader}\n"
    if kind is Kind.GLOBAL:
        return SLEEP_BODY + "\n[X-Fleet]\nGlobal=true\n"
    return SLEEP_BODY


# -- configuration and results ------------------------------------------------------------


@dataclass
class ChaosConfig:
    """A run's knobs. The defaults are the benchmark's; the CI test shortens them."""

    minutes: float
    seed: int
    hosts: int = 5
    agent_ttl: float = 10.0
    etcd_members: int = 3
    #: seconds between two workload operations (uniform in the range): a modest rate
    op_interval: tuple[float, float] = (0.4, 1.2)
    #: seconds of workload without a fault between a recovery and the next fault
    quiet: tuple[float, float] = (3.0, 6.0)
    #: the recovery target is agent_ttl + this: a fault that takes longer is "slow"
    recovery_margin: float = 2.0
    #: give up waiting for the invariants after this long (then they are violations);
    #: 0 means max(60, 4 x agent_ttl)
    check_timeout: float = 0.0
    #: the first faults are every kind once, in a seeded order, so that even a short run
    #: covers them all; later ones are drawn at random
    cover_all: bool = True
    #: inject at least this many faults even if ``minutes`` ran out first (CI: one of each)
    min_faults: int = 0
    #: no fault starts after this many seconds of faults, whatever ``min_faults`` says
    #: (0: no limit), so that a broken cluster cannot stretch a CI run
    hard_stop_s: float = 0.0
    lab_prefix: str = "chaos"
    #: when set, every host's fleetd journal and every etcd member's log are copied here
    #: before the cluster is removed: the evidence for whatever the run found
    log_dir: str = ""
    max_plain: int = 8
    max_pairs: int = 3
    #: a workload request that cannot get through for this long is a violation
    op_deadline: float = 30.0
    log: Callable[[str], None] = print

    @property
    def timeout(self) -> float:
        return self.check_timeout or max(60.0, 4 * self.agent_ttl)

    @property
    def target(self) -> float:
        return self.agent_ttl + self.recovery_margin


@dataclass
class Check:
    """One wait for the invariants: how long they took, or what was still wrong.

    ``problems`` are the broken invariants first seen by this check (the violations);
    ``persisting`` are ones an earlier check reported that were still broken: counted once,
    where they appeared, and not waited for again (a lasting breakage would otherwise make
    every later check wait out its deadline and hide how later faults recovered)."""

    label: str
    recovery_s: float
    problems: list[str] = field(default_factory=list)
    persisting: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class FaultResult:
    """One injected fault and the checks after it."""

    index: int
    kind: str
    target: str
    at_s: float  # since the run started
    held_s: float = 0.0  # how long the fault lasted (stop-etcd, partition-host)
    checks: list[Check] = field(default_factory=list)
    error: str = ""  # the lab could not inject or undo the fault

    @property
    def recovery_s(self) -> float:
        return max((c.recovery_s for c in self.checks), default=0.0)

    @property
    def problems(self) -> list[str]:
        return [f"{c.label}: {p}" for c in self.checks for p in c.problems]


@dataclass
class ChaosReport:
    """Everything a run found; ``violations`` is what makes it fail."""

    config: ChaosConfig
    faults: list[FaultResult] = field(default_factory=list)
    baseline: Check | None = None
    final: Check | None = None
    workload_errors: list[str] = field(default_factory=list)
    colocations: list[str] = field(default_factory=list)
    ops: int = 0
    errors: list[str] = field(default_factory=list)  # the harness itself failed
    duration_s: float = 0.0

    @property
    def violations(self) -> int:
        checks = [c for f in self.faults for c in f.checks]
        checks += [c for c in (self.baseline, self.final) if c is not None]
        return sum(len(c.problems) for c in checks) + len(self.workload_errors) + len(self.colocations)

    @property
    def max_recovery_s(self) -> float:
        return max((f.recovery_s for f in self.faults), default=0.0)

    @property
    def slow(self) -> list[FaultResult]:
        return [f for f in self.faults if f.recovery_s > self.config.target]

    def summary(self) -> str:
        return f"violations={self.violations} faults={len(self.faults)} max_recovery_s={self.max_recovery_s:.2f}"


# -- talking to fleetd ------------------------------------------------------------------


class Unreachable(Exception):
    """No answer (connection refused or reset, timeout): the request may or may not have
    been applied, so it is retried, elsewhere if possible."""


def call(host: FleetHost, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One request to a host's TCP API; (status, decoded JSON or text). Raises
    :class:`Unreachable` when no HTTP answer came back."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{host.endpoint}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
        raise Unreachable(f"{host.name}: {exc}") from None
    try:
        return status, (json.loads(raw) if raw else None)
    except ValueError:
        return status, raw.decode(errors="replace")


def http_list(host: FleetHost, path: str, key: str, timeout: float = 5.0) -> list[Any]:
    """Every item of a paginated fleet list, or :class:`Unreachable`/RuntimeError."""
    items: list[Any] = []
    token = ""
    while True:
        query = f"{path}?nextPageToken={urllib.parse.quote(token)}" if token else path
        status, body = call(host, "GET", query, timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET {query} on {host.name}: HTTP {status}: {body}")
        items += body.get(key, [])
        token = body.get("nextPageToken") or ""
        if not token:
            return items


# -- observing the cluster --------------------------------------------------------------


@dataclass
class HostView:
    """One live host as its own systemd and fleetd see it, gathered in one poll."""

    name: str
    machine_id: str
    running: set[str] = field(default_factory=set)  # chaos units with processes (systemd)
    files: set[str] = field(default_factory=set)  # chaos unit files fleetd put in place
    fleetd: str = ""  # why fleetd is not fine ("" when it is)
    machines: list[str] | None = None  # machine ids its API lists


def observe_host(fh: FleetHost, api_timeout: float = 3.0) -> HostView:
    """Read one host: systemd's units, fleetd's unit directory, fleetd's process and API."""
    view = HostView(fh.name, fh.machine_id)
    listed = fh.host.systemctl(
        "list-units", "--all", "--plain", "--no-legend", "--full", f"{PREFIX}*", check=False, timeout=20
    )
    for line in listed.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].startswith(PREFIX) and parts[2] in RUNNING_STATES:
            view.running.add(parts[0])
    with contextlib.suppress(OSError):
        view.files = {p.name for p in (fh.host.root_path / UNITS_DIRECTORY).iterdir() if p.name.startswith(PREFIX)}
    shown = fh.host.systemctl(
        "show", "-p", "ActiveState", "-p", "MainPID", "fleetd.service", check=False, timeout=20
    ).stdout
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    if props.get("ActiveState") != "active" or props.get("MainPID", "0") == "0":
        view.fleetd = f"fleetd.service is {props.get('ActiveState', '?')} (MainPID {props.get('MainPID', '?')})"
        return view
    try:
        status, body = call(fh, "GET", "/fleet/v1/machines", timeout=api_timeout)
    except Unreachable as exc:
        view.fleetd = f"API does not answer: {exc}"
        return view
    if status != 200 or not isinstance(body, dict):
        view.fleetd = f"API answers HTTP {status}: {body}"  # 503: the node says it is unhealthy
        return view
    view.machines = sorted(m["id"] for m in body.get("machines", []))
    # the node's own account of its tasks (fleetd's supervisor): a task that is down, or a
    # node that says it does not serve, is a dead part of fleetd even if the API answers
    try:
        status, text = call(fh, "GET", "/metrics", timeout=api_timeout)
    except Unreachable as exc:
        view.fleetd = f"/metrics does not answer: {exc}"
        return view
    if status == 200 and isinstance(text, str):
        # values print as floats ("0.0"): compare numbers, not text
        samples = [line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("fleet_")]
        down = [name for name, value in samples if name.startswith("fleet_task_up{") and float(value) == 0]
        if down:
            view.fleetd = f"tasks down: {', '.join(sorted(down))}"
        elif any(name == "fleet_node_serving" and float(value) == 0 for name, value in samples):
            view.fleetd = "/metrics says fleet_node_serving 0 while its API answers 200"
    return view


@dataclass
class FleetView:
    """fleet's own idea of the units: from the API of one reachable host."""

    units: dict[str, str]  # name -> desiredState
    states: list[dict[str, Any]]  # /fleet/v1/state records


def evaluate(
    model: Mapping[str, Expected],
    views: list[HostView],
    fleet: FleetView | None,
    fleet_problem: str = "",
    unknown: Iterable[str] = (),
) -> list[str]:
    """Every broken invariant, as a sentence; an empty list means all hold. Pure.

    ``views`` are the live machines (a partitioned host is left out while cut off);
    ``unknown`` units (whose request got no answer) are not checked.

    1. fleetd runs on every live machine, its API answers (not 503) and lists exactly the
       live machines;
    2. a launched unit that is not global has processes on exactly one live machine (none:
       lost; more: duplicated), and its file is only there; a loaded one runs nowhere and
       has its file on one machine; an inactive one (and the template) is nowhere;
    3. a global launched unit runs on every live machine;
    4. nothing else of the workload (a destroyed unit) runs or has a file anywhere;
    5. no two instances of the Conflicts template share a machine;
    6. a MachineOf follower's file is on its leader's machine, and when both are launched
       they run there together;
    7. fleet lists exactly the units submitted and not destroyed, with their desired
       states, and reports each launched unit active where systemd runs it.
    """
    problems: list[str] = []
    skip = set(unknown)
    live = sorted(v.machine_id for v in views)
    name_of = {v.machine_id: v.name for v in views}

    # one sentence per machine or unit, so a breakage that lasts reads the same at every
    # check and is counted once (see Check.persisting)
    listing = [v for v in views if not v.fleetd and v.machines is not None]
    for v in views:
        if v.fleetd:
            problems.append(f"fleetd on {v.name}: {v.fleetd}")
    for machine_id in live:
        missing = [v.name for v in listing if machine_id not in (v.machines or [])]
        if missing:
            who = "" if len(missing) == len(listing) else f" (as seen from {missing})"
            problems.append(f"not registered: {name_of[machine_id]} is live but not in the machine list{who}")
    for machine_id in sorted({m for v in listing for m in v.machines or [] if m not in live}):
        problems.append(f"the machine list has {machine_id[:8]}, which is not a live machine")
    running_on = {name: sorted(v.name for v in views if name in v.running) for name in model}
    files_on = {name: sorted(v.name for v in views if name in v.files) for name in model}
    all_live = sorted(v.name for v in views)
    for name, exp in sorted(model.items()):
        run, files = running_on[name], files_on[name]
        if exp.kind is Kind.GLOBAL and exp.desired == "launched":
            if run != all_live:
                problems.append(f"global {name} runs on {run}, live machines are {all_live}")
        elif exp.desired == "launched":
            if not run:
                problems.append(f"lost: {name} (launched) runs nowhere; its file is on {files}")
            elif len(run) > 1:
                problems.append(f"duplicate: {name} runs on {run}")
            elif files != run:
                problems.append(f"{name} runs on {run} but its unit file is on {files}")
        elif exp.desired == "loaded":
            if run:
                problems.append(f"{name} is loaded (stopped) but runs on {run}")
            if len(files) != 1:
                problems.append(f"{name} is loaded: its unit file should be on one machine, is on {files}")
        elif run or files:
            problems.append(f"{name} is {exp.desired} ({exp.kind}) but runs on {run}, file on {files}")
    for v in views:
        for unit in sorted((v.running | v.files) - set(model) - skip):
            state = "runs" if unit in v.running else "has its unit file"
            problems.append(f"leftover: {unit} (destroyed) still {state} on {v.name}")
        for what, units in (("run", v.running), ("are placed", v.files)):
            instances = sorted(u for u in units if u.startswith("chaos-c@") and u != TEMPLATE)
            if len(instances) > 1:
                problems.append(f"Conflicts broken: {instances} {what} together on {v.name}")
    for name, exp in sorted(model.items()):
        if exp.kind is not Kind.FOLLOWER or exp.desired == "inactive" or exp.leader in skip:
            continue
        leader = model.get(exp.leader)
        lead_files = files_on.get(exp.leader, [])
        if files_on[name] and files_on[name] != lead_files:
            problems.append(f"MachineOf broken: {name} is on {files_on[name]}, its leader {exp.leader} on {lead_files}")
        both_launched = exp.desired == "launched" and leader is not None and leader.desired == "launched"
        if both_launched and running_on[name] and running_on[name] != running_on.get(exp.leader):
            problems.append(
                f"MachineOf broken: {name} runs on {running_on[name]}, "
                f"its leader {exp.leader} on {running_on.get(exp.leader)}"
            )
    if fleet is None:
        problems.append(f"fleet's view unavailable: {fleet_problem}")
        return problems
    for name in sorted(set(model) - set(fleet.units)):
        problems.append(f"lost: fleet no longer lists {name} ({model[name].desired})")
    for name in sorted(set(fleet.units) - set(model) - skip):
        problems.append(f"fleet lists {name} ({fleet.units[name]}), which was destroyed or never submitted")
    for name in sorted(set(model) & set(fleet.units)):
        if fleet.units[name] != model[name].desired:
            problems.append(f"fleet has {name} {fleet.units[name]}, it was set {model[name].desired}")
    machine_of = {v.name: v.machine_id for v in views}
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for record in fleet.states:
        by_unit.setdefault(str(record.get("name")), []).append(record)
    for name, exp in sorted(model.items()):
        if exp.desired != "launched":
            continue
        records = by_unit.get(name, [])
        seen = sorted((str(r.get("machineID")), str(r.get("systemdActiveState"))) for r in records)
        if exp.kind is Kind.GLOBAL:
            for machine_id in live:
                if (machine_id, "active") not in seen:
                    problems.append(f"fleet reports no active {name} on {name_of[machine_id]}")
            for machine_id, state in seen:
                if machine_id not in live or state != "active":
                    problems.append(f"fleet reports {name} {state} on {name_of.get(machine_id, machine_id[:8])}")
            continue
        if len(running_on[name]) == 1:
            want = [(machine_of[running_on[name][0]], "active")]
        else:
            continue  # already reported as lost or duplicated
        if seen != want:
            shown = [(name_of.get(m, m[:8]), s) for m, s in seen]
            problems.append(f"fleet reports {name} as {shown}, systemd runs it on {running_on[name]}")
    return problems


# -- the workload ---------------------------------------------------------------------------


class Workload:
    """Keeps changing units through fleetd's API, one operation at a time, at a modest rate.

    It runs in its own thread the whole time; the checker takes ``lock`` to freeze the
    expected state while it compares it with the cluster. ``model`` changes only when
    fleetd acknowledged a request, so it is what fleet promised to do.
    """

    def __init__(self, run: ChaosRun, rng: random.Random) -> None:
        self.run = run
        self.rng = rng
        self.lock = threading.Lock()
        self.model: dict[str, Expected] = {}
        #: units whose request never got an answer: fleet may or may not hold them, so the
        #: checker leaves them out (the failed request itself is the violation)
        self.unknown: set[str] = set()
        self.errors: list[str] = []
        self.ops = 0
        self._counter = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # requests --------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, ok: Iterable[int] = (200, 201, 204)) -> bool:
        """Send until some fleetd answers, retrying on other hosts while none does (within
        ``op_deadline``). Every request of the workload is idempotent, so a retry after a
        lost answer is safe. False (and a violation) when it never got through or was refused."""
        accepted = set(ok)
        deadline = time.monotonic() + self.run.config.op_deadline
        last = ""
        while True:
            hosts = self.run.usable_hosts()
            self.rng.shuffle(hosts)
            for fh in hosts[:2]:
                try:
                    status, answer = call(fh, method, f"/fleet/v1{path}", body, timeout=5.0)
                except Unreachable as exc:
                    last = str(exc)
                    continue
                if status in accepted:
                    return True
                last = f"{fh.name}: HTTP {status}: {answer}"
                if status < 500:  # refused: a retry would be refused again
                    self._error(f"{method} {path} refused: {last}")
                    return False
            if time.monotonic() > deadline or self._stop.is_set():
                self._error(f"{method} {path} got no answer for {self.run.config.op_deadline:g} s: {last}")
                return False
            time.sleep(0.5)

    def _error(self, message: str) -> None:
        self.run.log(f"workload: {message}")
        self.errors.append(f"workload: {message}")

    def put(self, name: str, kind: Kind, desired: str, leader: str = "", with_body: bool = True) -> bool:
        body: dict[str, Any] = {"name": name, "desiredState": desired}
        if with_body:
            body["options"] = parse_unit_file(unit_text(kind, name, leader)).to_options()
        if not self.request("PUT", f"/units/{name}", body):
            self.forget(name)
            return False
        self.model[name] = Expected(kind, desired, leader)
        return True

    def set_desired(self, name: str, desired: str) -> bool:
        if not self.request("PUT", f"/units/{name}", {"name": name, "desiredState": desired}):
            self.forget(name)
            return False
        self.model[name].desired = desired
        return True

    def destroy(self, name: str) -> bool:
        if not self.request("DELETE", f"/units/{name}", ok=(204, 404)):
            self.forget(name)
            return False
        self.model.pop(name, None)
        return True

    def forget(self, name: str) -> None:
        """We cannot know what fleet holds for ``name`` now: stop checking it."""
        self.model.pop(name, None)
        self.unknown.add(name)

    # operations ------------------------------------------------------------------------

    def _of(self, *kinds: Kind) -> list[str]:
        return sorted(n for n, e in self.model.items() if e.kind in kinds)

    def setup(self) -> None:
        """The initial units: the template and two instances, a global unit, a MachineOf
        pair and three plain units."""
        self.put(TEMPLATE, Kind.TEMPLATE, "inactive")
        self.put(GLOBAL, Kind.GLOBAL, "launched")
        for _ in range(2):
            self.add_instance()
        self.add_pair()
        for _ in range(3):
            self.add_plain()

    def add_plain(self) -> None:
        self.put(f"chaos-s{next(self._counter)}.service", Kind.PLAIN, "launched")

    def add_instance(self) -> None:
        # no body: fleetd makes the instance from the stored template, as fleetctl does
        self.put(f"chaos-c@{next(self._counter)}.service", Kind.INSTANCE, "launched", with_body=False)

    def add_pair(self) -> None:
        n = next(self._counter)
        leader, follower = f"chaos-l{n}.service", f"chaos-f{n}.service"
        if self.put(leader, Kind.LEADER, "launched"):
            self.put(follower, Kind.FOLLOWER, "launched", leader=leader)

    def remove_pair(self, leader: str) -> None:
        follower = leader.replace("chaos-l", "chaos-f")
        self.destroy(follower)  # first, so it is never left without its leader
        self.destroy(leader)

    def step(self) -> str:
        """One random operation; returns what it did (for the log)."""
        cfg = self.run.config
        plain, instances = self._of(Kind.PLAIN), self._of(Kind.INSTANCE)
        leaders = self._of(Kind.LEADER)
        changeable = self._of(Kind.PLAIN, Kind.INSTANCE, Kind.LEADER, Kind.FOLLOWER)
        launched = [n for n in changeable if self.model[n].desired == "launched"]
        stopped = [n for n in changeable if self.model[n].desired != "launched"]
        choices: list[tuple[str, Callable[[], None]]] = []
        if len(plain) < cfg.max_plain:
            choices.append(("submit+start a unit", self.add_plain))
        if plain:
            choices.append(("destroy a unit", lambda: self.destroy(self.rng.choice(plain))))
        # a leader is never unloaded: its follower would have no machine to go to
        unloadable = [n for n in launched if self.model[n].kind is not Kind.LEADER]
        if launched:
            choices.append(("stop a unit", lambda: self.set_desired(self.rng.choice(launched), "loaded")))
        if unloadable:
            choices.append(("unload a unit", lambda: self.set_desired(self.rng.choice(unloadable), "inactive")))
        if stopped:
            choices.append(("start a unit", lambda: self.set_desired(self.rng.choice(stopped), "launched")))
        # leave room: an instance per machine at most, with one machine to spare for a fault
        if len(instances) < max(1, cfg.hosts - 2):
            choices.append(("start a Conflicts instance", self.add_instance))
        if instances:
            choices.append(("destroy a Conflicts instance", lambda: self.destroy(self.rng.choice(instances))))
        if len(leaders) < cfg.max_pairs:
            choices.append(("start a MachineOf pair", self.add_pair))
        if leaders:
            choices.append(("destroy a MachineOf pair", lambda: self.remove_pair(self.rng.choice(leaders))))
        if EXTRA_GLOBAL in self.model:
            choices.append(("destroy a global unit", lambda: self.destroy(EXTRA_GLOBAL)))
        else:
            choices.append(("start a global unit", lambda: self.put(EXTRA_GLOBAL, Kind.GLOBAL, "launched")))
        what, action = self.rng.choice(choices)
        action()
        self.ops += 1
        return what

    # the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="chaos-workload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.run.config.op_deadline + 15)

    def _loop(self) -> None:
        low, high = self.run.config.op_interval
        while not self._stop.wait(self.rng.uniform(low, high)):
            with self.lock:
                if self._stop.is_set():
                    return
                try:
                    self.step()
                except Exception as exc:  # noqa: BLE001 - a harness bug must not end the run silently
                    self.run.report.errors.append(f"workload step failed: {exc!r}")
                    self.run.log(f"workload step failed: {exc!r}")


# -- the Conflicts monitor ----------------------------------------------------------------


class ColocationMonitor:
    """Samples every live host's cgroups about three times a second for two Conflicts
    instances with processes on one machine: that must never happen, not even for a
    moment, so waiting for the end of a fault would miss it. Reading cgroup files costs no
    subprocess, so sampling often does not load the machine."""

    def __init__(self, run: ChaosRun, interval: float = 0.3) -> None:
        self.run = run
        self.interval = interval
        self.incidents: list[str] = []
        self._last: dict[str, tuple[str, ...]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-colocation", daemon=True)

    @staticmethod
    def instances_running(fh: FleetHost) -> tuple[str, ...]:
        """Instances of the template whose cgroup has processes on this host right now."""
        system = fh.host.cgroup / "system.slice"
        found = []
        for pattern in ("chaos-c@*.service", "*/chaos-c@*.service"):
            for unit in system.glob(pattern):
                with contextlib.suppress(OSError):
                    if "populated 1" in (unit / "cgroup.events").read_text():
                        found.append(unit.name)
        return tuple(sorted(found))

    def sample(self) -> None:
        for fh in self.run.cluster.live_hosts():
            together = self.instances_running(fh) if fh.host.is_alive() else ()
            if len(together) > 1 and together != self._last.get(fh.name):
                incident = f"Conflicts broken at {self.run.elapsed():.1f}s: {list(together)} ran together on {fh.name}"
                self.run.log(incident)
                self.incidents.append(incident)
            self._last[fh.name] = together if len(together) > 1 else ()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a host vanishing mid-sample is normal
                if self.run.verbose:
                    self.run.log(f"colocation sample: {exc!r}")


# -- the run ----------------------------------------------------------------------------------


class ChaosRun:
    """Boot the cluster, run the workload, inject faults one at a time, check after each.

    Faults are injected from the thread that called :meth:`execute` (etcd members die with
    the thread that started them, so they are restarted from the thread that owns them).
    """

    def __init__(self, config: ChaosConfig, *, verbose: bool = False) -> None:
        self.config = config
        self.verbose = verbose
        self.report = ChaosReport(config)
        self.fault_rng = random.Random(config.seed)
        self.workload = Workload(self, random.Random(config.seed * 7919 + 1))
        self.cluster = FleetCluster(
            size=config.hosts,
            etcd_size=config.etcd_members,
            lab_prefix=config.lab_prefix,
            agent_ttl=f"{config.agent_ttl:g}s",
        )
        self.monitor = ColocationMonitor(self)
        self.known: set[str] = set()  # problems already reported: counted once
        self.disturbed: set[str] = set()  # hosts under a fault: the workload avoids them
        self._t0 = time.monotonic()
        self.timeline: list[str] = []
        self._next_host = config.hosts + 1
        self._paused: EtcdMember | None = None
        self._partitioned: FleetHost | None = None

    # helpers ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {message}"
        self.timeline.append(f"{time.monotonic():.3f} {line}")  # monotonic: as in the journals
        self.config.log(line)

    def usable_hosts(self) -> list[FleetHost]:
        """Live hosts not under a fault: where the workload and the checker send requests."""
        return [h for h in self.cluster.live_hosts() if h.name not in self.disturbed]

    def engine_leader_name(self) -> str:
        with contextlib.suppress(Exception):
            leader = self.cluster.engine_leader()
            for fh in self.cluster.hosts:
                if fh.machine_id == leader and fh.host.is_alive():
                    return fh.name
        return ""

    # checking --------------------------------------------------------------------------

    def fleet_view(self, exclude: set[str]) -> tuple[FleetView | None, str]:
        problem = "no usable host"
        for fh in [h for h in self.usable_hosts() if h.name not in exclude][:3]:
            try:
                units = http_list(fh, "/fleet/v1/units", "units")
                states = http_list(fh, "/fleet/v1/state", "states")
            except (Unreachable, RuntimeError) as exc:
                problem = str(exc)
                continue
            return FleetView({u["name"]: u["desiredState"] for u in units}, states), ""
        return None, problem

    def poll(self, pool: ThreadPoolExecutor, exclude: set[str]) -> list[str]:
        hosts = [h for h in self.cluster.live_hosts() if h.name not in exclude]
        views = list(pool.map(observe_host, hosts))
        alive = {h.name for h in self.cluster.live_hosts()}
        views = [v for v in views if v.name in alive]  # a host that died meanwhile is not live
        fleet, fleet_problem = self.fleet_view(exclude)
        return evaluate(self.workload.model, views, fleet, fleet_problem, self.workload.unknown)

    def check(self, label: str, since: float, exclude: Iterable[str] = ()) -> Check:
        """Freeze the workload, then poll the invariants until they hold; the recovery time
        counts from ``since`` (when the fault struck or was undone)."""
        excluded = set(exclude)
        deadline = since + self.config.timeout
        problems: list[str] = []
        with self.workload.lock, ThreadPoolExecutor(max_workers=max(2, self.config.hosts + 2)) as pool:
            while True:
                try:
                    problems = self.poll(pool, excluded)
                except Exception as exc:  # noqa: BLE001 - e.g. a host command timed out: poll again
                    problems = [f"observing the cluster failed: {exc!r}"]
                now = time.monotonic()
                new = [p for p in problems if p not in self.known]
                old = [p for p in problems if p in self.known]
                if not new:
                    return Check(label, now - since, persisting=old)
                if now > deadline:
                    self.known.update(new)
                    return Check(label, now - since, new, old)
                time.sleep(0.2)

    # faults ----------------------------------------------------------------------------

    def pick_host(self) -> FleetHost:
        return self.fault_rng.choice(sorted(self.usable_hosts(), key=lambda h: h.name))

    def pick_member(self) -> tuple[EtcdMember, str]:
        """The etcd leader half of the time (when one is known), else another member."""
        etcd = self.cluster.etcd
        assert etcd is not None
        leader = etcd.leader()
        want_leader = self.fault_rng.random() < 0.5
        if leader is not None and want_leader:
            return leader, f"{leader.name} (leader)"
        others = [m for m in etcd.members if m is not leader]
        member = self.fault_rng.choice(others)
        return member, member.name

    def inject(self, index: int, kind: str) -> FaultResult:
        cfg = self.config
        result = FaultResult(index, kind, "", self.elapsed())
        if kind == "crash-host":
            victim = self.pick_host()
            result.target = victim.name + (" (engine leader)" if victim.name == self.engine_leader_name() else "")
            self.disturbed.add(victim.name)
            self.log(f"fault {index}: crash-host {result.target}")
            struck = time.monotonic()
            try:
                victim.host.crash()
            finally:
                self.disturbed.discard(victim.name)
            name = f"h{self._next_host}"
            self._next_host += 1
            result.target += f", replaced by {name}"
            self.cluster.add_host(name, wait=False)
            self.log(f"fault {index}: {name} booted")
            result.checks.append(self.check("after crash", struck))
        elif kind == "kill-fleetd":
            victim = self.pick_host()
            result.target = victim.name + (" (engine leader)" if victim.name == self.engine_leader_name() else "")
            self.disturbed.add(victim.name)
            self.log(f"fault {index}: kill-fleetd {result.target}")
            struck = time.monotonic()
            try:
                victim.kill_fleetd()
            finally:
                self.disturbed.discard(victim.name)
            result.checks.append(self.check("after fleetd kill", struck))
        elif kind == "stop-etcd":
            member, result.target = self.pick_member()
            etcd = self.cluster.etcd
            assert etcd is not None
            held = self.fault_rng.uniform(max(2.0, 0.5 * cfg.agent_ttl), max(3.0, 1.5 * cfg.agent_ttl))
            started = time.monotonic()
            self._paused = member
            self.log(f"fault {index}: SIGSTOP {result.target} for {held:.1f}s")
            etcd.pause_member(member)
            try:
                # two members of three keep quorum: fleet must carry on while one hangs,
                # once its clients have given up on the hung one (etcd_request_timeout)
                time.sleep(0.5)
                result.checks.append(self.check("while stopped", started))
                time.sleep(max(0.0, started + held - time.monotonic()))
            finally:
                etcd.resume_member(member)
                self._paused = None
                self.log(f"fault {index}: SIGCONT {member.name}")
            result.held_s = time.monotonic() - started
            result.checks.append(self.check("after SIGCONT", time.monotonic()))
        elif kind == "restart-etcd":
            member, result.target = self.pick_member()
            sig = self.fault_rng.choice([signal.SIGTERM, signal.SIGKILL])
            result.target += f" by {signal.Signals(sig).name}"
            etcd = self.cluster.etcd
            assert etcd is not None
            self.log(f"fault {index}: restart-etcd {result.target}")
            struck = time.monotonic()
            etcd.restart_member(member, sig)
            result.checks.append(self.check("after restart", struck))
        elif kind == "partition-host":
            victim = self.pick_host()
            result.target = victim.name + (" (engine leader)" if victim.name == self.engine_leader_name() else "")
            extra = self.fault_rng.uniform(0.5, 2.0)
            self.disturbed.add(victim.name)
            started = time.monotonic()
            self._partitioned = victim
            self.log(f"fault {index}: partition {result.target}")
            victim.host.partition()
            try:
                # its lease runs out after agent_ttl: until then, the cut-off host still counts
                time.sleep(cfg.agent_ttl)
                # the rest of the cluster must carry on without it: its units elsewhere
                result.checks.append(self.check("failover while cut off", started, exclude={victim.name}))
                time.sleep(max(0.0, started + cfg.agent_ttl + extra - time.monotonic()))
            finally:
                victim.host.heal()
                self._partitioned = None
                self.disturbed.discard(victim.name)
                self.log(f"fault {index}: healed {victim.name}")
            result.held_s = time.monotonic() - started
            result.checks.append(self.check("after heal", time.monotonic()))
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return result

    def undo_all(self) -> None:
        """Leave nothing paused or cut off, whatever happened."""
        if self._paused is not None and self.cluster.etcd is not None:
            with contextlib.suppress(Exception):
                self.cluster.etcd.resume_member(self._paused)
        if self._partitioned is not None:
            with contextlib.suppress(Exception):
                self._partitioned.host.heal()

    # the whole run ---------------------------------------------------------------------

    def kinds(self) -> Iterable[str]:
        order: list[str] = []
        if self.config.cover_all:
            order = list(FAULT_KINDS)
            self.fault_rng.shuffle(order)
        yield from order
        while True:
            yield self.fault_rng.choice(FAULT_KINDS)

    def describe(self, result: FaultResult) -> str:
        held = f" held={result.held_s:.1f}s" if result.held_s else ""
        checks = " ".join(f"{c.label.replace(' ', '_')}={c.recovery_s:.2f}s" for c in result.checks)
        verdict = "ok"
        if result.error:
            verdict = f"ERROR {result.error}"
        elif result.problems:
            verdict = "VIOLATION " + "; ".join(result.problems)
        elif result.recovery_s > self.config.target:
            verdict = f"SLOW (target {self.config.target:g}s)"
        persisting = max((len(c.persisting) for c in result.checks), default=0)
        if persisting:
            verdict += f" ({persisting} problems of earlier faults persist)"
        return (
            f"fault {result.index} {result.kind} {result.target}{held}: "
            f"recovery_s={result.recovery_s:.2f} [{checks}] {verdict}"
        )

    def execute(self) -> ChaosReport:
        cfg = self.config
        report = self.report
        self._t0 = time.monotonic()
        try:
            self.cluster.start(timeout=120)
            self.log(
                f"cluster up: {cfg.hosts} hosts, {cfg.etcd_members} etcd members, agent_ttl {cfg.agent_ttl:g}s, "
                f"seed {cfg.seed}"
            )
            self.workload.setup()
            report.baseline = self.check("baseline", time.monotonic())
            verdict = "ok" if report.baseline.ok else f"VIOLATION {report.baseline.problems}"
            self.log(f"baseline: {verdict} after {report.baseline.recovery_s:.2f}s")
            self.workload.start()
            self.monitor.start()
            faults_start = time.monotonic()
            end = faults_start + cfg.minutes * 60
            for index, kind in enumerate(self.kinds(), 1):
                time.sleep(self.fault_rng.uniform(*cfg.quiet))
                if time.monotonic() >= end and index > cfg.min_faults:
                    break
                if cfg.hard_stop_s and time.monotonic() >= faults_start + cfg.hard_stop_s:
                    self.log(f"hard stop after {cfg.hard_stop_s:g}s of faults")
                    break
                try:
                    result = self.inject(index, kind)
                except Exception as exc:  # noqa: BLE001 - the lab failed: report it, keep the run honest
                    result = FaultResult(index, kind, "", self.elapsed(), error=repr(exc))
                    report.errors.append(f"fault {index} {kind}: {exc!r}")
                finally:
                    self.undo_all()
                report.faults.append(result)
                self.log(self.describe(result))
            self.workload.stop()
            report.final = self.check("final", time.monotonic())
            if not report.final.ok:
                self.log(f"final check: {report.final.problems}")
        except Exception as exc:  # noqa: BLE001 - reported; the cluster is still removed below
            report.errors.append(f"run aborted: {exc!r}")
            self.log(f"run aborted: {exc!r}")
            self.dump_logs()
        finally:
            try:
                self.undo_all()
                self.workload.stop()
                self.monitor.stop()
                report.workload_errors = list(self.workload.errors)
                report.colocations = list(self.monitor.incidents)
                report.ops = self.workload.ops
                if report.violations and self.verbose:
                    self.dump_logs()
                if cfg.log_dir:
                    self.save_logs(cfg.log_dir)
                report.duration_s = self.elapsed()
            finally:
                self.cluster.close()  # whatever failed above, nothing of the run is left
        return report

    def dump_logs(self, lines: int = 60) -> None:
        """fleetd's journal on every live host: the evidence for a violation."""
        for fh in self.cluster.live_hosts():
            with contextlib.suppress(Exception):
                self.log(f"--- fleetd on {fh.name} ({fh.machine_id[:8]}), last {lines} lines:\n{fleetd_log(fh, lines)}")

    def save_logs(self, directory: str) -> None:
        """Copy every host's fleetd journal (crashed hosts have none left) and the etcd logs."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for fh in self.cluster.live_hosts():
            with contextlib.suppress(Exception):
                text = fh.host.journal("fleetd.service", output="short-monotonic")
                (out / f"fleetd-{fh.name}-{fh.machine_id[:8]}.log").write_text(text)
        if self.cluster.etcd is not None:
            for member in self.cluster.etcd.members:
                with contextlib.suppress(OSError):
                    shutil.copyfile(member.log_path, out / f"{member.name}.log")
        (out / "timeline.txt").write_text("\n".join(self.timeline) + "\n")


def run_chaos(config: ChaosConfig, *, verbose: bool = False) -> ChaosReport:
    """Run one chaos session and return its report (the cluster is gone afterwards)."""
    return ChaosRun(config, verbose=verbose).execute()


__all__ = [
    "FAULT_KINDS",
    "ChaosConfig",
    "ChaosReport",
    "ChaosRun",
    "Check",
    "Expected",
    "FaultResult",
    "HostView",
    "Kind",
    "evaluate",
    "run_chaos",
]
