"""The audit keeper's start check from the last co-signed checkpoint, its proof levels built in the
background, and a bulletin's entries found through the index by bulletin (issue 12).

- Start: the table is checked from the last checkpoint a witness co-signed (its cosignature checked
  with the witness's key) to the latest own one. A careful rewrite after the co-signed checkpoint
  is refused at start; one before it is not read at start, and is named once the proof levels are
  built (proofs are refused) and by `audit verify`. A forged cosignature does not move the start,
  and a keeper that knows no witness checks the whole table.
- Proofs: levels built while entries keep arriving give proofs that verify against later
  checkpoints (the entries taken in meanwhile are added under the lock, not re-read).
- A bulletin's entries: log pages, the console's newest-first page and the evidence come from the
  index column; an entry is listed only if it names the bulletin as stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from exchange.audit.checkpoint import cosign, log_origin, open_checkpoint, witness_name
from exchange.audit.events import BULLETIN_OPENED, BulletinOpened
from exchange.audit.keeper import StoredCheckpoint
from exchange.audit.log import BundleCheck, KeyRing
from exchange.audit.note import parse_note
from exchange.crypto import SigningKey, VerifyKey, b64d, canonical_json
from exchange.errors import AuditTampered, BadEntry
from exchange.merkle import Frontier, leaf_hash, verify_inclusion
from exchange.service.audit.entries import LogEntries
from exchange.service.audit.keeper import LogKeeper
from exchange.service.audit.views import EntryFilter
from exchange.service.node import NodeService
from exchange.store import Store, audit_cosignatures, audit_log
from tests.service.lone_node import C2C, bulletin, lone_node

NODE, WITNESS = "nl-customs", "ke-customs"
KEY, WITNESS_KEY = SigningKey.generate(), SigningKey.generate()
WITNESSES = {witness_name(WITNESS): WITNESS_KEY.verify_key}
BID = "ef" * 32


def opened(user: str, bid: str = BID) -> BulletinOpened:
    return {"event": BULLETIN_OPENED, "at": "2026-01-01T00:00:00.000Z", "bulletin": bid, "channel": "c", "user": user}


async def append(store: Store, count: int, prefix: str) -> None:
    for i in range(count):
        await store.audit(opened(f"{prefix}{i}"))


async def cosigned(keeper: LogKeeper, cp: StoredCheckpoint, key: SigningKey = WITNESS_KEY) -> None:
    line = cosign(parse_note(cp.note).text, witness_name(WITNESS), key, 1_700_000_000).line()
    await keeper.add_cosignature(cp.size, WITNESS, line)


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    """A log of 60 entries: checkpoint 40 co-signed by the witness, checkpoint 60 not (a clean stop)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"
    store = await Store.open(url)
    keeper = LogKeeper(NODE, store, KEY, witnesses=WITNESSES)
    await keeper.start()
    await append(store, 40, "a")
    cp = await keeper.checkpoint()
    assert cp is not None and cp.size == 40
    await cosigned(keeper, cp)
    await append(store, 20, "b")
    assert (await keeper.checkpoint()) is not None
    await keeper.close()
    await store.close()
    yield url


async def rewrite(url: str, k: int) -> None:
    """Entry k rewritten with its leaf hash, as a careful forger with database access would."""
    store = await Store.open(url)
    async with store.engine.begin() as conn:
        entry = await conn.scalar(sa.select(audit_log.c.entry).where(audit_log.c.idx == k))
        assert entry is not None
        body = canonical_json({**json.loads(entry), "user": "someone-else"})
        await conn.execute(
            sa.update(audit_log).where(audit_log.c.idx == k).values(entry=body, leaf_hash=leaf_hash(body))
        )
    await store.close()


async def started(url: str, witnesses: dict[str, VerifyKey] | None = None) -> tuple[Store, LogKeeper]:
    store = await Store.open(url)
    keeper = LogKeeper(NODE, store, KEY, witnesses=WITNESSES if witnesses is None else witnesses)
    try:
        await keeper.start()
    except BaseException:
        await keeper.close()
        await store.close()
        raise
    return store, keeper


async def test_an_untouched_log_starts_and_proves_every_entry(url: str) -> None:
    store, keeper = await started(url)
    try:
        latest = await keeper.latest()
        assert latest is not None and latest.size == 60
        for index in (0, 39, 40, 59):
            verify_inclusion(
                leaf_hash(await LogEntries(keeper).entry(index)),
                index,
                60,
                await keeper.inclusion(index, 60),
                latest.root,
            )
    finally:
        await keeper.close()
        await store.close()


