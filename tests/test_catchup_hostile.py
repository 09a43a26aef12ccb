"""A hostile member's catch-up pages against the puller (exchange/service/catchup.py), on SQLite and
PostgreSQL. Found by a read-only review: a page that said "more" without moving the cursor kept
the puller asking for ever (206,054 fetches in 5 s), and a malformed page, or one whose `next` was
past PostgreSQL's int4, escaped the sweep and skipped every later channel and partner. Now each is
refused (InvalidInput) with nothing stored, and the sweep goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.errors import InvalidInput, StateUnavailable
from exchange.model import Bulletin, NodeId
from exchange.service.catchup import PAGE, CatchUp
from exchange.service.receiving import GAP_DEPTH
from exchange.service.transport import PeerTransport
from exchange.store import bulletins
from tests.conftest import MakeFederation, Member, authored

BULLETIN = Bulletin.model_validate({"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "Gap", "body": "b"})


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


def puller(member: Member, transport: PeerTransport) -> CatchUp:
    """A catch-up of `member`'s node that asks `transport` instead of its partners."""
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
        # More items than the page asked for (a hostile member's 96 MiB page of markers).
        {"items": [{"id": f"m{i}", "envelope": None} for i in range(PAGE + 1)], "next": 1, "more": False},
    ],
    ids=["item-not-object", "not-object", "next-too-large", "next-text", "id-not-text", "more-than-asked"],
)
async def test_a_malformed_page_is_refused_and_the_sweep_goes_on(make_federation: MakeFederation, page: Any) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    hostile = Hostile(page)
    await puller(nl, hostile).sweep()  # no exception: each partner's refusal is logged, the next asked
    assert hostile.fetches >= 1
    assert await puller(nl, hostile).cursor("ke-customs", "c2c") == 0  # nothing stored


class Stream:
    """A partner that answers a fetch of an author's stream (`after_seq`, `limit`) with the one
    envelope at the top of the range asked: every answer leaves a gap below it."""

    def __init__(self, envelopes: dict[int, Any]) -> None:
        self.envelopes = envelopes
        self.fetches = 0

    async def fetch(self, node: NodeId, path: str) -> Any:
        self.fetches += 1
        query = dict(part.split("=") for part in path.split("?", 1)[1].split("&"))
        top = int(query["after_seq"]) + int(query["limit"])
        return {"items": [{"n": top, "id": "x", "author": "ke-customs", "seq": top, "envelope": self.envelopes[top]}]}

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise AssertionError("not used")


async def bulletins_at(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(bulletins))).scalar_one())


def envelopes_of(author: Member, count: int) -> dict[int, Any]:
    return {seq: authored(author, BULLETIN, "c2c", seq).model_dump(mode="json") for seq in range(1, count + 1)}


@pytest.mark.parametrize(
    "page",
    [{"items": None}, {"items": [5]}, [1], {"items": [{"envelope": {}}]}, {"items": [{"seq": "2", "envelope": None}]}],
)
async def test_a_malformed_page_of_a_streams_gap_is_refused_and_nothing_stored(
    make_federation: MakeFederation, page: Any
) -> None:
    """A bulletin past a gap in its author's stream makes the receiver fetch the gap from the
    partner that sent it. Its answer was used unchecked: a malformed one raised TypeError or
    KeyError, a 500 to a push and, in a catch-up sweep, the end of the sweep (found by a read-only
    review). Now StateUnavailable (503: the sender retries), nothing of the batch stored."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    stream = envelopes_of(ke, 3)
    await nl.service.receiving.ingest(NodeId(ke.id), [stream[1]])
    nl.service.receiving.transport = Hostile(page)
    with pytest.raises(StateUnavailable, match="malformed page of an author's stream"):
        await nl.service.receiving.ingest(NodeId(ke.id), [stream[3]])
    assert await bulletins_at(nl) == 1


async def test_gap_fills_nest_at_most_gap_depth_deep(make_federation: MakeFederation) -> None:
    """A partner that answers a gap one bulletin at a time nested a fill in each fill, as deep as the
    gap (up to a thousand: RecursionError). Now GAP_DEPTH fills at most; what they fetched is
    stored with the batch, and the rest is left to catch-up."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    stream = envelopes_of(ke, 12)
    await nl.service.receiving.ingest(NodeId(ke.id), [stream[1]])
    source = Stream(stream)
    nl.service.receiving.transport = source
    await nl.service.receiving.ingest(NodeId(ke.id), [stream[12]])
    assert source.fetches == GAP_DEPTH
    assert await bulletins_at(nl) == 2 + GAP_DEPTH  # seq 1, seq 12 and the four fetched (11 down to 8)
