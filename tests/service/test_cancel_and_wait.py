"""`cancel_and_wait`, the one way the application layer stops a background task: it waits until
the task has ended, swallows the task's own cancellation, never a new one of its caller, and still
closes everything from a caller that was being cancelled when it started (a node's shutdown runs in
the cancelled main task's `finally`)."""

from __future__ import annotations

import asyncio

import pytest

from exchange.clock import cancel_and_wait


async def forever(ended: list[str], name: str, linger: float = 0.0) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        if linger:
            await asyncio.shield(asyncio.sleep(linger))
        ended.append(name)


async def test_it_waits_until_the_task_has_ended_and_swallows_its_cancellation() -> None:
    ended: list[str] = []
    task = asyncio.create_task(forever(ended, "a", linger=0.05))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and ended == ["a"]
    await cancel_and_wait(None)  # nothing to stop


async def test_a_caller_being_cancelled_already_still_closes_every_task() -> None:
    ended: list[str] = []
    tasks = [asyncio.create_task(forever(ended, n)) for n in "abc"]
    started = asyncio.Event()

    async def main() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:  # as a node's shutdown: asyncio.run cancelled the main task
            for task in tasks:
                await cancel_and_wait(task)

    runner = asyncio.create_task(main())
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert ended == ["a", "b", "c"]


async def test_a_new_cancellation_of_the_caller_while_it_waits_is_not_swallowed() -> None:
    ended: list[str] = []
    slow = asyncio.create_task(forever(ended, "slow", linger=0.5))
    after: list[str] = []

    async def close() -> None:
        await cancel_and_wait(slow)
        after.append("went on")  # never: the caller was cancelled meanwhile

    closer = asyncio.create_task(close())
    await asyncio.sleep(0.05)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert after == []


async def test_a_task_that_had_failed_raises_its_error_unless_quiet() -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    for quiet in (False, True):
        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        if quiet:
            await cancel_and_wait(task, quiet=True)
        else:
            with pytest.raises(RuntimeError, match="broken"):
                await cancel_and_wait(task)
