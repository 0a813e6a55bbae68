"""``fleetctl journal -f``: a journal that stays attached to its unit while the unit moves.

fleet followed ``journalctl -f`` over SSH on the machine the unit ran on when the command
started; when the unit moved, the stream went quiet for ever. Here a watcher follows the
unit's placement (the API's state long-poll, ``GET /state?wait=true``, or a poll on an
older fleetd) while a reader streams from the current machine. When the placement
changes, the reader is stopped, a marker line says where the unit went
(``-- web.service moved to 1a2b3c4d.../10.0.0.3 --``) and a reader on the new machine
starts with the same ``--lines`` as the first. For a global unit, every machine that
starts reporting it is followed from then on.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetctl.client import Record
from fleetctl.context import Context
from fleetctl.errors import FleetctlError
from fleetctl.output import is_global, machine_legend
from fleetctl.transport import iter_lines
from fleetd.model.state import short_id

WAIT_SECONDS = 5.0  # one long-poll (the API caps it anyway)
POLL_SECONDS = 1.0  # between looks at the placement on a fleetd that cannot long-poll
REOPEN_SECONDS = 1.0  # before reopening a stream that ended while the unit stayed put

OpenStream = Callable[[Record, int], tuple[object, object]]  # (machine, lines) -> (transport, response)


@dataclass
class Reader:
    """One stream from one machine, read by a daemon thread until stopped or ended."""

    machine_id: str
    thread: threading.Thread | None = None
    sock: socket.socket | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    error: FleetctlError | None = None  # why the stream could not be opened
    first: bool = False  # opened when the command started: its failure is the exit status

    def stop(self) -> None:
        """End the stream now: shut the socket, which wakes the thread's blocking read."""
        self.stopped.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if self.thread is not None:
            self.thread.join(5)


class Follower:
    """Follows one unit's journal across machines; see the module docstring."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        lines: int,
        open_stream: OpenStream,
        prefix_lines: bool = False,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.lines = lines
        self.open_stream = open_stream
        self.prefix_lines = prefix_lines  # a global unit: each line says its machine
        self.lock = threading.Lock()
        self.readers: dict[str, Reader] = {}
        self.errors: list[str] = []
        self.broken_pipe = threading.Event()
        self.machines: dict[str, Record] = {}

    # -- output -------------------------------------------------------------------------

    def emit(self, text: str) -> None:
        with self.lock:
            try:
                self.ctx.out.write(text + "\n")
                self.ctx.out.flush()
            except BrokenPipeError:  # `fleetctl journal -f x | head`: the reader went away
                self.broken_pipe.set()

    def legend(self, machine_id: str) -> str:
        return machine_legend(machine_id, self.machines, False)

    # -- readers --------------------------------------------------------------------------

    def start_reader(self, machine_id: str, lines: int, first: bool = False) -> Reader:
        reader = Reader(machine_id, first=first)
        self.readers[machine_id] = reader
        reader.thread = threading.Thread(target=self._read, args=(reader, lines), daemon=True)
        reader.thread.start()
        return reader

    def _read(self, reader: Reader, lines: int) -> None:
        prefix = f"{short_id(reader.machine_id)}: " if self.prefix_lines else ""
        machine = self.machines.get(reader.machine_id) or {"id": reader.machine_id, "primaryIP": "", "metadata": {}}
        try:
            transport, response = self.open_stream(machine, lines)
        except FleetctlError as exc:
            reader.error = exc
            if not reader.stopped.is_set() and not reader.first:
                self.emit(f"-- {self.name}: cannot read the journal on {self.legend(reader.machine_id)}: {exc} --")
            reader.ended.set()
            return
        conn = transport._connection()  # type: ignore[attr-defined]  # this thread's connection
        reader.sock = conn.sock
        reader.opened.set()
        try:
            if reader.stopped.is_set():
                return
            for line in iter_lines(response):  # type: ignore[arg-type]
                if reader.stopped.is_set() or self.broken_pipe.is_set():
                    return
                self.emit(prefix + line)
        except (OSError, ValueError):
            pass  # the stream was cut (stopped, or the machine went away)
        finally:
            reader.ended.set()
            with contextlib.suppress(Exception):
                transport.close()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for reader in list(self.readers.values()):
            reader.stop()
        self.readers.clear()

    # -- the placement --------------------------------------------------------------------

    def placements(self, index: int | None) -> tuple[set[str] | None, int | None]:
        """Where the unit is now (None: it was destroyed), after waiting for a change past
        ``index``; and the index to wait from next."""
        cluster = self.ctx.cluster
        started = time.monotonic()
        states, new_index = cluster.wait_states(index, WAIT_SECONDS, unit=self.name)
        if new_index is None and index is None:
            pass  # the first look: answer at once
        elif new_index is None:  # an older fleetd cannot wait: poll
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - started)))
        record = cluster.unit(self.name)
        if record is None:
            return None, new_index
        if is_global(record):
            where = {str(s.get("machineID")) for s in states if s.get("machineID")}
        else:
            where = {str(record["machineID"])} if record.get("machineID") else set()
        if where - set(self.machines):
            self.machines = {str(m["id"]): m for m in cluster.machines()}
        return where, new_index

    def run(self, first: set[str], machines: dict[str, Record]) -> int:
        """Stream from ``first`` (the unit's machines now) until interrupted, the output
        closes, or the unit is destroyed (then 0)."""
        self.machines = dict(machines)
        started = [self.start_reader(machine_id, self.lines, first=True) for machine_id in sorted(first)]
        current, index = set(first), None
        try:
            for reader in started:  # every first stream open, or failed
                while not (reader.opened.wait(0.2) or reader.ended.is_set()):
                    pass
            failed = [r.error for r in started if r.error is not None]
            if failed and len(failed) == len(started):
                raise failed[0]
            for error in failed:
                self.emit(f"-- {self.name}: {error} --")
            while not self.broken_pipe.is_set():
                where, index = self.placements(index)
                if where is None:
                    self.emit(f"-- {self.name} was destroyed --")
                    return 0
                self._follow(current, where)
                current = where
                for machine_id, reader in list(self.readers.items()):
                    if reader.ended.is_set() and not reader.stopped.is_set():
                        # ended by itself (the stream was cut) while the unit stayed: go on
                        # from the end, without repeating lines
                        reader.stop()
                        time.sleep(REOPEN_SECONDS)
                        self.start_reader(machine_id, 0)
            raise BrokenPipeError
        finally:
            self.stop_all()

    def _follow(self, current: set[str], where: set[str]) -> None:
        if where == current:
            return
        for machine_id in sorted(current - where):
            reader = self.readers.pop(machine_id, None)
            if reader is not None:
                reader.stop()
        if not where and current:
            self.emit(f"-- {self.name} is not running on any machine; waiting for it to be placed --")
        for machine_id in sorted(where - current):
            if self.prefix_lines:
                self.emit(f"-- {self.name} now runs on {self.legend(machine_id)} too --")
            else:
                self.emit(f"-- {self.name} moved to {self.legend(machine_id)} --")
            self.start_reader(machine_id, self.lines)


__all__ = ["Follower"]
