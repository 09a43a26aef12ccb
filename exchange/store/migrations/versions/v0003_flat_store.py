"""Queries whose cost does not grow with the store: stored listing summaries and search text, an
index of the audit log by bulletin, maintained unread counts and a pruning mark on the outbox.

- bulletins.summary: canonical JSON of the content without its body and attachments' data (what
  listings read instead of the whole content), and bulletins.search_text: its title, text, kind
  and indicators case-folded (what searches match), both filled here from each row's `content`;
- audit_log.bulletin (indexed with idx): the bulletin an entry names, filled here from its entry;
- channel_counts and user_channel_reads, kept by triggers on bulletins and user_reads, filled here
  by counting what is stored;
- outbox.done_at (indexed with state): when the retention loop found a row finished.

The backfills read the rows in batches of bounded size (by count, and for bulletins by the length
of their content), so a large database is never held in memory. No existing value changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from exchange.crypto import canonical_json

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

ROWS = 500  # rows per batch of the backfill
CHARACTERS = 32 * 1024 * 1024  # content characters per batch of the bulletins' backfill (one row at least)

_bulletins = sa.table("bulletins", sa.column("n"), sa.column("summary"), sa.column("search_text"))
_audit_log = sa.table("audit_log", sa.column("idx"), sa.column("entry"), sa.column("bulletin"))

# The counts the unread counts are made of, kept by the database with each insert and delete.
SQLITE_TRIGGERS = (
    """CREATE TRIGGER tr_bulletins_counted AFTER INSERT ON bulletins BEGIN
    INSERT INTO channel_counts (channel, bulletins) VALUES (NEW.channel, 1)
    ON CONFLICT (channel) DO UPDATE SET bulletins = bulletins + 1;
END""",
    """CREATE TRIGGER tr_bulletins_uncounted AFTER DELETE ON bulletins BEGIN
    UPDATE channel_counts SET bulletins = bulletins - 1 WHERE channel = OLD.channel;
END""",
    """CREATE TRIGGER tr_user_reads_counted AFTER INSERT ON user_reads BEGIN
    INSERT INTO user_channel_reads ("user", channel, opened)
    SELECT NEW."user", channel, 1 FROM bulletins WHERE id = NEW.bulletin_id
    ON CONFLICT ("user", channel) DO UPDATE SET opened = opened + 1;
END""",
    """CREATE TRIGGER tr_user_reads_uncounted AFTER DELETE ON user_reads BEGIN
    UPDATE user_channel_reads SET opened = opened - 1
    WHERE "user" = OLD."user" AND channel = (SELECT channel FROM bulletins WHERE id = OLD.bulletin_id);
