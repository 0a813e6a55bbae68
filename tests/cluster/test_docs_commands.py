"""Every command the documentation shows runs, as shown, against a real cluster.

The rule (also stated in docs/README.md, "Commands in these documents"):

- A ```` ```sh ```` block in README.md, docs/*.md or examples/README.md is run. If some of
  its lines start with ``$ ``, it is a transcript: those lines (without the ``$ ``) are the
  commands and the other lines are their output, which is not compared (machine ids,
  addresses and times differ on every run) beyond its first word: the command must print
  the same first word (``UNIT``, ``Unit``, ``Error:``, ...; machine ids, hashes, numbers
  and month names masked). Otherwise every line is a command, except
  empty lines and lines starting with ``#``. A line ending in ``\\`` continues on the next.
- A command must exit with status 0, unless its line ends with the comment
  ``# exits N``: then it must exit with N.
- Any other block (```` ```text ````, ```` ```ini ````, ```` ```json ````, or no language) is
  never run: output, files, and commands that need what only a real deployment has
  (TLS certificates, SSH access to machines, installing fleetd into /etc, the demo
  cluster or the test suite themselves). The docs say so next to each such command.
- Commands run in document order, each in a fresh ``bash`` inside machine h1 of one lab
  cluster (three machines with the demo cluster's metadata, see ``fleetlab.demo``), as
  root, in the checkout, with the venv's ``fleetctl`` first on PATH and no ``FLEETCTL_*``
  set: the default endpoint ``unix:///var/run/fleet.sock`` is h1's fleetd. What a command
  ``export``s (and ``cd``) carries over to the next commands of the same document.
- The test provides ``$IP``, the address of machine h1 (in the docs: "a machine's
  address", as ``fleetctl list-machines`` shows it), and ``$ETCD``, the cluster's etcd
  client URL. Each document starts on an empty cluster: the units a document creates are
  destroyed after it.
- The only ```sh commands not run are those in ``NOT_RUN`` below, each with its reason
  (README.md's: they build the demo cluster and run this test suite).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlab.demo import METADATA
from fleetlab.fleetcluster import FleetCluster, FleetHost

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    "README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
    "examples/README.md",
]
COMMAND_TIMEOUT = 60.0
EXITS = re.compile(r"#\s*exits (\d+)\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
# Where a document's exported variables and directory are kept between its commands
# (inside h1, whose /tmp is its own).
STATE = "/tmp/fleet-docs-state.sh"
# ```sh commands that are not run, with the reason (README.md's code blocks are kept as
# they are on the project's front page).
NOT_RUN = {
    "bash examples/cluster.sh up": "it builds the demo cluster, a cluster of its own next to the test's",
    "bash .ci/run": "it runs the whole test suite, this test among it",
}


@dataclass(frozen=True)
class Command:
    document: str
    line: int
    text: str
    exits: int
    # the first word of the output the docs show (masked), when they show any
    first_word: str | None = None

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.text}"


MASKS = [
    (re.compile(r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\b"), "MON"),
    (re.compile(r"\b[0-9a-f]{7,}\b"), "ID"),
    (re.compile(r"\d+"), "N"),
]


def first_word(output: str) -> str | None:
    """The first word of ``output``, masked (see MASKS); None for no output."""
    words = output.split()
    if not words:
        return None
    word = words[0]
    for pattern, replacement in MASKS:
        word = pattern.sub(replacement, word)
    return word


def _logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join lines ending in a backslash with the next."""
    pending: list[str] = []
    start = 0
    for number, line in lines:
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield start, " ".join(part.strip() for part in pending)
        pending = []
    if pending:
        yield start, " ".join(part.strip() for part in pending)


def block_commands(document: str, lines: list[tuple[int, str]]) -> list[Command]:
    """The commands of one ```sh block (``lines``: (line number, text))."""
    transcript = any(text.startswith("$ ") for _, text in lines)
    if not transcript:
        selected = [(n, text) for n, text in lines if text.strip() and not text.lstrip().startswith("#")]
        return [
            Command(document, number, text.strip(), int(m.group(1)) if (m := EXITS.search(text)) else 0)
            for number, text in _logical_lines(selected)
        ]
    commands = []
    for index, (number, text) in enumerate(lines):
        if not text.startswith("$ "):
            continue
        output = []
        for _, following in lines[index + 1 :]:
            if following.startswith("$ "):
                break
            output.append(following)
        match = EXITS.search(text)
        commands.append(
            Command(
                document, number, text[2:].strip(), int(match.group(1)) if match else 0, first_word("\n".join(output))
            )
        )
    return commands


