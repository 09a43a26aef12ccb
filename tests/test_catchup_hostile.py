"""A hostile member's catch-up pages against the puller (exchange/service/catchup.py), on SQLite and
PostgreSQL. Found by a read-only review: a page that said "more" without moving the cursor kept
the puller asking for ever (206,054 fetches in 5 s), and a malformed page, or one whose `next` was
past PostgreSQL's int4, escaped the sweep and skipped every later channel and partner. Now each is
refused (InvalidInput) with nothing stored, and the sweep goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exchange.errors import InvalidInput
from exchange.model import NodeId
from exchange.service.catchup import CatchUp
from tests.conftest import MakeFederation, Member


class Hostile:
    """A partner that answers every fetch with one page."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.fetches = 0

    async def fetch(self, node: NodeId, path: str) -> Any:
        self.fetches += 1
        await asyncio.sleep(0)
        return self.page

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise AssertionError("not used")


def puller(member: Member, transport: Hostile) -> CatchUp:
    assert member.node is not None
    real = member.node.service.catchup
    return CatchUp(real.me, real.store, real.channels, real.receiving, transport, real.outbox, 3600)


async def test_a_page_that_says_more_without_moving_on_is_refused(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    hostile = Hostile({"items": [], "next": 0, "more": True})
    with pytest.raises(InvalidInput, match="does not move on"):
        await asyncio.wait_for(puller(fed["nl-customs"], hostile).pull("ke-customs", "c2c"), 5)
    assert hostile.fetches == 1


@pytest.mark.parametrize(
    "page",
    [
        {"items": ["x"], "next": 1, "more": False},
        ["garbage"],
        {"items": [], "next": 1 << 40, "more": False},
        {"items": [], "next": "1", "more": False},
        {"items": [{"id": 1, "envelope": None}], "next": 1, "more": False},
    ],
)
async def test_a_malformed_page_is_refused_and_the_sweep_goes_on(make_federation: MakeFederation, page: Any) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    hostile = Hostile(page)
    await puller(nl, hostile).sweep()  # no exception: each partner's refusal is logged, the next asked
    assert hostile.fetches >= 1
    assert await puller(nl, hostile).cursor("ke-customs", "c2c") == 0  # nothing stored
