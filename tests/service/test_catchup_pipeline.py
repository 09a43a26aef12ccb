"""Catch-up's three stages (exchange/service/catchup.py, `CatchUp.pull`): while one page is stored,
the next is screened and the one after it fetched. What the pipeline must not change: pages are
stored in order, each with its cursor; a fetch that fails midway leaves every page before it
stored and the pull failing; a partner serving pages for ever cannot make the puller fetch more
than a bounded number ahead of what it has stored. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exchange.errors import StateUnavailable
from exchange.model import NodeId
from exchange.service.catchup import AHEAD, POSITIONS
from tests.conftest import MakeFederation
from tests.test_catchup_hostile import puller


class Pages:
    """A partner serving pages of markers (nothing addressed to the puller) one position apart, for
    ever or up to `last`; `fail_at`: the fetch after that position fails."""

    def __init__(self, last: int | None = None, fail_at: int | None = None) -> None:
        self.last = last
        self.fail_at = fail_at
        self.asked: list[int] = []

    async def fetch(self, node: NodeId, path: str) -> Any:
        after = int(path.split("after=")[1].split("&")[0])
        self.asked.append(after)
        await asyncio.sleep(0)
        start = max(after, POSITIONS)
        if self.fail_at is not None and start >= self.fail_at:
            raise StateUnavailable("the partner went away")
        more = self.last is None or start + 1 < self.last
        return {"items": [{"id": f"m{start}", "envelope": None}], "next": start + 1, "more": more}

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise AssertionError("not used")


async def test_pages_are_stored_in_order_each_with_its_cursor(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    partner = Pages(last=POSITIONS + 7)
    node = puller(fed["nl-customs"], partner)
    saved: list[int] = []
    real_save = node.save_cursor

    async def save(peer: str, channel: str, position: int) -> None:
        saved.append(position)
        await real_save(peer, channel, position)

    node.save_cursor = save  # type: ignore[method-assign]
    await asyncio.wait_for(node.pull("ke-customs", "c2c"), 10)
    assert saved == [POSITIONS + i for i in range(1, 8)]
    assert partner.asked == [0, *saved[:-1]]  # each page asked once, from where the one before ended
    assert await node.cursor("ke-customs", "c2c") == POSITIONS + 7


async def test_a_fetch_failing_midway_leaves_the_pages_before_it_stored(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    node = puller(fed["nl-customs"], Pages(fail_at=POSITIONS + 5))
    with pytest.raises(StateUnavailable, match="went away"):
        await asyncio.wait_for(node.pull("ke-customs", "c2c"), 10)
    assert await node.cursor("ke-customs", "c2c") == POSITIONS + 5  # the next pull resumes there


async def test_a_partner_serving_pages_for_ever_is_fetched_a_bounded_way_ahead(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    partner = Pages()
    node = puller(fed["nl-customs"], partner)
    stored = asyncio.Event()
    release = asyncio.Event()

    async def slow_save(peer: str, channel: str, position: int) -> None:
        stored.set()
        await release.wait()  # the first page's store never ends while we look

    screens: list[str] = []

    async def screen(peer: str, page: dict[str, Any]) -> None:
        """The first page screened at once, the others for as long as the pull lasts."""
        if screens:
            screens.append("started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                screens.append("stopped")
                raise
        screens.append("done")

    node.save_cursor = slow_save  # type: ignore[method-assign]
    node._screen = screen  # type: ignore[method-assign]
    pulling = asyncio.create_task(node.pull("ke-customs", "c2c"))
    await asyncio.wait_for(stored.wait(), 10)
    for _ in range(50):
        await asyncio.sleep(0.01)
    # The page being stored, AHEAD waiting in the queue, and one fetched and waiting for room.
    assert len(partner.asked) == AHEAD + 2
    pulling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pulling
    for _ in range(20):
        await asyncio.sleep(0.01)
    # Two pages screened at once at most (the third waits for the first's to end); every screening
    # begun is stopped with the pull, that of the page waiting for room in the queue too.
    assert screens.count("started") == 2 and screens.count("stopped") == 2 and screens[0] == "done", screens
