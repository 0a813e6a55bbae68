"""Blocking until units reach a state, as ``load``/``start``/``stop``/``unload``/``destroy``
do, with fleet's messages and what fleet lacked: reasons and live progress.

- One *attempt* is two seconds (``ATTEMPT_SECONDS``), as in fleet (its ``waitForState``
  polls for up to ``defaultSleepTime``, 2 s, per attempt): ``--block-attempts=N`` waits at
  most 2*N seconds; 0 waits for ever.
- Within that, fleetctl looks again only when the cluster changed: one long-poll of
  ``GET /state?wait=true&index=N`` (or, with ``--driver etcd``, a watch) answers when a
  unit state or placement changed (at most one round per ``MIN_ROUND``). Against a fleetd
  that cannot wait (no ``X-Fleet-Index`` in its answer) the states are polled every
  0.1-0.5 s instead, as before. The units themselves are listed at the start and again
  only when a unit stops being reported (destroyed, moved) or must be seen unplaced
  (``unload``): a unit's ``currentState`` is worked out from the states as the API does
  it (``launched`` when systemd has it active where it runs, ``loaded`` when reported
  there, else ``inactive``), the machine reporting a unit being the one it was placed on.
- While a unit waits to be placed, the engine's reason it cannot be (``GET
  /unplaceable``) is printed once (again when it changes); when the attempts run out,
  every unit still waiting is named with that reason and the exit status is 1.
- On a terminal (stderr is a tty) a wait longer than a second shows one updating line
  with how many units are done; piped output stays plain lines.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from fleetctl.client import Record
from fleetctl.context import Context
from fleetctl.output import machine_legend
from fleetd.model.limits import MAX_STATE_WAIT_SECONDS

ATTEMPT_SECONDS = 2.0  # fleet's defaultSleepTime: how long one attempt may poll
FIRST_POLL = 0.1
MAX_POLL = 0.5
PROGRESS_AFTER = 1.0  # seconds of waiting before the progress line appears
FAILED_NOTICE_AFTER = 3.0  # a unit failed this long while waiting to launch is reported
FEW = 10  # up to this many units are polled one by one, more by listing them all
ACTIVE = frozenset({"active", "activating", "reloading"})
# at most one round per this many seconds: a burst of changes (1,000 units starting) is
# seen in a few rounds, not one per change
MIN_ROUND = 0.1
# a long-poll shorter than this is not worth a request: the rest of the wait polls
MIN_LONG_POLL = 1.0
# the longest long-poll asked for (the client also keeps it within its request timeout)
MAX_LONG_POLL = float(MAX_STATE_WAIT_SECONDS)


class Progress:
    """One line on a terminal rewritten in place; silent when not enabled."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.shown = False

    def show(self, text: str, suffix: str = "") -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1 - len(suffix)
        if len(text) > width > 3:
            text = text[: width - 3] + "..."  # a wrapped line could not be rewritten in place
        self.stream.write(f"\r\033[K{text}{suffix}")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


@dataclass
class Goal:
    """Wait for unit ``name`` to report ``target`` (inactive, loaded or launched); after a
    ``--replace``, also for its machine to run the body with ``hash``."""

    name: str
    target: str
    hash: str | None = None


class Rounds:
    """When a waiter looks at the states again: at once the first time, then once the
    cluster changed after what was last seen (a long-poll: :meth:`Cluster.wait_states`),
    or, from a fleetd that cannot wait or in the last second of the attempts, after a
    pause that grows from FIRST_POLL to MAX_POLL (polling)."""

    def __init__(self, waiter: Waiter, unit: str | None = None) -> None:
        self.waiter = waiter
        self.unit = unit
        self.index: int | None = None
        self.polling = False
        self.interval = FIRST_POLL
        self.last: float | None = None

    def states(self) -> list[Record]:
        """Every unit state (``unit``'s only, when given), as of this round."""
        waiter = self.waiter
        index: int | None = None
        timeout = 0.0
        if self.last is not None:
            left = waiter.left()
            if self.polling or self.index is None or (left is not None and left < MIN_LONG_POLL):
                waiter.sleep(self.interval)
                self.interval = min(MAX_POLL, self.interval * 1.5)
            else:
                waiter.sleep(self.last + MIN_ROUND - time.monotonic())
                index = self.index
                timeout = MAX_LONG_POLL if left is None else min(MAX_LONG_POLL, left)
        self.last = time.monotonic()
        states, self.index = waiter.ctx.cluster.wait_states(index, timeout, self.unit)
        if self.index is None:
            self.polling = True  # this fleetd cannot wait: poll from now on
        return states