async def test_a_rewrite_after_the_cosigned_checkpoint_is_refused_at_start(url: str) -> None:
    await rewrite(url, 45)
    with pytest.raises(AuditTampered) as refused:
        await started(url)
    assert "entries 40 to 59 no longer give the root signed in checkpoint 60" in refused.value.detail


async def test_a_rewrite_before_it_is_named_once_the_proof_levels_are_built(url: str) -> None:
    await rewrite(url, 12)
    store, keeper = await started(url)  # the start check reads entries 40 to 59 only
    try:
        with pytest.raises(AuditTampered) as refused:
            await keeper.inclusion(0, 60)
        assert "entries 0 to 39 no longer give the root signed in checkpoint 40" in refused.value.detail
        with pytest.raises(AuditTampered):  # refused again, not rebuilt
            await keeper.consistency(40, 60)
        check = BundleCheck(keys=KeyRing({NODE: KEY.verify_key}))
        async for record in keeper.export():
            check.feed(dict(record))
        with pytest.raises(BadEntry) as named:
            check.finish()
        assert named.value.index == 0 and "checkpoint 40" in named.value.detail
    finally:
        await keeper.close()
        await store.close()


async def test_entries_deleted_before_the_cosigned_checkpoint_are_named_by_the_proof_levels_build(url: str) -> None:
    """The start check reads entries 40 to 59 only; the levels, read by one streamed query, find
    the hole below: the first missing entry is named, and no proof is given."""
    store = await Store.open(url)
    async with store.engine.begin() as conn:
        await conn.execute(sa.delete(audit_log).where(audit_log.c.idx >= 7, audit_log.c.idx < 9))
    await store.close()
    store, keeper = await started(url)
    try:
        with pytest.raises(AuditTampered) as refused:
            await keeper.inclusion(0, 60)
        assert "audit entry 7 is missing" in refused.value.detail
    finally:
        await keeper.close()
        await store.close()


@pytest.mark.parametrize("how", ["no witness known", "a forged cosignature"])
async def test_without_a_valid_cosignature_the_start_check_reads_the_whole_table(url: str, how: str) -> None:
    await rewrite(url, 12)
    witnesses: dict[str, VerifyKey] = WITNESSES
    if how == "no witness known":
        witnesses = {}
    else:
        store = await Store.open(url)
        async with store.engine.begin() as conn:
            await conn.execute(sa.delete(audit_cosignatures))
        keeper = LogKeeper(NODE, store, KEY)
        latest = await keeper.latest()
        assert latest is not None
        await cosigned(keeper, latest, SigningKey.generate())  # a line no witness of the roster signed
        await store.close()
    with pytest.raises(AuditTampered) as refused:
        await started(url, witnesses)
    assert "entries 0 to 39 no longer give the root signed in checkpoint 40" in refused.value.detail


async def test_proofs_cover_entries_taken_in_while_the_levels_were_built(url: str) -> None:
    store, keeper = await started(url)
    try:
        await append(store, 25, "c")  # while the levels are being built, or just after
        cp = await keeper.checkpoint()
        assert cp is not None and cp.size == 85
        for index in (0, 59, 60, 84):
            proof = await keeper.inclusion(index, cp.size)
            verify_inclusion(leaf_hash(await LogEntries(keeper).entry(index)), index, cp.size, proof, cp.root)
        assert await keeper.consistency(40, cp.size)
    finally:
        await keeper.close()
        await store.close()


# -- a bulletin's entries, through the index ---------------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NodeService]:
    async for svc in lone_node(tmp_path / "nodes"):
        yield svc


