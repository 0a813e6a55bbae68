"""Waiting for a condition: the one way the tests, the bench scripts and the lab do it.

Tests of a distributed system must synchronise on what they can observe (a unit runs, a
machine registered, a process is gone), never on a fixed sleep: a sleep long enough for a
loaded CI machine is needlessly slow everywhere else, and one short enough for a fast
machine makes the test flaky. So every wait polls a condition until a deadline, and when
the deadline passes it raises an error that names what was awaited: a failure then reads
"timed out after 10 s waiting for web@1.service running", not a bare ``assert False``.

- :func:`wait_until` polls a plain function from synchronous code;
- :func:`wait_until_async` polls a plain function from a coroutine, sleeping with
  ``asyncio.sleep`` so the event loop (where the code under test often runs) keeps going;
- :func:`eventually` awaits an async probe (e.g. a registry read) until it has an answer.

``on_timeout`` lets infrastructure keep its own error type and diagnostics (a log tail,
the state last seen) while sharing the loop. Only the standard library is used, so the
lab works before the project's dependencies are installed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "eventually", "wait_until", "wait_until_async"]

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not hold before its deadline; the message names the condition."""


def _expired(timeout: float, what: str, on_timeout: Callable[[], BaseException] | None) -> BaseException:
    """The error to raise at the deadline: the caller's own, or one naming ``what``."""
    if on_timeout is not None:
        return on_timeout()
    return WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    *,
    on_timeout: Callable[[], BaseException] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return that.

    The predicate is always called at least once, and once more after the last sleep, so
    a zero timeout means "check now". It may raise to give up early (say, the process it
    waits for died). At the deadline raises ``on_timeout()`` if given, else
    :class:`WaitTimeout` naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _expired(timeout, what, on_timeout)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.02,
    *,
    on_timeout: Callable[[], BaseException] | None = None,
) -> T:
    """:func:`wait_until` for coroutines: the same contract, sleeping without blocking the loop.

    For cheap in-process conditions (an event is set, a simulated machine runs a unit)
    whose truth is made by other tasks of the same event loop.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _expired(timeout, what, on_timeout)
        await asyncio.sleep(interval)


async def eventually(
    probe: Callable[[], Awaitable[T | None | bool]],
    timeout: float,
    what: str,
    interval: float = 0.05,
    *,
    on_timeout: Callable[[], BaseException] | None = None,
) -> T:
    """Await ``probe()`` every ``interval`` s until it answers; return the answer.

    ``None`` and ``False`` mean "not yet"; anything else, even ``0``, ``""`` or ``[]``, is
    the answer (a probe asking "how many are left?" may well answer 0). At the deadline
    raises as :func:`wait_until` does.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result  # type: ignore[return-value]  # None/False excluded above
        if time.monotonic() > deadline:
            raise _expired(timeout, what, on_timeout)
        await asyncio.sleep(interval)
