"""fleetctl end to end: the real CLI, run as a user runs it, against a real cluster.

Every command runs as a subprocess (``python -m fleetctl.main``) in a directory holding
the unit files, with ``FLEETCTL_ENDPOINT`` pointing at one host's fleetd (TCP API), and
each test checks both what fleetctl says (output, exit status) and what really happens
in the hosts' own systemd (``systemctl show`` inside each host). The cluster is
``fleetlab.fleetcluster``: etcd plus three namespaced systemd hosts each running
fleetd as a socket-activated service. Waits are conditions with deadlines.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlab.fleetcluster import FleetCluster, FleetHost
from fleetlab.wait import wait_until

pytestmark = pytest.mark.cluster

TTL = 3.0  # agent_ttl of the module's cluster (fixture `cluster` in conftest.py)
LAB_PREFIX = "fctl"
ROOT = Path(__file__).resolve().parents[2]
# fleetctl can take a few seconds when it blocks; a hung command must not hang the suite
COMMAND_TIMEOUT = 60.0
# nothing listens there: connecting is refused at once
BOGUS_ENDPOINT = "http://127.0.0.1:1"

SLEEPER = """[Unit]
Description={description}

[Service]
ExecStart=/bin/sh -c 'echo {echo}; exec sleep infinity'
"""
# prints "tick N" twice a second (N counts up from 0)
TICKER = """[Unit]
Description={description}

[Service]
ExecStart=/bin/sh -c 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.5; done'
"""
TEMPLATE = """[Unit]
Description=Hello %i

[Service]
ExecStart=/bin/sh -c 'echo hello %i; exec sleep infinity'
"""
TICK_RE = re.compile(r"\btick (\d+)\b")


# -- the cluster and running fleetctl ------------------------------------------------------


def fleetctl_env(endpoint: str | None) -> dict[str, str]:
    """The caller's environment without any FLEETCTL_* setting, plus FLEETCTL_ENDPOINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if endpoint is not None:
        env["FLEETCTL_ENDPOINT"] = endpoint
    return env


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err

    def __str__(self) -> str:
        return f"fleetctl {' '.join(self.argv)} -> {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


