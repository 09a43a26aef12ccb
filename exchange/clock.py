"""Wall-clock time and waiting for the shell. Only timestamps for people come from here; sync never uses it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(when: dt.datetime | None = None) -> str:
    """RFC 3339 UTC with millisecond precision and a Z, as the wire models require."""
    when = when or utc_now()
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` have passed; whether it is set.

    Loops that sleep this way must stay cancellable: on Python 3.11, `asyncio.wait_for` can swallow
    a cancellation that arrives as the wait ends, and a loop that swallows one never stops (a node's
    shutdown hangs). `asyncio.timeout` tells its own expiry from an outside cancellation.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def stop_requested() -> bool:
    """Whether the running task was cancelled and has not let the cancellation through yet.

    A wait a loop was cancelled in may end with an error or a result instead: a task it awaited
    that caught the cancellation or finished at that moment, a library that made it a timeout
    (aiohttp, when its own timer fires too). A loop that retries on errors checks this, so that it
    stops rather than take such an ending for an ordinary one and go on (a node's stop then
    waits for it for ever)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(task: asyncio.Future[Any] | None, *, quiet: bool = False) -> None:
    """Cancel `task` (None: nothing to do) and wait until it has ended.

    Its own CancelledError is swallowed, but not a cancellation of the caller that arrives while it
    waits (`Task.cancelling`): a close() that is cancelled meanwhile stops, rather than going on as
    if it had finished. A task that had failed raises its error here, unless `quiet`.
    """
    if task is None:
        return
    current = asyncio.current_task()
    # Counted from here: a caller already being cancelled (a node's shutdown runs in the cancelled
    # main task's `finally`) still closes everything; only a new cancellation stops it.
    before = current.cancelling() if current is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > before:
            raise
    except Exception:
        if not quiet:
            raise