async def test_a_bulletins_entries_come_from_the_index_and_must_name_it(service: NodeService) -> None:
    officer = await service.users.get("officer")
    bid = (await service.post(officer, C2C, bulletin("Indexed"))).id
    other = (await service.post(officer, C2C, bulletin("Another"))).id
    await service.read(officer, bid)
    audit = service.audit
    page = await audit.log_page(EntryFilter(bulletin=bid))
    events = [e["event"] for e in page.entries]
    assert events[0] == "bulletin.posted" and "bulletin.opened" in events and page.next is None
    assert all(e["bulletin"] == bid for e in page.entries)
    first, cursor = await audit.log_entries.of_bulletin(bid, limit=1)
    assert [i for i, _, _ in first] == [page.entries[0]["idx"]] and cursor == page.entries[0]["idx"]
    recent = await audit.recent(EntryFilter(bulletin=bid), audit.size)
    assert [e["idx"] for e in recent.entries] == [e["idx"] for e in reversed(page.entries)]

    # The column is a pointer: an entry is listed only if, as stored, it names the bulletin.
    posted_of_other = (await audit.log_page(EntryFilter(bulletin=other, event="bulletin.posted"))).entries[0]["idx"]
    async with service.store.engine.begin() as conn:
        await conn.execute(sa.update(audit_log).where(audit_log.c.idx == posted_of_other).values(bulletin=bid))
    assert [e["idx"] for e in (await audit.log_page(EntryFilter(bulletin=bid))).entries] == [
        e["idx"] for e in page.entries
    ]

    # Evidence: those entries, each with an inclusion proof in a checkpoint signed for them.
    evidence = await audit.log_entries.evidence(bid)
    assert [item["idx"] for item in evidence["entries"]] == [e["idx"] for e in page.entries]
    assert evidence["checkpoint"] is not None
    signed, _ = open_checkpoint(evidence["checkpoint"], service.keys.signing.verify_key, log_origin(service.me))
    root = signed.root
    for item in evidence["entries"]:
        proof = [b64d(p) for p in item["proof"]]
        verify_inclusion(leaf_hash(item["entry"].encode()), item["idx"], evidence["size"], proof, root)


def test_the_byte_prefilter_of_a_kind_or_a_prefix_of_kinds_keeps_every_entry_that_matches() -> None:
    """A filter's needle is tested on the stored canonical JSON before it is parsed: for a kind or
    a prefix of kinds it is the entry's own `"event":"...`, so both delivery kinds pass a
    'bulletin.delivered*' filter's needle and other kinds do not."""
    entries = [
        {"idx": 1, "event": "bulletin.delivered", "at": "t", "bulletin": "b", "to": "ke", "receipt_at": "t"},
        {"idx": 2, "event": "bulletin.delivered_to", "at": "t", "bulletin": "b", "to": {"ke": "t"}},
        {"idx": 3, "event": "bulletin.posted", "at": "t", "bulletin": "b", "channel": "c", "recipients": ["ke"]},
    ]
    stored = [canonical_json(e) for e in entries]
    for event, wanted in (("bulletin.delivered*", [1, 2]), ("bulletin.delivered", [1]), ("bulletin.*", [1, 2, 3])):
        where = EntryFilter(event=event)
        assert where.needle is not None
        assert [e["idx"] for e, raw in zip(entries, stored, strict=True) if where.needle in raw and where(e)] == wanted


async def table_leaves(store: Store) -> list[bytes]:
    async with store.read() as conn:
        return [bytes(h) for h in (await conn.scalars(sa.select(audit_log.c.leaf_hash).order_by(audit_log.c.idx)))]


async def test_the_keeper_takes_in_its_writers_entries_as_hashed_and_reads_the_rest_from_the_table(url: str) -> None:
    """What this process's writer committed reaches the keeper as the writer hashed it, not read
    back: a row changed in the table in between is not what the next checkpoint signs. Entries
    another process appended (an admin command beside the node) are read from the table."""
    store, keeper = await started(url)
    try:
        await keeper.close()  # no follower: catch_up below is the only one taking entries in
        await append(store, 5, "c")
        written = await table_leaves(store)
        await rewrite(url, 62)  # after the commit, before the keeper took it in
        assert (await table_leaves(store))[62] != written[62]
        assert await keeper.catch_up() == 5
        cp = await keeper.checkpoint()
        assert cp is not None and cp.size == 65 and cp.root == Frontier.from_hashes(written).root()

        other = await Store.open(url)  # a second process's store on the same file
        try:
            await append(other, 3, "d")
        finally:
            await other.close()
        await append(store, 2, "e")  # the writer finds the log's end moved and appends after it
        assert await keeper.catch_up() == 5
        now = await table_leaves(store)
        assert len(now) == 70 and keeper.size == 70
        cp = await keeper.checkpoint()
        assert cp is not None and cp.root == Frontier.from_hashes(written + now[65:]).root()
    finally:
        await keeper.close()
        await store.close()
