"""Small asyncio helpers shared by the daemon's loops (not used by the pure layers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task, then wait for each to finish, whatever it ends with.

    Loops own their helper tasks; stopping a loop must not leave any of them running nor
    let one task's failure hide the others' cleanup.
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(BaseException):
            await task
