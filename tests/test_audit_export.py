"""A full export as the node streams it (issue 12): the table read by one query through the
database driver, on SQLite and PostgreSQL, gives the rows a page-by-page read gives, and lines
that are byte for byte those of the export's records; the bundle verifies, and a tampered row
still exports and is named by the verifier. The keeper's start check and proof levels read the
table by the same query.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from exchange.audit.checkpoint import cosign, witness_name
from exchange.audit.events import BULLETIN_OPENED, BulletinOpened
from exchange.audit.keeper import record_line
from exchange.audit.log import BundleCheck, KeyRing
from exchange.crypto import SigningKey
from exchange.errors import BadEntry
from exchange.merkle import verify_inclusion
from exchange.service.audit import table
from exchange.service.audit.entries import LogEntries
from exchange.service.audit.keeper import LogKeeper
from exchange.store import AuditBuffer, Store, audit_checkpoints, audit_log

NODE = "nl-customs"
KEY = SigningKey.generate()
KEYS = KeyRing({NODE: KEY.verify_key})
COUNT = 2 * table.CHUNK + 7  # three fetches, the last one short


def opened(i: int) -> BulletinOpened:
    user = "Zoë" if i % 1000 == 999 else f"user-{i}"  # a few entries not in the plain form
    at = "2026-01-01T00:00:00.000Z"
    return {"event": BULLETIN_OPENED, "at": at, "bulletin": "ab" * 32, "channel": "c", "user": user}


@pytest.fixture
async def store(database: Callable[[str], Awaitable[str]], tmp_path: Path) -> AsyncIterator[Store]:
    url = await database("audit_export") or f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
    opened_store = await Store.open(url)

    def entries(audit: AuditBuffer) -> None:
        for i in range(COUNT):
            audit.add(opened(i))

    try:
        await opened_store.insert(entries)
        yield opened_store
    finally:
        await opened_store.close()


async def streamed(store: Store, lo: int, hi: int) -> list[tuple[int, bytes, bytes]]:
    out: list[tuple[int, bytes, bytes]] = []
    async for chunk in table.stream(store, lo, hi, audit_log.c.entry, audit_log.c.leaf_hash):
        assert 0 < len(chunk) <= table.CHUNK
        out += [(int(i), bytes(e), bytes(h)) for i, e, h in chunk]
    return out


async def test_one_streamed_query_gives_the_rows_of_a_paged_read(store: Store) -> None:
    for lo, hi in ((0, COUNT), (3, table.CHUNK + 1), (COUNT - 2, COUNT + 50), (5, 5), (COUNT, COUNT + 1)):
        paged = [
            (int(i), bytes(e), bytes(h))
            for page in [r async for r in table.pages(store, lo, hi, audit_log.c.entry, audit_log.c.leaf_hash)]
            for i, e, h in page
        ]
        assert await streamed(store, lo, hi) == paged
    assert len(await streamed(store, 0, COUNT)) == COUNT


async def test_the_streamed_export_is_the_records_lines_and_verifies(store: Store) -> None:
    keeper = LogKeeper(NODE, store, KEY)
    await keeper.start()
    try:
        await keeper.checkpoint()
        entries = LogEntries(keeper)
        lines = b"".join([chunk async for chunk in entries.export_lines()]).split(b"\n")
        records = [record async for record in entries.export()]
        assert lines[-1] == b""
        assert lines[1:-1] == [record_line(r) for r in records[1:]]  # the header differs by its time
        assert json.loads(lines[0])["size"] == COUNT

        check = BundleCheck(keys=KEYS)
        check.feed_lines(lines[:-1])
        report = check.finish()
        assert report.entries == COUNT and report.tail == 0
    finally:
        await keeper.close()


async def test_a_tampered_row_still_exports_and_is_named(store: Store) -> None:
    keeper = LogKeeper(NODE, store, KEY)
    await keeper.start()
    try:
        await keeper.checkpoint()
        async with store.engine.begin() as conn:
            entry = await conn.scalar(sa.select(audit_log.c.entry).where(audit_log.c.idx == table.CHUNK + 3))
            assert entry is not None
            forged = bytes(entry).replace(b"user-", b"user_")
            await conn.execute(sa.update(audit_log).where(audit_log.c.idx == table.CHUNK + 3).values(entry=forged))
        lines = b"".join([chunk async for chunk in LogEntries(keeper).export_lines()]).split(b"\n")[:-1]
        for feed in ("runs", "lines"):
            check = BundleCheck(keys=KEYS)
            with pytest.raises(BadEntry) as caught:
                if feed == "runs":
                    check.feed_lines(lines)
                else:
                    for line in lines:
                        check.feed_line(line)
                check.finish()
            assert caught.value.index == table.CHUNK + 3
            assert "does not match its stored leaf hash" in caught.value.detail
    finally:
        await keeper.close()


async def test_the_keeper_reads_the_table_by_the_same_query_on_either_database(store: Store) -> None:
    """Its start check (here with no witness: every leaf hash) and its proof levels."""
    keeper = LogKeeper(NODE, store, KEY)
    await keeper.start()
    cp = await keeper.checkpoint()
    await keeper.close()
    assert cp is not None and cp.size == COUNT
    keeper = LogKeeper(NODE, store, KEY)
    await keeper.start()  # checks every leaf hash against the checkpoint it signed
    try:
        proof = await keeper.inclusion(table.CHUNK + 1, COUNT)
        ((_, _, leaf),) = await streamed(store, table.CHUNK + 1, table.CHUNK + 2)
        verify_inclusion(leaf, table.CHUNK + 1, COUNT, proof, cp.root)
    finally:
        await keeper.close()


WITNESS, WITNESS_KEY = "ke-customs", SigningKey.generate()
WITNESSED = KeyRing({NODE: KEY.verify_key, WITNESS: WITNESS_KEY.verify_key})
# (time a checkpoint is stored with, whether the witness co-signed it, whether a full export carries it)
DAYS = [
    ("2026-01-01T08:00:00.000Z", False, False),  # not the last of its day
    ("2026-01-01T20:00:00.000Z", False, True),  # the last of 1 January
    ("2026-01-02T10:00:00.000Z", True, True),  # the latest the witness co-signed
    ("2026-01-02T11:00:00.000Z", False, True),  # the last of 2 January
    ("2026-01-03T09:00:00.000Z", False, True),  # the only one of 3 January
    ("2026-01-05T11:00:00.000Z", False, False),  # a day and an hour before the latest
    ("2026-01-05T12:00:00.000Z", False, True),  # a day before the latest: the recent ones start here
    ("2026-01-05T17:00:00.000Z", False, True),
    ("2026-01-06T09:00:00.000Z", False, True),
    ("2026-01-06T12:00:00.000Z", False, True),  # the latest
]


async def test_a_full_export_carries_the_last_day_of_checkpoints_and_one_a_day_before(store: Store) -> None:
    """A node signs a checkpoint each minute its log grew: a year of them would outweigh the
    entries. The export carries every checkpoint of the last day before the latest, the last of
    each earlier day, and the latest each witness co-signed; the bundle verifies, with the
    witness's cosignature checked."""
    keeper = LogKeeper(NODE, store, KEY)
    await keeper.start()
    sizes = []
    try:
        for i, (at, cosigned, _) in enumerate(DAYS):
            await store.insert(lambda audit, i=i: audit.add(opened(COUNT + i)))  # type: ignore[misc]
            cp = await keeper.checkpoint()
            assert cp is not None
            sizes.append(cp.size)
            async with store.engine.begin() as conn:  # as if signed then
                stored = audit_checkpoints.c.size == cp.size
                await conn.execute(sa.update(audit_checkpoints).where(stored).values(at=at))
            if cosigned:
                line = cosign(cp.note.split("\n\n")[0] + "\n", witness_name(WITNESS), WITNESS_KEY, 1_767_000_000)
                await table.keep_cosignature(store, cp.size, WITNESS, line.line(), WITNESSED.witnesses(NODE))
        lines = b"".join([chunk async for chunk in LogEntries(keeper).export_lines()]).split(b"\n")[:-1]
        records = [record async for record in LogEntries(keeper).export()]
    finally:
        await keeper.close()
    carried = [s for s, (_, _, kept) in zip(sizes, DAYS, strict=True) if kept]
    notes = [json.loads(line)["note"] for line in lines if line.startswith(b'{"type":"checkpoint"')]
    assert [int(n.split("\n")[1]) for n in notes] == carried
    assert [int(r["note"].split("\n")[1]) for r in records if r["type"] == "checkpoint"] == carried
    check = BundleCheck(keys=WITNESSED)
    check.feed_lines(lines)
    report = check.finish()
    assert report.entries == COUNT + len(DAYS) and [c.size for c in report.checkpoints] == carried
    assert [c.witnesses for c in report.checkpoints if c.witnesses] == [(WITNESS,)]


