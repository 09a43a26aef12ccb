"""Listings read the stored summaries, never the content; rows stored without one still read the
same; pages and listings across channels are keyset walks; search looks at a stated window."""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.clock import timestamp
from exchange.crypto import canonical_json
from exchange.model import NodeId
from exchange.protocol.envelope import build_envelope, bulletin_id
from exchange.service import inbox
from exchange.service.node import NodeService
from exchange.service.records import bulletin_row
from exchange.store import bulletins
from tests.service.lone_node import C2C, C2X, NL, bulletin, lone_node

v0003: Any = importlib.import_module("exchange.store.migrations.versions.v0003_flat_store")
ATTACHED = [{"name": "manifest.pdf", "media_type": "application/pdf", "data": "QUJD" * 50_000}]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NodeService]:
    async for svc in lone_node(tmp_path / "nodes"):
        yield svc


async def rows(service: NodeService) -> list[Any]:
    async with service.store.read() as conn:
        return list((await conn.execute(sa.select(bulletins).order_by(bulletins.c.n))).all())


async def views(service: NodeService, ref: str) -> dict[str, Any]:
    """What the officer is shown by every listing view."""
    officer = await service.users.get("officer")
    return {
        "list": [b.as_json() for b in await service.list_bulletins(officer, None, 0, 500)],
        "page": (await service.inbox.page(officer, C2C)).as_json(),
        "search": (await service.inbox.search(officer, "manifest")).as_json(),
        "kind": (await service.inbox.search(officer, "", kind="seizure-report")).as_json(),
        "references": [r.as_json() for r in await service.inbox.references(officer, [ref])],
        "referrers": [b.as_json() for b in await service.inbox.referrers(officer, ref)],
    }


async def test_summaries_are_stored_and_listings_never_read_the_content(service: NodeService) -> None:
    officer = await service.users.get("officer")
    first = await service.post(officer, C2C, bulletin("Manifest attached", attachments=ATTACHED, body="x" * 1000))
    await service.post(officer, C2X, bulletin("Seized", kind="seizure-report", references=[first.id]))
    stored = await rows(service)
    # What posting writes is what revision 0003 makes of the content.
    assert [r.summary for r in stored] == [
        canonical_json(v0003.summary_of(json.loads(r.content))).decode() for r in stored
    ]
    assert [r.search_text for r in stored] == [v0003.search_text_of(json.loads(r.content)) for r in stored]
    assert json.loads(stored[0].summary)["attachments"] == [
        {"name": "manifest.pdf", "media_type": "application/pdf", "size": 150_000}
    ]
    assert len(stored[0].summary) < 2000 < len(stored[0].content)

    # So is what receiving writes (bulletin_row), for an envelope as a partner would send it.
    state = service.channels.state(C2C)
    sent = bulletin("Received", attachments=ATTACHED)
    env = build_envelope(
        sent,
        state=state,
        author=NodeId(NL),
        key=service.keys.signing,
        seq=99,
        readers=[(NodeId(NL), service.fed.encryption_key(NL))],
        created=timestamp(),
    )
    row = bulletin_row(env, bulletin_id(env.header), sent, timestamp())
    assert row["summary"] == canonical_json(v0003.summary_of(json.loads(row["content"]))).decode()
    assert row["search_text"] == v0003.search_text_of(json.loads(row["content"]))

    shown = await views(service, first.id)
    assert [b["title"] for b in shown["list"]] == ["Manifest attached", "Seized"]
    assert [b["title"] for b in shown["search"]["results"]] == ["Manifest attached"]
    assert [b["title"] for b in shown["kind"]["results"]] == ["Seized"]
    assert [b["title"] for b in shown["referrers"]] == ["Seized"]
    # Listings do not read the content: with it unreadable, every view shows the same.
    async with service.store.engine.begin() as conn:
        await conn.execute(sa.update(bulletins).values(content="not the content"))
    assert await views(service, first.id) == shown


async def test_rows_stored_without_a_summary_read_the_same(service: NodeService) -> None:
    officer = await service.users.get("officer")
    first = await service.post(officer, C2C, bulletin("Manifest attached", attachments=ATTACHED))
    await service.post(officer, C2X, bulletin("Seized", kind="seizure-report", references=[first.id]))
    for i in range(3):
        await service.post(officer, C2C, bulletin(f"Alert {i}"))
    shown = await views(service, first.id)
    async with service.store.engine.begin() as conn:
        # as before revision 0003 filled them (it leaves them so where the content is not a bulletin's)
        await conn.execute(sa.update(bulletins).values(summary=None, search_text=None))
    assert await views(service, first.id) == shown


async def test_pages_and_listings_walk_the_channels_by_cursor(service: NodeService) -> None:
    officer, clerk = await service.users.get("officer"), await service.users.get("clerk")
    posted = [(await service.post(officer, (C2C, C2X)[i % 3 == 0], bulletin(f"B{i}"))).id for i in range(23)]
    # Across both channels, oldest first, from a cursor: the storage order, without gaps or repeats.
    seen: list[str] = []
    after = 0
    while batch := await service.list_bulletins(officer, None, after, 4):
        seen += [b.id for b in batch]
        after = batch[-1].cursor
    assert seen == posted
    # The clerk reads c2c only.
    c2c = [bid for i, bid in enumerate(posted) if i % 3]
    assert [b.id for b in await service.list_bulletins(clerk, None, 0, 500)] == c2c
    # Pages newest first, each ending with the cursor of the next.
    paged: list[str] = []
    before = None
    while True:
        page = await service.inbox.page(clerk, C2C, before, size=5)
        paged += [i.id for i in page.items]
        if page.older is None:
            break
        before = page.older
    assert paged == c2c[::-1]


async def test_search_looks_at_the_newest_of_the_channels_searched(
    service: NodeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "SEARCH_SCAN", 4)
    officer = await service.users.get("officer")
    await service.post(officer, C2C, bulletin("Old toner"))
    for i in range(3):
        await service.post(officer, C2X, bulletin(f"Filler {i}"))
    await service.post(officer, C2C, bulletin("New toner"))

    found = await service.inbox.search(officer, "toner")
    assert [r.title for r in found.results] == ["New toner"]  # the old one is fifth newest
    assert (found.stopped, found.looked_at) == (True, 4)
    # Within c2c alone it is among the newest four.
    found = await service.inbox.search(officer, "toner", channel=C2C)
    assert ([r.title for r in found.results], found.stopped) == (["New toner", "Old toner"], False)
