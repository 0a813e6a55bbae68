"""Reading a unit's journal and status text (for ``fleetctl journal`` and ``status``).

Both shell out to the standard tools (``journalctl``, ``systemctl``): they know every
journal format and every unit type, and need no D-Bus. Output is streamed line by line,
so ``follow=True`` can be relayed as it arrives; closing the iterator (or cancelling the
task reading it) ends the ``journalctl`` process.

A unit name reaches these command lines only after the one name check
(:func:`~fleetd.model.names.validate_unit_name`, which refuses a leading ``-``), and is
placed where it cannot be read as an option even so: after ``--`` for ``systemctl``, and
attached as ``--unit=NAME`` for ``journalctl`` (whose words after ``--`` are field
matches, not units). ``-Hroot@host.service`` would otherwise make systemctl ssh to a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence

from fleetd.model.names import validate_unit_name
from fleetd.systemd.bus import SystemdError


class JournalError(SystemdError):
    """journalctl (or systemctl) could not be run or failed; ``exit_code`` is the tool's
    own (None when it did not run), which the API passes on for fleetctl to exit with."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _checked(unit: str) -> str:
    """``unit`` if it passes the name check, so no caller can put an option (or a host
    unit) in its place; else :class:`~fleetd.model.errors.UnitNameError`, a
    ``ValueError``, which the API answers with 400."""
    validate_unit_name(unit)
    return unit


def _journalctl(unit: str | None, output: str, directory: str | os.PathLike[str] | None, user: bool) -> list[str]:
    cmd = ["journalctl", "--no-pager", "--quiet", f"--output={output}"]
    if directory is not None:
        cmd += [f"--directory={os.fspath(directory)}"]
    if unit:
        cmd += [f"--user-unit={_checked(unit)}" if user else f"--unit={_checked(unit)}"]
    return cmd


def journal_command(
    unit: str | None,
    lines: int | None = 10,
    follow: bool = False,
    output: str = "short",
    directory: str | os.PathLike[str] | None = None,
    user: bool = False,
) -> list[str]:
    """The plain ``journalctl`` argv for these options (``lines=None``: the whole journal)."""
    cmd = _journalctl(unit, output, directory, user)
    cmd += ["--lines", "all" if lines is None else str(int(lines))]
    if follow:
        cmd.append("--follow")
    return cmd


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(2):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _spawn(cmd: Sequence[str], stderr: int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "SYSTEMD_COLORS": "0"},
        )
    except OSError as exc:
        raise JournalError(f"cannot run {cmd[0]}: {exc}") from exc


_CURSOR_PREFIX = "-- cursor: "


async def _batch(cmd: Sequence[str], cursor_out: list[str]) -> AsyncIterator[str]:
    """Stream one (non-follow) journalctl run; with ``--show-cursor`` in ``cmd`` the last
    line is the cursor: it is held back and put into ``cursor_out`` instead of yielded.

    journalctl exits 1 without a word when a match has no entries: that is an empty
    answer, not an error; only an exit with a message on stderr raises.
    """
    proc = await _spawn(cmd)
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    held: str | None = None
    cursors = "--show-cursor" in cmd
    try:
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if not cursors:
                yield line
                continue
            if held is not None:
                yield held
            held = line
        rc = await proc.wait()
        err = (await stderr_task).decode("utf-8", errors="replace").strip()
        if held is not None:
            if held.startswith(_CURSOR_PREFIX):
                cursor_out.append(held[len(_CURSOR_PREFIX) :])
            else:
                yield held
        if rc != 0 and err:
            raise JournalError(f"journalctl exited with {rc}: {err}", rc)
    finally:
        await _terminate(proc)
        stderr_task.cancel()
        with contextlib.suppress(BaseException):
            await stderr_task


