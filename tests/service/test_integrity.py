"""Integrity claims checked when they are made, from the application layer alone (issue 10).

Opening a bulletin checks the stored row against its signed envelope each time: an edit of its
content, ciphertext, TLP, channel or envelope is refused and named, nothing is recorded as
opened, and the failure is audited once. An export carries every checkpoint, so a log that lost
signed entries fails verification, and a keeper refuses to start on it. The pure rules: what a
witness makes of a smaller checkpoint, pushed or pulled.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.audit.checkpoint import Checkpoint
from exchange.audit.keeper import first_unmatched, shorter_than_signed, unsigned_entry_problem
from exchange.audit.log import BundleCheck, KeyRing
from exchange.audit.witness import Seen, split_detail, went_back
from exchange.crypto import canonical_json
from exchange.errors import AuditTampered, BadEntry, BulletinUnverified
from exchange.merkle import leaf_hash
from exchange.service.audit.keeper import LogKeeper
from exchange.service.node import NodeService
from exchange.store import Store, audit_log, bulletins, receipts, user_reads
from tests.service.lone_node import C2C, C2X, bulletin, lone_node


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NodeService]:
    async for svc in lone_node(tmp_path / "nodes"):
        yield svc


Row = dict[str, Any]
Tamper = Callable[[Row], Row]  # the stored row -> the columns an attacker writes over it


def flip(text: str, at: int) -> str:
    """One base64url character changed into another."""
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


def edit_envelope(row: Row, change: Callable[[dict[str, Any]], None]) -> Row:
    env = json.loads(bytes(row["envelope"]))
    change(env)
    return {"envelope": json.dumps(env).encode()}


def content(row: Row) -> Row:
    return {"content": row["content"].replace("Toner cartridges", "Nothing to see")}


def ciphertext(row: Row) -> Row:
    return edit_envelope(row, lambda env: env.update(ciphertext=flip(env["ciphertext"], 40)))


def tlp(row: Row) -> Row:
    return {"tlp": "CLEAR"}


def header_tlp(row: Row) -> Row:
    return edit_envelope(row, lambda env: env["header"]["handling"].update(tlp="CLEAR"))


def channel(row: Row) -> Row:
    return {"channel": C2C}  # posted in c2x, which the clerk does not read


TAMPERS: list[tuple[Tamper, str]] = [
    (content, "its stored content differs from what its signed envelope decrypts to: the content was changed"),
    (ciphertext, "its ciphertext does not match the hash its signed header commits to: the ciphertext was changed"),
    (tlp, "its stored TLP ('CLEAR') differs from the signed header's ('RED'): the TLP was changed"),
    (header_tlp, "the signature of nl-customs over its stored envelope does not verify"),
    (channel, "its stored channel ('c2c') differs from the signed header's ('c2x'): the channel was changed"),
]


async def stored(service: NodeService, bid: str) -> Row:
    async with service.store.read() as conn:
        return dict((await conn.execute(sa.select(bulletins).where(bulletins.c.id == bid))).one()._mapping)


async def overwrite(service: NodeService, bid: str, values: Row) -> None:
    async with service.store.engine.begin() as conn:
        await conn.execute(sa.update(bulletins).where(bulletins.c.id == bid).values(**values))


async def recorded(service: NodeService, bid: str) -> tuple[int, int, list[str]]:
    """(users who opened it, opened receipts, problems audited for it)."""
    async with service.store.read() as conn:
        reads = await conn.scalar(sa.select(sa.func.count()).where(user_reads.c.bulletin_id == bid))
        opened = await conn.scalar(
            sa.select(sa.func.count()).where(receipts.c.bulletin_id == bid, receipts.c.status == "opened")
        )
        entries = [json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]
    problems = [e["problem"] for e in entries if e["event"] == ev.BULLETIN_UNVERIFIED and e["bulletin"] == bid]
    return int(reads or 0), int(opened or 0), problems


async def test_every_edit_of_a_stored_bulletin_is_refused_when_shown_and_named(service: NodeService) -> None:
    officer, clerk = await service.users.get("officer"), await service.users.get("clerk")
    red = {"tlp": "RED", "no_onward_sharing": False}
    posted = await service.post(officer, C2X, bulletin("Toner cartridges", body="Routed via NBO.", handling=red))
    shown = await service.inbox.load(officer, posted.id)
    assert shown.signature_verified and shown.bulletin["title"] == "Toner cartridges"
    original = await stored(service, posted.id)

    for tamper, named in TAMPERS:
        await overwrite(service, posted.id, tamper(original))
        user = clerk if tamper is channel else officer  # the moved row lands in the clerk's only channel
        for read in (service.inbox.load, service.read, service.read):  # audited once, however often read
            with pytest.raises(BulletinUnverified) as refused:
                await read(user, posted.id)
            detail = refused.value.detail
            assert detail.startswith(f"bulletin {posted.id} is not shown: ") and named in detail, detail
        # Forwarding checks the same way, and stores nothing; a trace checks the signed header.
        with pytest.raises(BulletinUnverified):
            await service.forward(officer, posted.id, C2X)
        if tamper is header_tlp:
            with pytest.raises(BulletinUnverified, match="its stored envelope does not verify"):
                await service.audit.header_of(posted.id)
        await overwrite(service, posted.id, {k: original[k] for k in tamper(original)})

    # Refused reads recorded nothing as opened; each problem was audited once, never the content.
    reads, opened, problems = await recorded(service, posted.id)
    assert (reads, opened) == (0, 0)
    assert len(problems) == len(TAMPERS) and all("Toner" not in p and "NBO" not in p for p in problems)
    async with service.store.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) == 1

    # Restored, it verifies again, and the open is recorded.
    assert (await service.read(officer, posted.id)).signature_verified
    assert (await recorded(service, posted.id))[:2] == (1, 1)


async def test_an_export_carries_every_checkpoint_and_a_keeper_will_not_start_on_a_shorter_log(
    service: NodeService,
) -> None:
    """The tail of a log deleted after a checkpoint, then the store reopened as after a restart: the
    export still carries the checkpoint, so verification names the first missing entry, and a
    keeper refuses to resume (it would reuse the indices)."""
    officer = await service.users.get("officer")
    for i in range(3):
        await service.post(officer, C2C, bulletin(f"Alert {i}"))
    cp = await service.audit.keeper.checkpoint()
    assert cp is not None
    cut = cp.size - 2
    async with service.store.engine.begin() as conn:
        await conn.execute(sa.delete(audit_log).where(audit_log.c.idx >= cut))

    reopened = await Store.open(service.config.database_url)
    try:
        assert reopened.audit_size == cut
        keeper = LogKeeper(service.me, reopened, service.keys.signing, service.audit.signed_roster)
        check = BundleCheck(keys=KeyRing.from_federation(service.fed))
        async for record in keeper.export():
            check.feed(dict(record))
        with pytest.raises(BadEntry) as missing:
            check.finish()
        assert missing.value.index == cut
        assert f"entries {cut} to {cp.size - 1} were deleted" in missing.value.detail

        with pytest.raises(AuditTampered) as refused:
            await keeper.start()
        assert refused.value.detail.startswith(
            f"the audit log holds {cut} entries, but this node signed a checkpoint of {cp.size}: "
            f"entries {cut} to {cp.size - 1} were deleted"
        )
        assert reopened.audit_size == cut  # nothing written
    finally:
        await reopened.close()


# -- the pure rules ---------------------------------------------------------------------------------

SEEN = Seen(10, b"\x01" * 32, "note", "2026-01-01T00:00:00.000Z")


def test_a_smaller_checkpoint_is_merely_late_when_judged_and_a_rollback_when_it_is_the_logs_latest() -> None:
    smaller = Checkpoint("exchange/audit/nl-customs", 7, b"\x02" * 32)
    assert split_detail(SEEN, smaller, 10, []) == {"status": "stale", "size": 10}  # pushed late, or pulled
    assert went_back(SEEN, smaller) == "it went back to size 7"  # the latest a pull got
    assert went_back(SEEN, Checkpoint("exchange/audit/nl-customs", 10, b"\x02" * 32)) is None
    larger = Checkpoint("exchange/audit/nl-customs", 12, b"\x02" * 32)
    assert split_detail(SEEN, larger, 9, []) == {"status": "stale", "size": 10}  # proven from another size


def test_the_keepers_start_checks_name_what_is_wrong() -> None:
    assert shorter_than_signed(10, 10, 10) is None and shorter_than_signed(12, 12, 10) is None
    assert shorter_than_signed(7, 7, 10) == (
        "the audit log holds 7 entries, but this node signed a checkpoint of 10: entries 7 to 9 were deleted"
    )
    assert shorter_than_signed(7, 12, 10) is not None and "at least 3" in str(shorter_than_signed(7, 12, 10))

    body = canonical_json({"idx": 4, "event": "node.started", "at": "2026-01-01T00:00:00.000Z"})
    assert unsigned_entry_problem(4, body, leaf_hash(body)) is None
    assert unsigned_entry_problem(4, body.replace(b"started", b"stopped"), leaf_hash(body)) == (
        "does not match its stored leaf hash: it was changed"
    )
    assert unsigned_entry_problem(5, body, leaf_hash(body)) == "does not carry its own index: entries were moved"

    roots = {3: b"a", 6: b"b", 9: b"c"}
    good: Callable[[int], bytes] = roots.__getitem__
    assert first_unmatched(roots.items(), good) is None
    assert first_unmatched(roots.items(), lambda n: b"x" if n >= 6 else good(n)) == (3, 6)