END""",
)

# PostgreSQL: one statement-level trigger per insert or delete statement, over its transition table.
POSTGRES_TRIGGERS = (
    """CREATE FUNCTION exchange_bulletins_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO channel_counts (channel, bulletins)
    SELECT channel, count(*) FROM added GROUP BY channel
    ON CONFLICT (channel) DO UPDATE SET bulletins = channel_counts.bulletins + EXCLUDED.bulletins;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER tr_bulletins_counted AFTER INSERT ON bulletins
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION exchange_bulletins_counted()""",
    """CREATE FUNCTION exchange_bulletins_uncounted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE channel_counts c SET bulletins = c.bulletins - d.n
    FROM (SELECT channel, count(*) AS n FROM removed GROUP BY channel) d WHERE c.channel = d.channel;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER tr_bulletins_uncounted AFTER DELETE ON bulletins
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION exchange_bulletins_uncounted()""",
    """CREATE FUNCTION exchange_user_reads_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_channel_reads ("user", channel, opened)
    SELECT a."user", b.channel, count(*) FROM added a JOIN bulletins b ON b.id = a.bulletin_id
    GROUP BY a."user", b.channel
    ON CONFLICT ("user", channel) DO UPDATE SET opened = user_channel_reads.opened + EXCLUDED.opened;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER tr_user_reads_counted AFTER INSERT ON user_reads
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION exchange_user_reads_counted()""",
    """CREATE FUNCTION exchange_user_reads_uncounted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_channel_reads u SET opened = u.opened - d.n
    FROM (SELECT r."user", b.channel, count(*) AS n FROM removed r JOIN bulletins b ON b.id = r.bulletin_id
          GROUP BY r."user", b.channel) d
    WHERE u."user" = d."user" AND u.channel = d.channel;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER tr_user_reads_uncounted AFTER DELETE ON user_reads
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION exchange_user_reads_uncounted()""",
)

TRIGGERS = ("tr_bulletins_counted", "tr_bulletins_uncounted", "tr_user_reads_counted", "tr_user_reads_uncounted")
TRIGGER_TABLES = {
    "tr_bulletins_counted": "bulletins",
    "tr_bulletins_uncounted": "bulletins",
    "tr_user_reads_counted": "user_reads",
    "tr_user_reads_uncounted": "user_reads",
}
POSTGRES_FUNCTIONS = (
    "exchange_bulletins_counted",
    "exchange_bulletins_uncounted",
    "exchange_user_reads_counted",
    "exchange_user_reads_uncounted",
)


# Revision 0003's summary and search text: copies, frozen with this revision, of
# exchange.service.records.summary_of and search_text_of (the store may not import the service
# layer); tests/store/test_v0003_flat_store.py checks that they agree.


def summary_of(content: dict[str, Any]) -> dict[str, Any]:
    """The content without its body and its attachments' data (name, type and size kept)."""
    out = {k: v for k, v in content.items() if k not in ("body", "attachments")}
    out["attachments"] = [
        {"name": a["name"], "media_type": a["media_type"], "size": len(a["data"]) * 3 // 4}
        for a in content.get("attachments", [])
    ]
    return out


def search_text_of(content: dict[str, Any]) -> str:
    """Title, text, kind and every indicator, case-folded, one per line."""
    indicators = content.get("indicators", {})
    parts = [content.get("title", ""), content.get("body", ""), content.get("kind", "")]
    parts += [str(v) for key in sorted(indicators) for v in indicators[key]]
    return "\n".join(parts).casefold()


def _derived(content: str | None) -> tuple[str, str] | None:
    """The summary and search text of a stored content, or None where it is missing or not a
    bulletin's JSON (such a row is left to the readers' fallback)."""
    if content is None:
        return None
    try:
        parsed = json.loads(content)
        return canonical_json(summary_of(parsed)).decode(), search_text_of(parsed)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _named_bulletin(entry: bytes | memoryview) -> str | None:
    """The entry's "bulletin", else a "ref" that is a bulletin id (as AuditBuffer.add fills it)."""
    try:
        parsed = json.loads(bytes(entry))
        named, ref = parsed.get("bulletin"), parsed.get("ref")
    except (ValueError, AttributeError):
        return None
    if not isinstance(named, str):
        named = ref if isinstance(ref, str) and len(ref) == 64 and set(ref) <= set("0123456789abcdef") else None
    return named if isinstance(named, str) and len(named) <= 64 else None


def _bulletin_batches(bind: sa.Connection) -> Iterator[list[tuple[int, str | None]]]:
    """(n, content) of every bulletin in storage order, a bounded batch at a time."""
    last = 0
    while True:
        sizes = bind.execute(
            sa.text("SELECT n, coalesce(length(content), 0) FROM bulletins WHERE n > :last ORDER BY n LIMIT :rows"),
            {"last": last, "rows": ROWS},
        ).all()
        if not sizes:
            return
        upto, total = sizes[0][0], 0
        for n, size in sizes:
            if total and total + size > CHARACTERS:
                break
            upto, total = n, total + size
        rows = bind.execute(
            sa.text("SELECT n, content FROM bulletins WHERE n > :last AND n <= :upto ORDER BY n"),
            {"last": last, "upto": upto},
        ).all()
        yield [(int(r[0]), r[1]) for r in rows]
        last = upto


def _backfill_summaries(bind: sa.Connection) -> None:
    update = (
        sa.update(_bulletins)
        .where(_bulletins.c.n == sa.bindparam("b_n"))
        .values(summary=sa.bindparam("b_summary"), search_text=sa.bindparam("b_search"))
    )
    for batch in _bulletin_batches(bind):
        derived = [(n, _derived(content)) for n, content in batch]
        done = [{"b_n": n, "b_summary": d[0], "b_search": d[1]} for n, d in derived if d is not None]
        if done:
            bind.execute(update, done)


def _backfill_audit_bulletins(bind: sa.Connection) -> None:
    update = (
        sa.update(_audit_log)
        .where(_audit_log.c.idx == sa.bindparam("b_idx"))
        .values(bulletin=sa.bindparam("b_bulletin"))
    )
    last = -1
    while True:
        rows = bind.execute(
            sa.text("SELECT idx, entry FROM audit_log WHERE idx > :last ORDER BY idx LIMIT :rows"),
            {"last": last, "rows": ROWS * 10},
        ).all()
        if not rows:
            return
        done = [{"b_idx": int(r[0]), "b_bulletin": _named_bulletin(r[1])} for r in rows]
        done = [d for d in done if d["b_bulletin"] is not None]
        if done:
            bind.execute(update, done)
        last = int(rows[-1][0])


def upgrade() -> None:
    bind = op.get_bind()
    # On SQLite the two columns go before the envelope, so reading them never walks the overflow
    # pages of a large envelope or content (a column after a 2.7 MB one costs milliseconds a row):
    # the table is rebuilt once. PostgreSQL keeps large values out of line, so it only adds them.
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table("bulletins", recreate="always") as batch:
            batch.add_column(sa.Column("summary", sa.Text, nullable=True), insert_before="envelope")
            batch.add_column(sa.Column("search_text", sa.Text, nullable=True), insert_before="envelope")
    else:
        op.add_column("bulletins", sa.Column("summary", sa.Text, nullable=True))
        op.add_column("bulletins", sa.Column("search_text", sa.Text, nullable=True))
    op.add_column("audit_log", sa.Column("bulletin", sa.String(64), nullable=True))
    op.add_column("outbox", sa.Column("done_at", sa.String(32), nullable=True))
    op.create_index("ix_outbox_done", "outbox", ["state", "done_at"])
    op.create_table(
        "channel_counts",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("bulletins", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "user_channel_reads",
        sa.Column("user", sa.String(64), primary_key=True),
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("opened", sa.BigInteger, nullable=False),
    )
    _backfill_summaries(bind)
    _backfill_audit_bulletins(bind)
    # After the backfill, so the index is built once rather than updated row by row.
    op.create_index("ix_audit_log_bulletin", "audit_log", ["bulletin", "idx"])
    bind.execute(
        sa.text(
            "INSERT INTO channel_counts (channel, bulletins) SELECT channel, count(*) FROM bulletins GROUP BY channel"
        )
    )
    bind.execute(
        sa.text(
            'INSERT INTO user_channel_reads ("user", channel, opened) '
            'SELECT r."user", b.channel, count(*) FROM user_reads r JOIN bulletins b ON b.id = r.bulletin_id '
            'GROUP BY r."user", b.channel'
        )
    )
    for statement in POSTGRES_TRIGGERS if bind.dialect.name == "postgresql" else SQLITE_TRIGGERS:
        bind.execute(sa.text(statement))


def downgrade() -> None:
    """Drop what 0003 added: summaries and search text, the audit log's bulletin column, the counts,
    the outbox's mark."""
    bind = op.get_bind()
    for trigger in TRIGGERS:
        if bind.dialect.name == "postgresql":
            bind.execute(sa.text(f"DROP TRIGGER {trigger} ON {TRIGGER_TABLES[trigger]}"))
        else:
            bind.execute(sa.text(f"DROP TRIGGER {trigger}"))
    if bind.dialect.name == "postgresql":
        for function in POSTGRES_FUNCTIONS:
            bind.execute(sa.text(f"DROP FUNCTION {function}()"))
    op.drop_table("user_channel_reads")
    op.drop_table("channel_counts")
    op.drop_index("ix_outbox_done", table_name="outbox")
    op.drop_index("ix_audit_log_bulletin", table_name="audit_log")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("done_at")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("bulletin")
    with op.batch_alter_table("bulletins") as batch:
        batch.drop_column("search_text")
        batch.drop_column("summary")
