"""A receiver looks up which key each reader's wrap is for (docs/protocol.md, 15.4 and 15.12) once
per epoch, not once per envelope (200 look-ups per envelope in a channel of 200), and again as
soon as an announcement it holds changes (exchange/service/epoch_announcements.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

import exchange.service.epoch_announcements as announcements
from exchange.errors import PeerError
from exchange.protocol.epoch_model import EpochRecord
from exchange.protocol.epoch_support import wrap_key_id
from tests.conftest import MakeFederation, Member
from tests.test_epoch_delivery import C2C, THREE, V2, arrives, post, reads


async def epoch_made(make_federation: MakeFederation) -> tuple[Member, Member, EpochRecord]:
    """Three v2 nodes; nl-customs posts, so the channel's epoch 0 is made and ke-customs takes it:
    nl-customs, ke-customs, and the record."""
    fed = await make_federation(nodes=THREE, channels=[C2C], options=V2)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    sent = await post(nl, "the epoch is made")
    await arrives(ke, sent["id"])
    record = ke.service.epochs.record("c2c", 0)
    assert record is not None
    return nl, ke, record


async def test_a_receiver_keeps_an_epochs_wrap_keys_until_an_announcement_changes(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    nl, ke, record = await epoch_made(make_federation)
    book = ke.service.epochs
    calls: list[str] = []
    real = wrap_key_id
    me = asyncio.current_task()

    def counted(fed: Any, node: str, support: Any) -> Any:
        # This test's look-ups only: with the clock an hour on (below), the node's own tasks may
        # look up too (CI, once: 9 calls for 6).
        if asyncio.current_task() is me:
            calls.append(node)
        return real(fed, node, support)

    monkeypatch.setattr(announcements, "wrap_key_id", counted)
    first = await book.wrap_key_ids(record.readers, strict=True)
    assert first is not None
    calls.clear()
    again = await book.wrap_key_ids(record.readers, strict=True)
    assert again == first and calls == []  # kept: no look-up for the next envelope of the epoch
    assert again is not None
    again.pop("nl-customs")  # each caller gets its own copy
    assert await book.wrap_key_ids(record.readers, strict=True) == first
    # An announcement asked for again (a reader may have announced a new key): looked up afresh.
    await book.support_of("de-customs", strict=True, refresh=True)
    assert await book.wrap_key_ids(record.readers, strict=True) == first
    assert sorted(calls) == sorted(record.readers)
    # An author's look-up (not strict: an announcement is asked for again after an hour) is kept
    # until the first of its announcements is due again, then looked up afresh, that one asked.
    calls.clear()
    author = await book.wrap_key_ids(record.readers, strict=False)
    assert await book.wrap_key_ids(record.readers, strict=False) == author == first
    assert sorted(calls) == sorted(record.readers)
    held, clock = book._fetched["de-customs"], time.monotonic
    later = SimpleNamespace(monotonic=lambda: clock() + announcements.SUPPORT_REFRESH)  # an hour on
    monkeypatch.setattr(announcements, "time", later)
    assert await book.wrap_key_ids(record.readers, strict=False) == first
    assert len(calls) == 2 * len(record.readers)
    assert book._fetched["de-customs"] > held + announcements.SUPPORT_REFRESH - 60  # asked again, as before
    monkeypatch.setattr(announcements, "time", time)
    # And the next envelopes of the epoch are taken in and read as before.
    for title in ("second", "third"):
        more = await post(nl, title)
        await arrives(ke, more["id"])
        assert (await reads(ke, more["id"]))["bulletin"]["title"] == title


async def test_an_authors_look_up_is_not_kept_while_an_announcement_is_signed_with_a_retired_key(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An announcement held is signed with a key the roster no longer lists (its node rotated) and
    asking the node again fails: the author uses the one held, as before, and asks again at its
    next post instead of keeping that answer until the hourly refresh."""
    _, ke, record = await epoch_made(make_federation)
    book = ke.service.epochs
    first = await book.wrap_key_ids(record.readers, strict=False)
    assert first is not None
    # de-customs rotated: the roster lists another key than the held announcement's signer (done
    # here to the announcement; a new roster version also ends what was kept, which is per roster).
    book._support["de-customs"] = book._support["de-customs"].model_copy(update={"signer": "0" * 16})
    book._author_memo.clear()
    asked: list[str] = []

    async def down(node: str, path: str) -> Any:
        asked.append(node)
        raise PeerError(f"{node} is restarting")

    monkeypatch.setattr(book.transport, "fetch", down)
    assert await book.wrap_key_ids(record.readers, strict=False) == first
    assert await book.wrap_key_ids(record.readers, strict=False) == first
    assert asked == ["de-customs", "de-customs"]
