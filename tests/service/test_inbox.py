"""The reading views the console shows, from the application layer alone (no HTTP, no partners).

Unread counts, inbox pages, references both ways, search and receipts are computed only among the
channels `Access` lets the user read now; a post composed with `seen=True` is not unread for its
author; a channel past its end date is offered to no one and refused, with nothing stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from exchange.errors import Forbidden
from exchange.service.node import NodeService
from exchange.store import bulletins, user_reads
from tests.service.lone_node import C2C, C2X, NL, bulletin, lone_node


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NodeService]:
    async for svc in lone_node(tmp_path / "nodes"):
        yield svc


async def test_unread_counts_pages_and_ones_own_post(service: NodeService) -> None:
    officer, clerk = await service.users.get("officer"), await service.users.get("clerk")
    ids = [(await service.post(officer, C2C, bulletin(f"Alert {i}"))).id for i in range(5)]
    mine = await service.post(officer, C2C, bulletin("Composed in the console"), seen=True)
    await service.post(officer, C2X, bulletin("Elsewhere"))

    # The author's own console post is read for them, in the same transaction as the post.
    async with service.store.read() as conn:
        seen = set(await conn.scalars(sa.select(user_reads.c.bulletin_id).where(user_reads.c.user == "officer")))
    assert seen == {mine.id}
    summaries = {c.id: (c.readable, c.unread, c.total) for c in await service.inbox.channel_summaries(officer)}
    assert summaries == {C2C: (True, 5, 6), C2X: (True, 1, 1)}

    # The clerk sees c2c only; opening one makes it read.
    await service.read(clerk, ids[0])
    summaries = {c.id: (c.readable, c.unread, c.total) for c in await service.inbox.channel_summaries(clerk)}
    assert summaries == {C2C: (True, 5, 6)}

    # Pages are newest first, with the cursor of the next older page.
    first = await service.inbox.page(clerk, C2C, size=4)
    assert [i.title for i in first.items] == ["Composed in the console", "Alert 4", "Alert 3", "Alert 2"]
    assert first.older is not None and all(i.unread for i in first.items)
    rest = await service.inbox.page(clerk, C2C, before=first.older, size=4)
    assert [(i.id, i.unread) for i in rest.items] == [(ids[1], True), (ids[0], False)]
    assert rest.older is None
    with pytest.raises(Forbidden):
        await service.inbox.page(clerk, C2X)


async def test_references_both_ways_only_within_readable_channels(service: NodeService) -> None:
    officer, clerk = await service.users.get("officer"), await service.users.get("clerk")
    original = await service.post(officer, C2X, bulletin("Original in c2x"))
    answer = await service.post(officer, C2C, bulletin("Answer in c2c", references=[original.id]))
    feedback = await service.post(officer, C2C, bulletin("Feedback", kind="feedback", references=[answer.id]))
    missing = "f" * 64

    refs = await service.inbox.references(clerk, [original.id, missing, answer.id])
    assert [(r.visible, r.why, r.title) for r in refs] == [
        (False, "not available to you", ""),  # the same whether held elsewhere or not at all
        (False, "not available to you", ""),
        (True, "", "Answer in c2c"),
    ]
    (ref,) = await service.inbox.references(officer, [original.id])
    assert (ref.visible, ref.channel, ref.title) == (True, C2X, "Original in c2x")

    elsewhere = await service.post(officer, C2X, bulletin("Also answers, in c2x", references=[answer.id]))
    assert [b.id for b in await service.inbox.referrers(clerk, answer.id)] == [feedback.id]
    assert [b.id for b in await service.inbox.referrers(officer, answer.id)] == [elsewhere.id, feedback.id]
    assert [b.id for b in await service.inbox.referrers(clerk, original.id)] == [answer.id]


async def test_search_within_readable_channels(service: NodeService) -> None:
    officer, clerk = await service.users.get("officer"), await service.users.get("clerk")
    auditor = await service.users.get("auditor")
    toner = await service.post(
        officer, C2C, bulletin("Toner cartridges", indicators={"airports": ["NBO"], "air_waybills": ["176-12345675"]})
    )
    await service.post(officer, C2X, bulletin("Toner elsewhere", kind="seizure-report"))

    found = await service.inbox.search(clerk, "176-12345675")
    assert (found.channels, [r.id for r in found.results], found.searched, found.stopped) == (
        [C2C],
        [toner.id],
        True,
        False,
    )
    assert found.results[0].unread
    assert [r.title for r in (await service.inbox.search(officer, "TONER")).results] == [
        "Toner elsewhere",
        "Toner cartridges",
    ]
    assert [r.title for r in (await service.inbox.search(officer, "toner", channel=C2C)).results] == [
        "Toner cartridges"
    ]
    assert [r.title for r in (await service.inbox.search(officer, "", kind="seizure-report")).results] == [
        "Toner elsewhere"
    ]
    assert (await service.inbox.search(clerk, "elsewhere")).results == []
    nothing = await service.inbox.search(clerk, "   ")
    assert (nothing.searched, nothing.results) == (False, [])
    with pytest.raises(Forbidden):
        await service.inbox.search(auditor, "toner")


async def test_receipts_per_recipient_after_reading(service: NodeService) -> None:
    officer = await service.users.get("officer")
    posted = await service.post(officer, C2C, bulletin("Receipts"))
    shown = await service.read(officer, posted.id)
    (status,) = await service.inbox.recipient_statuses(shown)
    assert (status.node, status.author, status.known) == (NL, True, True)
    assert status.opened is not None  # the opening `read` just signed


async def test_channel_summaries_for_other_roles_show_every_channel_unreadable(service: NodeService) -> None:
    auditor = await service.users.get("auditor")
    summaries = await service.inbox.channel_summaries(auditor)
    assert [(c.id, c.readable, c.my_rights) for c in summaries] == [
        (C2C, False, ["admin", "post", "read"]),
        (C2X, False, ["admin", "post", "read"]),
    ]


async def test_a_channel_past_its_end_date_is_offered_to_no_one_and_refused(service: NodeService) -> None:
    admin, officer = await service.users.get("admin"), await service.users.get("officer")
    spec = {
        "title": "Ended",
        "purpose": "",
        "policy": {"agencies": ["customs"]},
        "default_handling": {"tlp": "AMBER", "no_onward_sharing": False},
        "ends": "2000-01-01",
    }
    await service.channels.create(admin, "ended", spec)
    await service.users.assign("officer", "ended", assigned=True, actor="test")
    officer = await service.users.get("officer")
    assert service.access.may_read(officer, "ended")
    assert not service.access.may_post(officer, "ended")
    assert service.access.postable_channels(officer) == [C2C, C2X]
    with pytest.raises(Forbidden, match="ended on 2000-01-01"):
        await service.post(officer, "ended", bulletin("Too late"), seen=True)
    async with service.store.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) == 0
        assert await conn.scalar(sa.select(sa.func.count()).select_from(user_reads)) == 0