@dataclass
class Fleetctl:
    """fleetctl as a user runs it: in ``cwd`` (the unit files), FLEETCTL_ENDPOINT set."""

    cwd: Path
    endpoint: str

    def argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "fleetctl.main", *args]

    def run(self, *args: str, env_endpoint: str | None = "", timeout: float = COMMAND_TIMEOUT) -> Result:
        """Run fleetctl; ``env_endpoint`` overrides FLEETCTL_ENDPOINT (None: unset)."""
        endpoint = self.endpoint if env_endpoint == "" else env_endpoint
        proc = subprocess.run(
            self.argv(args),
            cwd=self.cwd,
            env=fleetctl_env(endpoint),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(list(args), proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        result = self.run(*args, timeout=timeout)
        assert result.code == 0, str(result)
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            cwd=self.cwd,
            env=fleetctl_env(self.endpoint),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def write(self, name: str, text: str) -> Path:
        path = self.cwd / name
        path.write_text(text)
        return path

    def unit_files(self) -> list[str]:
        """Unit names, as list-unit-files prints them (its order)."""
        return self.ok("list-unit-files", "--no-legend", "--fields=unit").out.split()

    def unit_rows(self) -> dict[str, list[str]]:
        """list-units: unit -> [machine, active, sub] (one row per unit expected)."""
        rows: dict[str, list[str]] = {}
        for line in self.ok("list-units", "--no-legend", "--fields=unit,machine,active,sub").out.splitlines():
            cells = line.split()
            assert cells[0] not in rows, f"{cells[0]} listed twice"
            rows[cells[0]] = cells[1:]
        return rows


@pytest.fixture
def fleetctl(cluster: FleetCluster, tmp_path: Path) -> Iterator[Fleetctl]:
    """fleetctl in a fresh directory, talking to the first host; every unit is destroyed
    afterwards (and found gone from every host's systemd)."""
    ctl = Fleetctl(tmp_path, cluster.hosts[0].endpoint)
    yield ctl
    names = ctl.unit_files()
    if names:
        ctl.ok("destroy", *names)
        wait_until(lambda: not any(loaded_hosts(cluster, names).values()), 20, f"{names} gone from every host")
    assert ctl.unit_files() == []


# -- what the hosts' systemd says -------------------------------------------------------------


PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "Description")


def systemd_units(host: FleetHost, units: Sequence[str]) -> dict[str, dict[str, str]]:
    """Properties of ``units`` in one host's systemd (one ``systemctl show`` for all)."""
    text = host.host.systemctl("show", "-p", ",".join(PROPERTIES), *units).stdout
    result: dict[str, dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        result[props["Id"]] = props
    return result


def everywhere(cluster: FleetCluster, units: Sequence[str]) -> dict[str, dict[str, dict[str, str]]]:
    """host name -> unit -> properties, for every host."""
    return {h.name: systemd_units(h, units) for h in cluster.hosts}


def loaded_hosts(cluster: FleetCluster, units: Sequence[str]) -> dict[str, list[str]]:
    """unit -> names of the hosts whose systemd has it loaded."""
    seen = everywhere(cluster, units)
    return {u: [h for h in seen if seen[h][u]["LoadState"] == "loaded"] for u in units}


def active_hosts(cluster: FleetCluster, units: Sequence[str]) -> dict[str, list[str]]:
    """unit -> names of the hosts whose systemd has it active."""
    seen = everywhere(cluster, units)
    return {u: [h for h in seen if seen[h][u]["ActiveState"] == "active"] for u in units}


def host_named(cluster: FleetCluster, name: str) -> FleetHost:
    return next(h for h in cluster.hosts if h.name == name)


def legend(host: FleetHost) -> str:
    """How fleetctl names a machine: ``<first 8 id chars>.../<ip>``."""
    return f"{host.machine_id[:8]}.../{host.ip}"


def reported_machines(output: str, verb: str) -> dict[str, str]:
    """From ``Unit X <verb> on <machine>`` lines: unit -> machine legend."""
    return dict(re.findall(rf"^Unit (\S+) {verb} on (\S+)$", output, re.M))


def instances(count: int) -> list[str]:
    return [f"hello@{i}.service" for i in range(1, count + 1)]


def instance_of(name: str) -> str:
    """``hello@3.service`` -> ``3``."""
    return name.partition("@")[2].rpartition(".")[0]


# -- following a journal ---------------------------------------------------------------------


class LineReader:
    """The stdout lines of a running process, read by a thread, awaited with deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_until(self, predicate: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        """Read lines until ``predicate(lines so far)`` holds; raise naming ``what``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}; got:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(
                    f"fleetctl exited ({self.proc.wait()}) while waiting for {what}; "
                    f"got:\n" + "\n".join(self.lines) + f"\nstderr: {err}"
                )
            self.lines.append(line)
        return self.lines

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._thread.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def ticks(lines: Sequence[str], prefix: str = "") -> list[int]:
    return [int(m.group(1)) for line in lines if line.startswith(prefix) and (m := TICK_RE.search(line))]


def journal_ticks(host: FleetHost, unit: str) -> list[int]:
    return ticks(host.host.journal(unit).splitlines())


# -- the tests ---------------------------------------------------------------------------------


def test_list_machines_shows_every_host_with_its_ip(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    result = fleetctl.ok("list-machines")
    header, *rows = result.out.splitlines()
    assert header.split() == ["MACHINE", "IP", "METADATA"]
    assert len(rows) == 3
    cells = sorted(row.split() for row in rows)
    expected = sorted([f"{h.machine_id[:8]}...", h.ip, f"role={h.metadata['role']}"] for h in cluster.hosts)
    assert cells == expected
    full = fleetctl.ok("list-machines", "--full", "--no-legend", "--fields=machine,ip").out
    assert sorted(line.split() for line in full.splitlines()) == sorted([h.machine_id, h.ip] for h in cluster.hosts)


def test_submit_and_destroy_nine_template_instances_twice(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    fleetctl.write("hello@.service", TEMPLATE)
    names = instances(9)
    for _ in range(2):
        submitted = fleetctl.ok("submit", *names)
        assert submitted.out.splitlines() == [f"Unit {n} inactive" for n in names]
        listing = fleetctl.ok("list-unit-files", "--no-legend", "--fields=unit,dstate,state,target").out
        assert [line.split() for line in listing.splitlines()] == [[n, "inactive", "inactive", "-"] for n in names]
        # submitted only: no host's systemd knows them
        assert loaded_hosts(cluster, names) == {n: [] for n in names}
        destroyed = fleetctl.ok("destroy", *names)
        assert destroyed.out.splitlines() == [f"Destroyed {n}" for n in names]
        assert fleetctl.unit_files() == []


def test_load_and_unload_six_units(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    fleetctl.write("hello@.service", TEMPLATE)
    names = instances(6)
    loaded = fleetctl.ok("load", *names)
    reported = reported_machines(loaded.out, "loaded")
    assert sorted(reported) == names, str(loaded)
    by_legend = {legend(h): h.name for h in cluster.hosts}
    seen = everywhere(cluster, names)
    for name in names:
        # loaded (not started) in exactly one host's systemd: the one fleetctl named
        where = [h for h in seen if seen[h][name]["LoadState"] == "loaded"]
        assert where == [by_legend[reported[name]]], (name, where, reported[name])
        assert seen[where[0]][name]["ActiveState"] == "inactive"
        assert seen[where[0]][name]["Description"] == f"Hello {instance_of(name)}"
    rows = fleetctl.unit_rows()
    assert {n: rows[n] for n in names} == {n: [reported[n], "inactive", "dead"] for n in names}
    unloaded = fleetctl.ok("unload", *names)
    # printed as each unit gets there: any order
    assert sorted(unloaded.out.splitlines()) == [f"Unit {n} inactive" for n in names]
    wait_until(lambda: loaded_hosts(cluster, names) == {n: [] for n in names}, 15, "the units unloaded from systemd")
    assert fleetctl.unit_rows() == {}
    dstates = fleetctl.ok("list-unit-files", "--no-legend", "--fields=unit,dstate").out
    assert [line.split() for line in dstates.splitlines()] == [[n, "inactive"] for n in names]


def test_start_and_stop_three_units(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    fleetctl.write("hello@.service", TEMPLATE)
    names = instances(3)
    started = fleetctl.ok("start", *names)
    reported = reported_machines(started.out, "launched")
    assert sorted(reported) == names, str(started)
    by_legend = {legend(h): h.name for h in cluster.hosts}
    # start waits until systemd runs them: each active in exactly the host fleetctl named
    assert active_hosts(cluster, names) == {n: [by_legend[reported[n]]] for n in names}
    for name in names:
        host = host_named(cluster, by_legend[reported[name]])

        def printed(host: FleetHost = host, name: str = name) -> bool:
            return f"hello {instance_of(name)}" in host.host.journal(name)

        wait_until(printed, 10, f"{name}'s output in its host's journal")
    # list-units: MACHINE is <short id>.../<ip>, as fleetctl said
    assert fleetctl.unit_rows() == {n: [reported[n], "active", "running"] for n in names}
    stopped = fleetctl.ok("stop", *names)
    assert reported_machines(stopped.out, "loaded") == reported, str(stopped)

    def stopped_but_loaded() -> bool:
        seen = everywhere(cluster, names)
        return all(
            [h for h in seen if seen[h][n]["LoadState"] == "loaded"] == [by_legend[reported[n]]]
            and all(seen[h][n]["ActiveState"] in ("inactive", "failed") for h in seen)
            for n in names
        )

    wait_until(stopped_but_loaded, 15, "the units stopped but still loaded")
    assert fleetctl.unit_rows() == {n: [reported[n], "inactive", "dead"] for n in names}


def test_restart_starts_a_new_process(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    fleetctl.write("again.service", SLEEPER.format(description="again", echo="again started"))
    fleetctl.ok("start", "again.service")
    (where,) = active_hosts(cluster, ["again.service"])["again.service"]
    host = host_named(cluster, where)
    old_pid = host.main_pid("again.service")
    assert old_pid > 0
    restarted = fleetctl.ok("restart", "again.service")
    assert restarted.out.splitlines() == [
        f"Unit again.service loaded on {legend(host)}",
        f"Unit again.service launched on {legend(host)}",
    ]
    wait_until(
        lambda: host.running("again.service") and host.main_pid("again.service") not in (0, old_pid),
        10,
        "again.service running again with a new main process",
    )
    assert active_hosts(cluster, ["again.service"]) == {"again.service": [where]}
    wait_until(
        lambda: host.host.journal("again.service").count("again started") == 2,
        10,
        "the second start's output in the journal",
    )


def test_replace_with_submit_load_and_start(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    from fleetd.model.unitfile import parse_unit_file

    def version(n: str) -> str:
        return SLEEPER.format(description=f"rep {n}", echo=f"version-{n}")

    unit = "rep.service"
    fleetctl.write(unit, version("one"))
    fleetctl.ok("submit", unit)
    assert fleetctl.ok("cat", unit).out == parse_unit_file(version("one")).serialize()

    # a changed local file alone changes nothing (with a warning)
    fleetctl.write(unit, version("two"))
    unchanged = fleetctl.ok("submit", unit)
    assert "differs from local unit file" in unchanged.err and "--replace" in unchanged.err
    assert fleetctl.ok("cat", unit).out == parse_unit_file(version("one")).serialize()
    fleetctl.ok("submit", "--replace", unit)
    assert fleetctl.ok("cat", unit).out == parse_unit_file(version("two")).serialize()

    # load --replace: systemd loads the new body
    fleetctl.write(unit, version("three"))
    loaded = fleetctl.ok("load", "--replace", unit)
    assert fleetctl.ok("cat", unit).out == parse_unit_file(version("three")).serialize()
    ((name, machine),) = reported_machines(loaded.out, "loaded").items()
    host = next(h for h in cluster.hosts if legend(h) == machine)
    wait_until(lambda: host.host.unit_property(unit, "Description") == "rep three", 10, "the new body loaded")
    assert host.unit_active(unit) == "inactive"

    # start --replace: it runs the new body
    fleetctl.write(unit, version("four"))
    fleetctl.ok("start", "--replace", unit)
    assert fleetctl.ok("cat", unit).out == parse_unit_file(version("four")).serialize()
    (where,) = active_hosts(cluster, [unit])[unit]
    host = host_named(cluster, where)
    assert host.host.unit_property(unit, "Description") == "rep four"
    wait_until(lambda: "version-four" in host.host.journal(unit), 10, "version-four in the journal")
    old_pid = host.main_pid(unit)

    # start --replace of a running unit: the running process is replaced
    fleetctl.write(unit, version("five"))
    fleetctl.ok("start", "--replace", unit)
    assert fleetctl.ok("cat", unit).out == parse_unit_file(version("five")).serialize()

    def runs_five() -> str | None:
        where = [h for h in cluster.hosts if h.running(unit)]
        if (
            len(where) == 1
            and where[0].host.unit_property(unit, "Description") == "rep five"
            and "version-five" in where[0].host.journal(unit)
        ):
            return where[0].name
        return None

    new_where = wait_until(runs_five, 10, "the fifth version running")
    assert host_named(cluster, new_where).main_pid(unit) != old_pid
    journal = fleetctl.ok("journal", "-n", "50", unit).out
    assert "version-five" in journal


def test_cat_prints_the_canonical_unit_file(fleetctl: Fleetctl) -> None:
    from fleetd.model.unitfile import parse_unit_file

    text = (
        "# a comment\n"
        "[Unit]\n"
        "Description=cat me   \n"
        "After=network.target\n"
        "\n"
        "; another comment\n"
        "[Service]\n"
        "Environment=A=1\n"
        "Environment=B=2\n"
        "ExecStart=/bin/sh -c 'echo one \\\n"
        "  two'\n"
        "\n"
        "[X-Fleet]\n"
        "MachineMetadata=role=web\n"
    )
    fleetctl.write("catme.service", text)
    fleetctl.write("other.service", SLEEPER.format(description="other", echo="x"))
    fleetctl.ok("submit", "catme.service", "other.service")
    assert fleetctl.ok("cat", "catme.service").out == parse_unit_file(text).serialize()
    both = fleetctl.ok("cat", "catme.service", "other.service").out
    assert both == (
        parse_unit_file(text).serialize()
        + "\n"
        + parse_unit_file(SLEEPER.format(description="other", echo="x")).serialize()
    )
    missing = fleetctl.run("cat", "nothere.service")
    assert missing.code == 1 and "nothere.service" in missing.err


def test_list_unit_files_is_sorted_by_name(fleetctl: Fleetctl) -> None:
    names = [
        "zeta.service",
        "alpha.service",
        "mid@10.service",
        "Beta.service",
        "mid@2.service",
        "alpha-2.service",
        "b9.service",
        "b10.service",
        "alpha.timer",
    ]
    for name in names:
        fleetctl.write(
            name,
            SLEEPER.format(description=name, echo=name) if name.endswith(".service") else "[Timer]\nOnActiveSec=1h\n",
        )
    fleetctl.ok("submit", *reversed(names))
    assert fleetctl.unit_files() == sorted(names)
    table = fleetctl.ok("list-unit-files").out.splitlines()
    assert table[0].split()[0] == "UNIT"
    assert [line.split()[0] for line in table[1:]] == sorted(names)


def test_start_of_an_unplaceable_unit_names_the_reason(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    fleetctl.write(
        "x.service", SLEEPER.format(description="x", echo="x") + "\n[X-Fleet]\nMachineMetadata=region=nowhere\n"
    )
    t0 = time.monotonic()
    result = fleetctl.run("start", "--block-attempts=3", "x.service")
    took = time.monotonic() - t0
    assert result.code != 0, str(result)
    final = result.err.strip().splitlines()[-1]
    assert final.startswith("Error:") and "x.service" in final and "region=nowhere" in final, str(result)
    assert 3 <= took < 20, f"--block-attempts=3 took {took:.1f} s"
    assert loaded_hosts(cluster, ["x.service"]) == {"x.service": []}
    dstate = fleetctl.ok("list-unit-files", "--no-legend", "--fields=unit,dstate,target").out
    assert dstate.split() == ["x.service", "launched", "-"]


def test_journal_lines_and_follow(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    unit = "ticker.service"
    fleetctl.write(unit, TICKER.format(description="ticker"))
    fleetctl.ok("start", unit)
    (where,) = active_hosts(cluster, [unit])[unit]
    host = host_named(cluster, where)
    wait_until(lambda: len(journal_ticks(host, unit)) >= 4, 10, "a few ticks in the journal")

    lines = fleetctl.ok("journal", "-n", "3", unit).out.splitlines()
    assert len(lines) == 3, lines
    assert all(f" {host.name} " in line for line in lines)  # journalctl's short format: the host
    assert TICK_RE.search(lines[-1]), lines
    assert ticks(lines)[-1] in journal_ticks(host, unit)

    reader = LineReader(fleetctl.popen("journal", "-f", "-n", "1", unit))
    try:
        first = reader.wait_until(lambda got: bool(ticks(got)), 10, "the current tick")
        start = ticks(first)[0]
        # lines printed after the follow began: it keeps reading
        got = reader.wait_until(
            lambda got: bool(ticks(got)) and max(ticks(got)) >= start + 3, 10, f"tick {start + 3} (new lines)"
        )
        assert ticks(got) == list(range(start, start + len(ticks(got))))  # in order, none lost
        assert reader.proc.poll() is None
    finally:
        reader.stop()


def test_journal_of_a_global_unit_shows_every_machine(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    unit = "everyticker.service"
    fleetctl.write(unit, TICKER.format(description="every") + "\n[X-Fleet]\nGlobal=true\n")
    started = fleetctl.ok("start", unit)
    assert f"Triggered global unit {unit} start" in started.out
    wait_until(lambda: len(active_hosts(cluster, [unit])[unit]) == 3, 15, "the global unit active on every host")
    wait_until(lambda: all(len(journal_ticks(h, unit)) >= 3 for h in cluster.hosts), 10, "ticks on every host")
    prefixes = [f"{h.machine_id[:8]}: " for h in cluster.hosts]

    lines = fleetctl.ok("journal", "-n", "2", unit).out.splitlines()
    for host, prefix in zip(cluster.hosts, prefixes, strict=True):
        own = [line for line in lines if line.startswith(prefix)]
        assert len(own) == 2, lines
        assert all(f" {host.name} " in line for line in own)  # each machine's own journal
    assert len(lines) == 6, lines

    reader = LineReader(fleetctl.popen("journal", "-f", "-n", "1", unit))
    try:

        def new_everywhere(got: list[str]) -> bool:
            seen = [ticks(got, p) for p in prefixes]
            return all(len(t) >= 4 for t in seen)  # one old line and three new ones each

        got = reader.wait_until(new_everywhere, 15, "new lines from every machine")
        assert all(any(line.startswith(p) for p in prefixes) for line in got), got
        for prefix in prefixes:
            mine = ticks(got, prefix)
            assert mine == list(range(mine[0], mine[0] + len(mine))), (prefix, mine)
        assert reader.proc.poll() is None
    finally:
        reader.stop()

    status = fleetctl.ok("status", unit).out
    for host in cluster.hosts:
        assert f"Machine {legend(host)}:" in status
    assert status.count("Active: active (running)") == 3


def test_status_shows_systemds_status(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    unit = "stat.service"
    fleetctl.write(unit, SLEEPER.format(description="status me", echo="stat started"))
    fleetctl.ok("start", unit)
    (where,) = active_hosts(cluster, [unit])[unit]
    host = host_named(cluster, where)
    status = fleetctl.ok("status", unit).out
    assert status.startswith(f"● {unit} - status me"), status
    assert "Active: active (running)" in status
    assert f"Main PID: {host.main_pid(unit)} " in status
    missing = fleetctl.run("status", "nothere.service")
    assert missing.code == 1 and "nothere.service" in missing.err and "does not exist" in missing.err
    fleetctl.ok("stop", unit)
    stopped = fleetctl.run("status", unit)  # systemctl status's own exit code, as fleet's
    assert stopped.code == 3 and "Active: inactive (dead)" in stopped.out, str(stopped)


def test_status_exits_with_systemctls_code(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    # fleet ran systemctl status over SSH and exited with its code; here the unit's fleetd
    # passes it on (X-Fleet-Exit-Code): 3 for a loaded but inactive unit, 0 once active
    unit = "idle.service"
    fleetctl.write(unit, SLEEPER.format(description="idle", echo="idle started"))
    fleetctl.ok("load", unit)
    idle = fleetctl.run("status", unit)
    assert idle.code == 3 and "Active: inactive (dead)" in idle.out and idle.err == "", str(idle)
    fleetctl.ok("start", unit)
    assert fleetctl.run("status", unit).code == 0


def test_endpoint_flag_wins_over_the_environment(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    good = cluster.hosts[1].endpoint
    for args in (
        ["--endpoint", good, "list-machines"],
        [f"--endpoint={good}", "list-machines"],
        ["list-machines", "--endpoint", good],
    ):
        result = fleetctl.run(*args, "--no-legend", env_endpoint=BOGUS_ENDPOINT)
        assert result.code == 0, str(result)
        assert len(result.out.splitlines()) == 3
    # the environment alone is used ...
    result = fleetctl.run("list-machines", env_endpoint=good)
    assert result.code == 0 and len(result.out.splitlines()) == 4, str(result)
    # ... and a bad one is reported as such
    result = fleetctl.run("list-machines", env_endpoint=BOGUS_ENDPOINT)
    assert result.code == 1, str(result)
    assert f"fleetd isn't reachable at {BOGUS_ENDPOINT}" in result.err and result.out == ""
    # a bad --endpoint beats a good environment
    result = fleetctl.run("--endpoint", BOGUS_ENDPOINT, "list-units", env_endpoint=good)
    assert result.code == 1 and f"fleetd isn't reachable at {BOGUS_ENDPOINT}" in result.err, str(result)


def test_bad_flags_are_usage_errors(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    fleetctl.write("x.service", SLEEPER.format(description="x", echo="x"))
    cases = [
        (["start", "--bogus", "x.service"], "--bogus"),
        (["list-units", "--fields=foo"], '"foo"'),
        (["journal", "-n", "abc", "x.service"], '"abc"'),
        (["start", "--block-attempts=-1", "x.service"], "-1"),
        (["--driver", "carrier-pigeon", "list-units"], "carrier-pigeon"),
        (["frobnicate"], '"frobnicate"'),
        (["submit"], "UNIT"),
    ]
    for args, named in cases:
        result = fleetctl.run(*args)
        assert result.code == 2, str(result)
        assert result.err.startswith("Error: ") and named in result.err, str(result)
        assert "fleetctl help" in result.err, str(result)
    assert fleetctl.unit_files() == []
    assert loaded_hosts(cluster, ["x.service"]) == {"x.service": []}


def test_bad_unit_files_change_nothing(cluster: FleetCluster, fleetctl: Fleetctl) -> None:
    bad = (
        "[Unit]\nDescription=bad\n\n[Service]\nExecStart=/bin/sleep infinity\n\n"
        "[X-Fleet]\nMachineID=abc\nConflicts=x*\n"
    )
    conflicts_line = bad.splitlines().index("Conflicts=x*") + 1
    fleetctl.write("bad.service", bad)
    fleetctl.write("broken.service", "[Unit]\nDescription=broken\n[Service\nExecStart=/bin/true\n")
    fleetctl.write("good.service", SLEEPER.format(description="good", echo="good"))
    for command in ("submit", "load", "start"):
        result = fleetctl.run(command, "good.service", "bad.service")
        assert result.code == 1, str(result)
        assert f"bad.service:{conflicts_line}:" in result.err, str(result)
        assert "MachineID" in result.err and "Conflicts" in result.err, str(result)
        assert "good.service" not in result.output, str(result)
        result = fleetctl.run(command, "broken.service", "good.service")
        assert result.code == 1, str(result)
        assert re.search(r"broken\.service:3\b", result.err), str(result)
        assert fleetctl.unit_files() == []
    assert loaded_hosts(cluster, ["good.service", "bad.service"]) == {"good.service": [], "bad.service": []}