@pytest.mark.parametrize(
    "edited",
    ["0001-01-01T12:00:00.000Z", "0999-06-01T00:00:00.000Z", "not a time", "2026-13-45T99:00:00.000Z"],
)
async def test_a_latest_checkpoint_whose_time_was_edited_exports_them_all(store: Store, edited: str) -> None:
    """A time no node writes, on the latest checkpoint (an edited row): the export still goes
    out, carrying every checkpoint, for the verifier to judge. A time that parses but cannot
    have a day taken from it, or whose year has fewer than four digits (it would sort after
    every real time as text), counts as one no node writes."""
    keeper = LogKeeper(NODE, store, KEY)
    await keeper.start()
    try:
        sizes = []
        for i in range(3):
            await store.insert(lambda audit, i=i: audit.add(opened(COUNT + i)))  # type: ignore[misc]
            cp = await keeper.checkpoint()
            assert cp is not None
            sizes.append(cp.size)
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.update(audit_checkpoints).where(audit_checkpoints.c.size == sizes[-1]).values(at=edited)
            )
        lines = b"".join([chunk async for chunk in LogEntries(keeper).export_lines()]).split(b"\n")[:-1]
    finally:
        await keeper.close()
    notes = [json.loads(line)["note"] for line in lines if line.startswith(b'{"type":"checkpoint"')]
    assert [int(n.split("\n")[1]) for n in notes][-3:] == sizes
    check = BundleCheck(keys=KEYS)
    check.feed_lines(lines)
    assert check.finish().entries == COUNT + 3
