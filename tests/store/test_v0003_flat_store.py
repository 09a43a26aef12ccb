"""Revision 0003 (summaries, the audit log's bulletin index, kept counts, the outbox's pruning mark)
on a revision-0002 database holding release 0.1.0's data, on SQLite and PostgreSQL.

The upgrade changes no stored value, fills each bulletin's summary from its content and each audit
entry's bulletin from the entry, in batches, and counts what is stored; the database keeps the
counts from then on; the node lists and counts from them; the downgrade takes exactly 0003 away.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.app import start_node
from exchange.clock import utc_now
from exchange.crypto import canonical_json
from exchange.model import Bulletin
from exchange.service.records import search_text_of, summary_of
from exchange.service.retention import Pruned, Retention
from exchange.store import Store, metadata, schema
from tests.store.test_migrations import EXPECTED, Deployed, api, deployed, run_here, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision

__all__ = ["deployed"]  # the fixture, shared with test_migrations

v0003: Any = importlib.import_module("exchange.store.migrations.versions.v0003_flat_store")


async def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            done = await conn.execute(sa.text(sql), params)
            return [tuple(r) for r in done] if done.returns_rows else []
    finally:
        await engine.dispose()


async def counts(url: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """The kept counts, and the same counted from the rows."""
    kept = dict(await query(url, "SELECT channel, bulletins FROM channel_counts WHERE bulletins > 0"))
    counted = dict(await query(url, "SELECT channel, count(*) FROM bulletins GROUP BY channel"))
    assert kept == counted
    opened = {(u, c): n for u, c, n in await query(url, 'SELECT "user", channel, opened FROM user_channel_reads') if n}
    read = await query(
        url,
        'SELECT r."user", b.channel, count(*) FROM user_reads r JOIN bulletins b ON b.id = r.bulletin_id '
        'GROUP BY r."user", b.channel',
    )
    assert opened == {(u, c): n for u, c, n in read}
    return kept, opened


def named_by(entry: dict[str, Any]) -> str | None:
    """The bulletin an audit entry names: its "bulletin", or a "ref" that is a bulletin id."""
    if "bulletin" in entry:
        return str(entry["bulletin"])
    ref = entry.get("ref")
    return ref if isinstance(ref, str) and re.fullmatch(r"[0-9a-f]{64}", ref) else None


def test_the_frozen_summary_is_the_one_the_node_writes() -> None:
    """The migration's copies of summary_of and search_text_of and the service's agree."""
    bulletin = Bulletin.model_validate(
        {
            "kind": "alert",
            "handling": {"tlp": "AMBER"},
            "title": "Résumé ✓",
            "body": 'Line\nwith "quotes" and \\ backslash',
            "indicators": {"airports": ["NBO"]},
            "references": ["a" * 64],
            "attachments": [{"name": "scan.pdf", "media_type": "application/pdf", "data": "QUJD" * 1000}],
        }
    )
    content = json.loads(bulletin.payload_bytes)
    frozen = canonical_json(v0003.summary_of(content)).decode()
    assert frozen == canonical_json(summary_of(content)).decode()
    summary = json.loads(frozen)
    assert summary["attachments"] == [{"name": "scan.pdf", "media_type": "application/pdf", "size": 3000}]
    assert "data" not in frozen and "body" not in summary and summary["title"] == "Résumé ✓"
    assert (
        v0003.search_text_of(content)
        == search_text_of(content)
        == 'résumé ✓\nline\nwith "quotes" and \\ backslash\nalert\nnbo'
    )

    # (tests/service/test_flat_inbox.py checks the rows that posting and receiving write against it.)


async def test_upgrading_a_0002_database_fills_summaries_bulletins_and_counts(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0002", up=True)
    before = await snapshot(deployed.url)
    assert before.pop("alembic_version") == [("0002",)]
    shape = await structure(deployed.url)

    # Batches of 2 rows (and of one, where content is long): the keyset walk, not a single read.
    monkeypatch.setattr(v0003, "ROWS", 2)
    monkeypatch.setattr(v0003, "CHARACTERS", 100)
    done = await schema.upgrade(deployed.url)
    assert (done.before, done.after, done.applied[0]) == ("0002", schema.head(), "0003")  # later ones: their tests
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [(schema.head(),)]
    # No stored value changed: only columns were added, and tables of counts.
    release_columns = await snapshot(deployed.url, only=schema.RELEASE_0_1_0)
    assert {t: r for t, r in release_columns.items() if t in before} == before
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert diffs == []  # what tables.py says, indexes included

    # Every summary and search text is made of its content; every entry naming a bulletin is indexed by it.
    rows = await query(deployed.url, "SELECT content, summary, search_text FROM bulletins ORDER BY n")
    assert len(rows) == EXPECTED["rows"]["bulletins"]
    assert all(s == canonical_json(summary_of(json.loads(c))).decode() for c, s, _ in rows)
    assert all(t == search_text_of(json.loads(c)) for c, _, t in rows)
    entries = await query(deployed.url, "SELECT entry, bulletin FROM audit_log ORDER BY idx")
    named = [named_by(json.loads(bytes(e))) for e, _ in entries]
    assert [b for _, b in entries] == named and sum(1 for b in named if b) >= EXPECTED["rows"]["bulletins"]
    assert await query(deployed.url, "SELECT count(*) FROM outbox WHERE done_at IS NOT NULL") == [(0,)]
    kept, opened = await counts(deployed.url)
    assert (
        sum(kept.values()) == EXPECTED["rows"]["bulletins"] and sum(opened.values()) == EXPECTED["rows"]["user_reads"]
    )

    # The database keeps the counts: a new bulletin, a read of it, and their deletion.
    channel = next(iter(kept))
    await query(
        deployed.url,
        "INSERT INTO bulletins (id, channel, author, seq, state_pos, tlp, created, stored_at, envelope, recipients) "
        "VALUES (:id, :channel, 'zz-test', 1, 0, 'CLEAR', 'x', 'x', :env, ' ')",
        id="f" * 64,
        channel=channel,
        env=b"{}",
    )
    await query(
        deployed.url, "INSERT INTO user_reads (\"user\", bulletin_id, at) VALUES ('officer', :id, 'x')", id="f" * 64
    )
    assert (await counts(deployed.url))[0][channel] == kept[channel] + 1
    assert (await counts(deployed.url))[1][("officer", channel)] == opened.get(("officer", channel), 0) + 1
    await query(deployed.url, "DELETE FROM user_reads WHERE bulletin_id = :id", id="f" * 64)
    await query(deployed.url, "DELETE FROM bulletins WHERE id = :id", id="f" * 64)
    assert await counts(deployed.url) == (kept, opened)

    # The outbox's retention marks its finished rows on this database too, and keeps the queued ones.
    store = await Store.open(deployed.url)
    try:
        keeper = Retention(store, dt.timedelta(0))
        now = utc_now()
        finished = await query(deployed.url, "SELECT count(*) FROM outbox WHERE state <> 'queued'")
        assert await keeper.prune(now) == Pruned(marked=finished[0][0], deleted=0)
        assert await keeper.prune(now + dt.timedelta(seconds=1)) == Pruned(marked=0, deleted=finished[0][0])
    finally:
        await store.close()
    assert await query(deployed.url, "SELECT count(*) FROM outbox WHERE state <> 'queued'") == [(0,)]

    # The node lists from the summaries what release 0.1.0 listed from the contents.
    run_here(deployed)
    cfg = deployed.config
    node = await start_node(cfg)
    try:
        for user, inbox in EXPECTED["inbox"].items():
            assert await api(cfg, "GET", "/api/v1/bulletins?limit=500", user=user) == inbox
    finally:
        await node.stop()

    # Down to 0002: exactly 0003's columns, tables, indexes and triggers go; up again.
    await at_revision(deployed.url, "0002")
    assert await structure(deployed.url) == shape
    await query(
        deployed.url,
        "INSERT INTO bulletins (id, channel, author, seq, state_pos, tlp, created, stored_at, envelope, recipients) "
        "VALUES (:id, :channel, 'zz-test', 2, 0, 'CLEAR', 'x', 'x', :env, ' ')",
        id="e" * 64,
        channel=channel,
        env=b"{}",
    )  # no trigger left to count it (nor a table to count it in)
    again = await schema.upgrade(deployed.url)
    assert again.applied[0] == "0003"
    kept_again, _ = await counts(deployed.url)
    assert kept_again[channel] == kept[channel] + 1
    # A row whose content is missing or not JSON keeps a NULL summary (the readers fall back to content).
    assert await query(deployed.url, "SELECT summary FROM bulletins WHERE id = :id", id="e" * 64) == [(None,)]
