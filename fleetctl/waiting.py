"""Blocking until units reach a state, as ``load``/``start``/``stop``/``unload``/``destroy``
do, with fleet's messages and what fleet lacked: reasons and live progress.

- One *attempt* is two seconds (``ATTEMPT_SECONDS``), as in fleet (its ``waitForState``
  polls for up to ``defaultSleepTime``, 2 s, per attempt): ``--block-attempts=N`` waits at
  most 2*N seconds; 0 waits for ever. Within that the cluster is polled every 0.1-0.5 s.
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

ATTEMPT_SECONDS = 2.0  # fleet's defaultSleepTime: how long one attempt may poll
FIRST_POLL = 0.1
MAX_POLL = 0.5
PROGRESS_AFTER = 1.0  # seconds of waiting before the progress line appears
FAILED_NOTICE_AFTER = 3.0  # a unit failed this long while waiting to launch is reported
FEW = 10  # up to this many units are polled one by one, more by listing them all
ACTIVE = frozenset({"active", "activating", "reloading"})


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

    def sleep(self, interval: float) -> None:
        if self.deadline is not None:
            interval = min(interval, max(0.0, self.deadline - time.monotonic()))
        time.sleep(interval)

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

    def _fetch_states(self, names: list[str]) -> dict[str, list[Record]]:
        cluster = self.ctx.cluster
        result: dict[str, list[Record]] = {name: [] for name in names}
        if len(names) <= FEW:
            results = cluster.bulk([(lambda n=n: cluster.states(unit=n)) for n in names])
            for name, states in zip(names, results, strict=True):
                if isinstance(states, BaseException):
                    raise states
                result[name] = list(states)
            return result
        for state in cluster.states():
            if state["name"] in result:
                result[state["name"]].append(state)
        return result

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
        interval = FIRST_POLL
        cluster = self.ctx.cluster
        while pending:
            names = sorted(pending)
            units = self._fetch_units(names)
            need_states = [n for n in names if pending[n].hash or pending[n].target == "launched"]
            states = self._fetch_states(need_states) if need_states else {}
            last_states.update(states)
            if any(pending[n].target != "inactive" for n in names):
                reasons = cluster.unplaceable()
            now = time.monotonic()
            for name in names:
                goal = pending[name]
                unit = units.get(name)
                if unit is None:
                    errors.append(f"unit {name} was destroyed while waiting for it to be {goal.target}")
                    del pending[name]
                    continue
                if _reached(unit, goal, states.get(name, [])):
                    machine = unit.get("machineID") or ""
                    line = f"Unit {name} {unit.get('currentState') or goal.target}"
                    if machine:
                        line += f" on {self.legend(machine)}"
                    self.say(line)
                    del pending[name]
                    continue
                reason = reasons.get(name)
                if reason and goal.target != "inactive" and shown_reasons.get(name) != reason:
                    shown_reasons[name] = reason
                    self.note(f"Unit {name} cannot be placed: {reason} (still waiting)")
                failed = _failed_state(unit, states.get(name, []))
                if failed is None:
                    failed_since.pop(name, None)
                elif goal.target == "launched" and name not in failed_shown:
                    first = failed_since.setdefault(name, now)
                    if now - first >= FAILED_NOTICE_AFTER:
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
            self.sleep(interval)
            interval = min(MAX_POLL, interval * 1.5)
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
        """Poll the unit's states on every machine until ``condition`` holds; return them
        (``None`` when the attempts ran out)."""
        interval = FIRST_POLL
        while True:
            states = self.ctx.cluster.states(unit=name)
            if condition(states):
                self.done()
                return states
            if self.expired():
                self.done()
                return None
            self.show(f"Waiting for global unit {name} to be {what} on every machine")
            self.sleep(interval)
            interval = min(MAX_POLL, interval * 1.5)


def _goal_word(pending: dict[str, Goal]) -> str:
    targets = {g.target for g in pending.values()}
    return next(iter(targets)) if len(targets) == 1 else "ready"


def _triple(state: Record) -> str:
    return "/".join(state.get(k) or "-" for k in ("systemdLoadState", "systemdActiveState", "systemdSubState"))


def _failed_state(unit: Record, states: list[Record]) -> Record | None:
    machine = unit.get("machineID") or ""
    for state in states:
        if state.get("machineID") == machine and state.get("systemdActiveState") == "failed":
            return state
    return None


def _reached(unit: Record, goal: Goal, states: list[Record]) -> bool:
    if (unit.get("currentState") or "inactive") != goal.target:
        return False
    if goal.hash:
        machine = unit.get("machineID") or ""
        return any(s.get("machineID") == machine and s.get("hash") == goal.hash for s in states)
    return True


def is_active(state: Record) -> bool:
    return (state.get("systemdActiveState") or "") in ACTIVE


__all__ = ["ATTEMPT_SECONDS", "Goal", "Progress", "Waiter", "is_active"]
