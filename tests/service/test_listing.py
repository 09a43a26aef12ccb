"""Inbox lines (exchange.service.listing) paged to the end, against what a full read of the store
says: newest and oldest first, per channel or all, unread only, since a time; with scans shorter
than the channels, so pages that stop where a channel's scan stopped are exercised too."""

from __future__ import annotations

import itertools

import pytest

from exchange.model import Bulletin
from exchange.service.listing import Filters, Listing
from tests.conftest import DEFAULT_NODES, Federation, MakeFederation

CHANNELS = [
    {
        "id": name,
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
    }
    for name in ("c2c", "c2c-east")
]


@pytest.fixture
async def fed(make_federation: MakeFederation) -> Federation:
    return await make_federation(nodes={k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")}, channels=CHANNELS)


async def test_pages_cover_every_match_once_in_order(fed: Federation) -> None:
    service = fed["nl-customs"].service
    officer = await service.users.authenticate(fed["nl-customs"].tokens["officer"])
    # 11 in c2c, 4 in c2c-east, interleaved unevenly; the officer opens every third.
    posted: list[tuple[str, str, str]] = []
    for i in range(15):
        channel = "c2c-east" if i % 4 == 1 else "c2c"
        bulletin = Bulletin.model_validate({"kind": "alert", "handling": {"tlp": "AMBER"}, "title": f"b{i}"})
        done = await service.post(officer, channel, bulletin)
        posted.append((done.id, channel, done.created))
        if i % 3 == 0:
            await service.read(officer, done.id)
    opened = {bid for i, (bid, _, _) in enumerate(posted) if i % 3 == 0}
    since = posted[5][2]

    for newest, only, unread, with_since, limit, scan in itertools.product(
        (True, False), (None, "c2c-east"), (False, True), (False, True), (1, 4, 50), (2, 3, 5000)
    ):
        f = Filters(channel=only, newest=newest, unread=unread, since=since if with_since else None, limit=limit)
        expected = [
            bid
            for bid, ch, created in (reversed(posted) if newest else posted)
            if (only is None or ch == only) and not (unread and bid in opened) and not (with_since and created < since)
        ]
        listing = Listing(service.store, service.access, scan=scan)
        got: list[str] = []
        unread_flags: list[bool] = []
        cursor: int | None = None
        for _ in range(100):
            page = await listing.lines(
                officer, Filters(**{**f.__dict__, **({"before": cursor} if newest else {"after": cursor or 0})})
            )
            assert len(page.items) <= limit
            got += [line.id for line in page.items]
            unread_flags += [line.unread for line in page.items]
            if page.next is None or page.next == cursor:  # oldest first, at the end: the cursor stays
                break
            cursor = page.next
        assert got == expected, (newest, only, unread, with_since, limit, scan)
        assert unread_flags == [bid not in opened for bid in got]
