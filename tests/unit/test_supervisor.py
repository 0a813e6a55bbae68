"""The supervisor of long-lived tasks: a failed or ended task comes back, with backoff,
and is reported as a problem while it waits."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fleetd.aio import Supervisor, cancel_and_wait
from fleetlab.wait import wait_until_async


async def test_a_failing_task_is_restarted_with_growing_delays_and_reported_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(min_delay=0.05, max_delay=0.2)
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky() -> None:
        runs.append(loop.time())
        raise RuntimeError("boom")

    caplog.set_level(logging.WARNING, logger="fleetd.aio")
    supervisor.start("flaky", flaky)
    try:
        problem = await wait_until_async(supervisor.problem, 2, "the failure to be reported")
        assert problem == "task flaky is restarting after: RuntimeError: boom"
        await wait_until_async(lambda: len(runs) >= 5, 5, "five runs")
        gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
        assert gaps[0] >= 0.04 and gaps[2] >= 0.15  # 0.05, 0.1, 0.2, 0.2 ...
        health = supervisor.tasks["flaky"]
        assert health.restarts >= 4 and health.last_error == "RuntimeError: boom"
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1  # the same error is not dumped again on every restart
    finally:
        await supervisor.stop()


async def test_a_task_that_ends_is_restarted_and_a_healthy_one_is_no_problem() -> None:
    supervisor = Supervisor(min_delay=0.01)
    runs = 0
    forever = asyncio.Event()

    async def short() -> None:
        nonlocal runs
        runs += 1

    async def steady() -> None:
        await forever.wait()

    supervisor.start("short", short)
    supervisor.start("steady", steady)
    try:
        await wait_until_async(lambda: runs >= 3, 2, "three runs of a task that ends")
        assert supervisor.tasks["short"].last_error == "ended unexpectedly"
        assert supervisor.tasks["steady"].running and supervisor.tasks["steady"].restarts == 0
    finally:
        await supervisor.stop()
    assert not supervisor.tasks["steady"].running


async def test_stopping_cancels_and_does_not_restart() -> None:
    supervisor = Supervisor(min_delay=0.01)
    started = 0
    stop_now = asyncio.Event()

    async def ends_when_told() -> None:
        nonlocal started
        started += 1
        await stop_now.wait()

    supervisor.start("t", ends_when_told)
    await wait_until_async(lambda: started == 1, 2, "the task to start")
    await supervisor.stop()
    stop_now.set()
    await asyncio.sleep(0.05)
    assert started == 1 and supervisor.problem() is None


async def test_a_cancelled_error_nobody_asked_for_restarts_the_task() -> None:
    """grpc raises CancelledError in calls whose channel another task closed; a task
    ending on one is a failure to restart, not a stop."""
    supervisor = Supervisor(min_delay=0.01)
    runs = 0
    forever = asyncio.Event()

    async def hit_by_a_stray_cancel() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise asyncio.CancelledError
        await forever.wait()

    supervisor.start("t", hit_by_a_stray_cancel)
    try:
        await wait_until_async(lambda: runs == 2 and supervisor.tasks["t"].running, 2, "the task back")
        assert supervisor.tasks["t"].restarts == 1
        assert "other than stop" in (supervisor.tasks["t"].last_error or "")
    finally:
        await supervisor.stop()


async def test_cancel_and_wait_lets_its_callers_own_cancellation_through() -> None:
    # a loop stopping its helpers must itself stay stoppable: a child with slow cleanup
    # once kept the caller (a standby engine) running after fleetd asked it to stop
    started, cleaning, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await release.wait()
            raise

    child = asyncio.create_task(slow_to_stop())
    await started.wait()
    caller = asyncio.create_task(cancel_and_wait([child]))
    await cleaning.wait()  # the caller now waits for the child's cleanup
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 5)
    release.set()
    await asyncio.gather(child, return_exceptions=True)