@dataclass
class Waiter:
    ctx: Context
    attempts: int
    machines: dict[str, Record] = field(default_factory=dict)
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self.progress = Progress(self.ctx.err, self.ctx.interactive)
        self.deadline = None if self.attempts <= 0 else time.monotonic() + self.attempts * ATTEMPT_SECONDS
        self.started = time.monotonic()

    # -- helpers --------------------------------------------------------------------------

    def legend(self, machine_id: str) -> str:
        if machine_id and machine_id not in self.machines:
            try:
                self.machines = {m["id"]: m for m in self.ctx.cluster.machines()}
            except Exception:  # noqa: BLE001 - the legend then lacks the IP, nothing worse
                pass
        return machine_legend(machine_id, self.machines, False)

    def say(self, text: str) -> None:
        assert self.progress is not None
        self.progress.clear()
        self.ctx.print(text)

    def note(self, text: str) -> None:
        assert self.progress is not None
        self.progress.clear()
        self.ctx.warn(text)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def left(self) -> float | None:
        """Seconds left of the attempts (None: waits for ever)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def sleep(self, interval: float) -> None:
        if self.deadline is not None:
            interval = min(interval, max(0.0, self.deadline - time.monotonic()))
        if interval > 0:
            time.sleep(interval)

    def rounds(self, unit: str | None = None) -> Rounds:
        """Rounds of looking at the states (of ``unit`` only, when given)."""
        return Rounds(self, unit)

    def show(self, text: str) -> None:
        assert self.progress is not None
        if time.monotonic() - self.started >= PROGRESS_AFTER:
            elapsed = time.monotonic() - self.started
            limit = f"/{self.attempts * ATTEMPT_SECONDS:.0f}" if self.deadline is not None else ""
            self.progress.show(text, f" ({elapsed:.0f}{limit} s)")

    def done(self) -> None:
        assert self.progress is not None
        self.progress.clear()

    def _fetch_units(self, names: list[str]) -> dict[str, Record | None]:
        cluster = self.ctx.cluster
        if len(names) <= FEW:
            results = cluster.bulk([(lambda n=n: cluster.unit(n)) for n in names])
            fetched: dict[str, Record | None] = {}
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                fetched[name] = result
            return fetched
        by_name = {u["name"]: u for u in cluster.units()}
        return {name: by_name.get(name) for name in names}

    # -- units reaching a state ------------------------------------------------------------

    def wait_units(self, goals: Iterable[Goal], verb: str) -> list[str]:
        """Wait for every goal; print ``Unit X <state> [on M]`` as each is reached; return
        the error messages for those that were not (empty: all reached)."""
        pending = {g.name: g for g in goals}
        total = len(pending)
        errors: list[str] = []
        reasons: dict[str, str] = {}
        shown_reasons: dict[str, str] = {}
        failed_since: dict[str, float] = {}
        failed_shown: set[str] = set()
        last_states: dict[str, list[Record]] = {}
        units: dict[str, Record | None] = {}
        reported: set[str] = set()  # units seen reported by a machine
        rounds = self.rounds(next(iter(pending)) if total == 1 else None)
        cluster = self.ctx.cluster
        first = True
        while pending:
            names = sorted(pending)
            states: dict[str, list[Record]] = {name: [] for name in names}
            for state in rounds.states():
                if state.get("name") in states:
                    states[state["name"]].append(state)
            last_states.update(states)
            # the units are read again only when the states cannot tell: a unit no longer
            # reported (destroyed? moved?), or one that must be seen unplaced (unload)
            if first or any(
                (n in reported and not states[n])
                or (pending[n].target == "inactive" and (units.get(n) or {}).get("machineID"))
                for n in names
            ):
                units.update(self._fetch_units(names))
                first = False
            reported.update(n for n in names if states[n])
            if any(not states[n] and pending[n].target != "inactive" for n in names):
                reasons = cluster.unplaceable()  # only unplaced units have reasons
            now = time.monotonic()
            for name in names:
                goal = pending[name]
                unit = units.get(name)
                if unit is None:
                    errors.append(f"unit {name} was destroyed while waiting for it to be {goal.target}")
                    del pending[name]
                    continue
                current, machine = _current_state(unit, goal, states[name])
                if _reached(current, machine, goal, states[name]):
                    line = f"Unit {name} {current}"
                    if machine:
                        line += f" on {self.legend(machine)}"
                    self.say(line)
                    del pending[name]
                    continue
                reason = reasons.get(name)
                if reason and goal.target != "inactive" and shown_reasons.get(name) != reason:
                    shown_reasons[name] = reason
                    self.note(f"Unit {name} cannot be placed: {reason} (still waiting)")
                failed = _failed_state(states[name])
                if failed is None:
                    failed_since.pop(name, None)
                elif goal.target == "launched" and name not in failed_shown:
                    first_failed = failed_since.setdefault(name, now)
                    if now - first_failed >= FAILED_NOTICE_AFTER:
                        failed_shown.add(name)
                        self.note(
                            f"Unit {name} failed on {self.legend(failed['machineID'])} "
                            f"(systemd: {_triple(failed)}); still waiting for it to be launched"
                        )
            if not pending or self.expired():
                break
            if total == 1:
                only = next(iter(pending))
                label = f"Waiting for unit {only} to be {pending[only].target}"
                if only in reasons:
                    label += f" (cannot be placed: {reasons[only]})"
            else:
                label = f"Waiting for units to be {_goal_word(pending)}: {total - len(pending)}/{total} done"
                stuck = sum(1 for n in pending if n in reasons)
                if stuck:
                    label += f", {stuck} cannot be placed"
            self.show(label)
        self.done()
        for name in sorted(pending):
            goal = pending[name]
            message = f"timed out waiting for unit {name} to report state {goal.target}"
            if name in reasons:
                message += f": it cannot be placed: {reasons[name]}"
            else:
                where = last_states.get(name, [])
                if where:
                    message += " (" + "; ".join(f"on {self.legend(s['machineID'])}: {_triple(s)}" for s in where) + ")"
            errors.append(message)
        return errors

    # -- global units (restart) -------------------------------------------------------------

    def wait_global(self, name: str, what: str, condition: Callable[[list[Record]], bool]) -> list[Record] | None:
        """Look at the unit's states on every machine, after each change, until
        ``condition`` holds; return them (``None`` when the attempts ran out)."""
        rounds = self.rounds(name)
        while True:
            states = [s for s in rounds.states() if s.get("name") == name]
            if condition(states):
                self.done()
                return states
            if self.expired():
                self.done()
                return None
            self.show(f"Waiting for global unit {name} to be {what} on every machine")


def _goal_word(pending: dict[str, Goal]) -> str:
    targets = {g.target for g in pending.values()}
    return next(iter(targets)) if len(targets) == 1 else "ready"


def _triple(state: Record) -> str:
    return "/".join(state.get(k) or "-" for k in ("systemdLoadState", "systemdActiveState", "systemdSubState"))


def _failed_state(states: list[Record]) -> Record | None:
    """The state of a machine where systemd has the unit failed, if any."""
    return next((s for s in states if s.get("systemdActiveState") == "failed"), None)


def _current_state(unit: Record, goal: Goal, states: list[Record]) -> tuple[str, str]:
    """The unit's ``currentState`` as the API derives it (fleetd.model.wire.current_state:
    ``launched`` when systemd has it active on a machine it is placed on, ``loaded`` when
    reported there, else ``inactive``) from the states just read, and that machine.

    Where it is placed: for ``inactive`` (unload) the unit as read this round (it was read
    again because it was placed); otherwise the machines reporting it, as agents report
    only the units placed on them (the unit record may be older than the placement)."""
    if goal.target == "inactive":
        placed = unit.get("machineID") or ""
        states = [s for s in states if placed and s.get("machineID") == placed]
    if not states:
        return "inactive", ""
    active = [s for s in states if is_active(s)]
    chosen = (active or states)[0]
    return ("launched" if active else "loaded"), chosen.get("machineID") or ""


def _reached(current: str, machine: str, goal: Goal, states: list[Record]) -> bool:
    if current != goal.target:
        return False
    if goal.hash:  # after --replace: the machine runs the new body
        return any(s.get("machineID") == machine and s.get("hash") == goal.hash for s in states)
    return True


def is_active(state: Record) -> bool:
    return (state.get("systemdActiveState") or "") in ACTIVE


__all__ = ["ATTEMPT_SECONDS", "Goal", "Progress", "Rounds", "Waiter", "is_active"]
