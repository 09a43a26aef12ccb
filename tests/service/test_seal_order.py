"""The order in which `EnvelopeCrypto` answers posts sealed in several workers: a batch is answered
after the batches launched before it with posts to the same channel (so that each stream is stored,
and queued for its readers, in the order of its numbers), and never waits for other channels'.
The workers are stood in for by `_run`, whose batches end when the test says: which worker ends
first is what is under test, and real workers cannot be made to end in a given order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from exchange.model import NodeId
from exchange.service.cryptopool import EnvelopeCrypto, Sealed, SealJob


def job(channel: str, seq: int) -> SealJob:
    return cast(
        SealJob,
        SimpleNamespace(
            state=SimpleNamespace(channel=channel), seq=seq, bulletin=SimpleNamespace(body="", attachments=[])
        ),
    )


async def test_a_batch_is_answered_after_earlier_ones_of_its_channel_and_before_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crypto = EnvelopeCrypto(NodeId("nl-customs"), cast(Any, None), cast(Any, None), workers=3)
    ends: list[asyncio.Event] = []

    async def run(_fn: Any, jobs: list[SealJob]) -> list[Sealed]:
        ended = asyncio.Event()
        ends.append(ended)
        await ended.wait()
        return [Sealed(f"{j.state.channel}-{j.seq}", {}) for j in jobs]

    monkeypatch.setattr(crypto, "_run", run)
    answered: list[str] = []

    async def seal(j: SealJob) -> None:
        answered.append((await crypto.seal(j)).bid)

    tasks = [asyncio.create_task(seal(j)) for j in (job("x", 1), job("y", 1), job("x", 2))]
    while len(ends) < 3:  # one batch each, in three workers
        await asyncio.sleep(0)
    ends[2].set()  # x-2's worker ends first: it waits for x-1
    ends[1].set()  # y-1 waits for nothing of x
    for _ in range(20):
        await asyncio.sleep(0)
    assert answered == ["y-1"]
    ends[0].set()
    await asyncio.gather(*tasks)
    assert answered == ["y-1", "x-1", "x-2"]
    assert crypto._answered == {}  # nothing kept once every batch is answered


async def test_a_failed_batch_still_lets_the_next_of_its_channel_be_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    crypto = EnvelopeCrypto(NodeId("nl-customs"), cast(Any, None), cast(Any, None), workers=2)
    calls = 0

    async def run(_fn: Any, jobs: list[SealJob]) -> list[Sealed]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.05)
            raise RuntimeError("the worker died")
        return [Sealed(f"{j.state.channel}-{j.seq}", {}) for j in jobs]

    monkeypatch.setattr(crypto, "_run", run)
    first = asyncio.create_task(crypto.seal(job("x", 1)))
    second = asyncio.create_task(crypto.seal(job("x", 2)))
    assert (await asyncio.wait_for(second, 5)).bid == "x-2"
    assert first.done() and isinstance(first.exception(), RuntimeError)
