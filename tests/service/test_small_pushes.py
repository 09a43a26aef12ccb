"""A sender pipelines only large batches (exchange.service.sender.PIPELINE_FROM): after a push of
a few bulletins it waits for that push's receipts, and what was queued meanwhile goes as one
batch. Before, every push had the next read, marked sent and sent while it travelled, however
small: an author whose channel has 199 other readers sent each of them a push of one or two
bulletins per post, two in flight, and spent more on the pushes than on their bulletins. A full
batch, or one of PIPELINE_FROM or more, still has the next one sent while it travels
(tests/test_hot_path_delivery.py). Two nodes' application layers, in-memory transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from exchange.model import Bulletin, NodeId
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.service.outbox import MANY_PUSHES, OutItem
from exchange.service.sender import PIPELINE_FROM
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import joined
from tests.service.test_outbox import MemoryTransport
from tests.test_delivery import BULLETIN
from tests.test_hot_path_delivery import A, B, CheckingTransport


class HeldTransport(CheckingTransport):
    """Holds the first push until `release` is set, and counts the pushes under way."""

    def __init__(self, me: str) -> None:
        super().__init__(me)
        self.release = asyncio.Event()
        self.under_way = 0
        self.most_under_way = 0

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            await self.release.wait()
            return await super().send(node, path, body)
        finally:
            self.under_way -= 1


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[dict[str, NodeService], HeldTransport]]:
    """A and B on SQLite, with the default batch size (100); not started."""
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read"]}}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {}, {})
    await init_federation(folder)
    held = HeldTransport(A)
    async with joined(folder, {A: held, B: MemoryTransport(B)}) as services:
        yield services, held


async def test_after_a_small_push_what_was_queued_meanwhile_goes_as_one_push_after_its_receipts(
    pair: tuple[dict[str, NodeService], HeldTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, transport = pair
    a = services[A]
    # Five more posts come while the first push is being marked sent, so the sender was woken
    # after it read its queue: before, it read them ahead and sent them while the first travelled.
    post, later = await _posting_while_marked(a, monkeypatch, range(1, 6))
    first = await post(0)
    # B is not started: it pulls nothing, and holds only what A pushes. (Started, it could pull
    # `first` and receipt it before A marks it sent, and A, finding it delivered, would not push it.)
    await a.start()
    await eventually(lambda: _true(transport.under_way == 1 and len(later) == 5), what="the first push under way")
    await asyncio.sleep(0.5)  # time enough for a read-ahead and a second push, were there one
    assert transport.most_under_way == 1
    transport.release.set()

    async def delivered() -> bool:
        return await a.queued_counts() == {}

    await eventually(delivered, what="delivery of both pushes")
    first_push, second_push = (ids for _, ids, _ in transport.pushes)
    assert first_push == [first] and sorted(second_push) == sorted(later)
    assert transport.most_under_way == 1


async def _true(value: bool) -> bool:
    return value


async def _posting_while_marked(
    a: NodeService, monkeypatch: pytest.MonkeyPatch, numbers: range
) -> tuple[Callable[[int], Awaitable[str]], list[str]]:
    """A poster of report i at A, and the ids of the reports `numbers`, posted the first time a
    push is marked sent (before it goes)."""
    officer = await a.users.get("officer")

    async def post(i: int) -> str:
        return (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": f"Report {i}"}))).id

    later: list[str] = []
    mark_sent = a.outbox.mark_sent

    async def marking(dest: str, items: Sequence[OutItem]) -> list[OutItem]:
        if not later:
            later.extend([await post(i) for i in numbers])
        return await mark_sent(dest, items)

    monkeypatch.setattr(a.outbox, "mark_sent", marking)
    return post, later


@pytest.mark.parametrize("others", [0, MANY_PUSHES + 1], ids=["few partners", "many partners"])
async def test_a_large_push_has_the_next_sent_while_it_travels_only_while_few_partners_are_pushed_to(
    pair: tuple[dict[str, NodeService], HeldTransport], monkeypatch: pytest.MonkeyPatch, others: int
) -> None:
    services, transport = pair
    a = services[A]
    # A large first push (PIPELINE_FROM), and more posted while it is being marked sent: the
    # sender was woken after its read, so it reads them ahead and sends them while the first
    # travels, unless `others` pushes to other partners are under way.
    post, later = await _posting_while_marked(a, monkeypatch, range(PIPELINE_FROM, PIPELINE_FROM + 5))
    first = [await post(i) for i in range(PIPELINE_FROM)]
    a.outbox.pushes_under_way += others  # as if pushes to `others` partners were under way
    await a.start()
    await eventually(lambda: _true(transport.under_way >= 1 and len(later) == 5), what="the first push under way")
    await asyncio.sleep(0.5)  # time enough for a read-ahead and a second push, were there one
    assert transport.most_under_way == (1 if others else 2)
    transport.release.set()

    async def delivered() -> bool:
        return await a.queued_counts() == {}

    await eventually(delivered, what="delivery of both pushes")
    assert [sorted(ids) for _, ids, _ in transport.pushes] == [sorted(first), sorted(later)]
    # Every push counted out as it landed (its receipts are stored just before it ends).
    await eventually(lambda: _true(a.outbox.pushes_under_way == others), what="every push counted out")