async def read_journal(
    unit: str | None,
    lines: int | None = 10,
    follow: bool = False,
    output: str = "short",
    directory: str | os.PathLike[str] | None = None,
    *,
    user: bool = False,
    poll: float = 1.0,
) -> AsyncIterator[str]:
    """Yield the last ``lines`` journal lines of ``unit`` (then new ones, with ``follow``).

    ``output`` is journalctl's ``-o`` (``short``, ``json``, ``cat`` ...); ``directory``
    reads a journal directory instead of the local journal (e.g. a machine reached through
    /proc/PID/root); ``user`` selects a user unit. Lines come without their newline.
    Raises JournalError when journalctl is missing or fails.

    Following does not use ``journalctl --follow`` for the lines themselves: systemd 252's
    loses entries of a burst (lines written together share a timestamp, and after a seek
    to an entry the match does not cover, sd-journal skips the first of them). New
    entries are read with ``--after-cursor`` the last entry *shown* (always one the match
    covers, which iterates correctly), or from the start while the unit has none yet. A
    ``journalctl --follow`` running alongside only says *when* to read; a read every
    ``poll`` seconds covers a wake-up it misses.
    """
    if not follow:
        async for line in _batch(journal_command(unit, lines, False, output, directory, user), []):
            yield line
        return
    base = _journalctl(unit, output, directory, user)
    found: list[str] = []
    if lines == 0:  # nothing to show, but the position of the unit's last entry
        async for _ in _batch(_journalctl(unit, "cat", directory, user) + ["--lines", "1", "--show-cursor"], found):
            pass
    else:
        async for line in _batch(
            base + ["--lines", "all" if lines is None else str(int(lines)), "--show-cursor"], found
        ):
            yield line
    cursor = found[-1] if found else None
    wake = asyncio.Event()
    watcher = await _spawn(journal_command(unit, 0, True, "cat", directory, user), stderr=asyncio.subprocess.DEVNULL)

    async def watch() -> None:
        assert watcher.stdout is not None
        while await watcher.stdout.readline():
            wake.set()

    watch_task = asyncio.ensure_future(watch())
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await wake.wait()
            wake.clear()
            # no entry yet: read from the start (no seek), everything there is new
            args = base + (["--after-cursor", cursor] if cursor else [])
            got: list[str] = []
            async for line in _batch(args + ["--show-cursor"], got):
                yield line
            if got:
                cursor = got[-1]
    finally:
        watch_task.cancel()
        with contextlib.suppress(BaseException):
            await watch_task
        await _terminate(watcher)


def status_command(unit: str, *, lines: int = 10, user: bool = False) -> list[str]:
    """The ``systemctl status`` argv for ``unit``: options first, the name after ``--``."""
    return [
        "systemctl",
        *(["--user"] if user else []),
        "status",
        "--no-pager",
        f"--lines={int(lines)}",
        "--",
        _checked(unit),
    ]


class StatusText(str):
    """``systemctl status``'s text, carrying its exit code (``exit_code``: 0 active, 3
    inactive, 4 no such unit; None when unknown). A plain ``str`` everywhere else."""

    exit_code: int | None

    def __new__(cls, text: str, exit_code: int | None = None) -> StatusText:
        self = super().__new__(cls, text)
        self.exit_code = exit_code
        return self


async def unit_status_text(unit: str, *, lines: int = 10, user: bool = False, prefix: Sequence[str] = ()) -> StatusText:
    """``systemctl status --no-pager --lines=N -- UNIT``: the human-readable status.

    systemctl's exit code says whether the unit is active (3: inactive, 4: no such unit);
    either way its text is the answer (the code rides along as ``exit_code``, see
    :class:`StatusText`), so only a failure to run it raises. ``prefix`` is
    prepended to the command (e.g. ``nsenter -t PID -m -p`` to ask another machine). The
    name is checked and comes after ``--`` (see the module docstring).
    """
    cmd = [*prefix, *status_command(unit, lines=lines, user=user)]
    proc = await _spawn(cmd)
    try:
        out, err = await proc.communicate()
    finally:
        await _terminate(proc)
    text = out.decode("utf-8", errors="replace")
    if not text.strip():
        text = err.decode("utf-8", errors="replace")
    return StatusText(text, proc.returncode)


__all__ = ["JournalError", "StatusText", "journal_command", "read_journal", "status_command", "unit_status_text"]