def document_commands(document: str) -> list[Command]:
    """Every command of the ```sh blocks of ``document`` (relative to the checkout)."""
    commands: list[Command] = []
    block: list[tuple[int, str]] | None = None
    language = ""
    for number, line in enumerate((ROOT / document).read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and block is None:
            block, language = [], fence.group(2)
        elif fence and not fence.group(2):
            if language == "sh":
                commands += block_commands(document, block or [])
            block = None
        elif block is not None:
            block.append((number, line))
    assert block is None, f"{document}: a code block is not closed"
    return [c for c in commands if c.text not in NOT_RUN]


# -- the parser itself (no cluster needed) ------------------------------------------------


def test_blocks_are_read_as_the_rule_says(tmp_path: Path) -> None:
    lines = [
        (1, "# a comment"),
        (2, "fleetctl list-units"),
        (3, "fleetctl start \\"),
        (4, "  hello.service   # exits 1"),
        (5, ""),
    ]
    assert [(c.line, c.text, c.exits) for c in block_commands("d", lines)] == [
        (2, "fleetctl list-units", 0),
        (3, "fleetctl start hello.service   # exits 1", 1),
    ]
    transcript = [(1, "$ fleetctl list-machines"), (2, "MACHINE  IP"), (3, "$ fleetctl status x  # exits 3")]
    assert [(c.text, c.exits, c.first_word) for c in block_commands("d", transcript)] == [
        ("fleetctl list-machines", 0, "MACHINE"),
        ("fleetctl status x  # exits 3", 3, None),
    ]
    assert first_word("22780d61: Nov 22 02:23:24 h3") == "ID:"
    assert first_word("Nov 22 02:23:24 h3") == "MON"


def test_the_documents_show_commands() -> None:
    # A guard against the extraction silently finding nothing (a changed fence style).
    assert len([c for d in DOCUMENTS for c in document_commands(d)]) >= 20
    shown = "".join((ROOT / d).read_text() for d in DOCUMENTS)
    assert all(f"\n{text}\n" in shown for text in NOT_RUN), "a NOT_RUN command is no longer in the docs"


# -- running them -----------------------------------------------------------------------------

TTL = 3.0


@pytest.fixture(scope="module")
def docs_cluster(hosts_supported: None) -> Iterator[FleetCluster]:
    with FleetCluster(size=3, lab_prefix="fdoc", agent_ttl=f"{TTL:g}s", metadata=METADATA) as cluster:
        yield cluster


def run_in(host: FleetHost, script: str, env: dict[str, str]) -> tuple[int, str]:
    result = host.host.run(["bash", "-c", script], check=False, env=env, cwd=str(ROOT), timeout=COMMAND_TIMEOUT)
    return result.returncode, result.stdout + result.stderr


def environment(cluster: FleetCluster) -> dict[str, str]:
    bin_dir = str(ROOT / ".venv" / "bin") if (ROOT / ".venv" / "bin" / "fleetctl").exists() else ""
    bin_dir = bin_dir or os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETCTL_", "FLEET_"))}
    env["PATH"] = f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["IP"] = cluster.hosts[0].ip
    assert cluster.etcd is not None and cluster.lab is not None
    env["ETCD"] = cluster.etcd.endpoints_on(cluster.lab.bridge_ip)[0]
    env["PYTHONPATH"] = str(ROOT)
    return env


def clean(cluster: FleetCluster, env: dict[str, str]) -> None:
    """Destroy every unit (waiting until no machine reports it)."""
    host = cluster.hosts[0]
    code, out = run_in(host, "fleetctl list-unit-files --no-legend --fields unit", env)
    assert code == 0, out
    if out.split():
        code, out = run_in(host, f"fleetctl destroy {' '.join(shlex.quote(u) for u in out.split())}", env)
        assert code == 0, out


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if document_commands(d)])
def test_every_command_of_the_document_runs(docs_cluster: FleetCluster, document: str) -> None:
    commands = document_commands(document)
    host = docs_cluster.hosts[0]
    env = environment(docs_cluster)
    failures = []
    try:
        run_in(
            host,
            f"unset ${{!FLEETCTL_@}} ${{!FLEET_@}}; export -p > {STATE}; echo 'cd {shlex.quote(str(ROOT))}' >> {STATE}",
            env,
        )
        for command in commands:
            t0 = time.monotonic()
            script = (
                f"exec 2>&1\n. {STATE}\n{command.text}\n__rc=$?\n"
                f"{{ export -p; printf 'cd %q\\n' \"$PWD\"; }} > {STATE}\nexit $__rc\n"
            )
            code, out = run_in(host, script, env)
            print(f"{command} -> {code} ({time.monotonic() - t0:.2f}s)")
            if code != command.exits:
                failures.append(f"{command}\n  exited {code}, the docs say {command.exits}; output:\n{out}")
            elif command.first_word is not None and first_word(out) != command.first_word:
                failures.append(
                    f"{command}\n  printed {first_word(out)!r} first, the docs show {command.first_word!r}:\n{out}"
                )
    finally:
        try:
            clean(docs_cluster, env)
        except AssertionError as exc:  # report it with the commands' failures, not instead
            failures.append(f"cleaning up after {document} failed: {exc}")
    assert not failures, "\n".join(failures)
