"""The node's tables (SQLAlchemy Core): what the store holds today, at the head revision.

A change here needs a new revision in `exchange/store/migrations/versions/`; the tests compare
the schema the migrations build with this metadata, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

bulletins = sa.Table(
    "bulletins",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("author", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state_pos", sa.Integer, nullable=False),
    sa.Column("tlp", sa.String(16), nullable=False),
    sa.Column("created", sa.String(32), nullable=False),
    sa.Column("stored_at", sa.String(32), nullable=False),
    # what listings show and what searches match (exchange.service.records): the content without its
    # body and attachments' data (canonical JSON), and its words case-folded; NULL where 0003 found
    # no readable content. Before the envelope: on SQLite a column after a large value is read by
    # walking that value's overflow pages.
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("search_text", sa.Text, nullable=True),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    # " a b c ": the recipient node ids, so catch-up pages are filtered in SQL
    sa.Column("recipients", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=True),
    # 1, 2, 3, … per channel, in the order stored (revision 0012; set by `insert_rows`, else by the
    # database's trigger): catch-up pages are numbered with it, so that a page's numbers count one
    # channel, not every channel this node holds (docs/protocol.md 11.6)
    sa.Column("channel_pos", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("author", "channel", "seq", name="uq_bulletin_stream"),
    sa.Index("ix_bulletins_channel", "channel", "n"),
    sa.Index("ix_bulletins_channel_pos", "channel", "channel_pos", unique=True),
)

# The bulletins whose author marked them no-onward-sharing (revision 0016): kept by a trigger on
# bulletins from the stored envelope, so that what leaves the node finds the mark by a seek
# (exchange.service.sharing) rather than by reading each envelope.
no_onward = sa.Table("no_onward", metadata, sa.Column("bulletin_id", sa.String(64), primary_key=True))

# How many bulletins each channel holds, and how many of them each user has opened: kept by
# triggers on bulletins and user_reads (revision 0003), so unread counts cost one row per channel
# whatever the store holds.
channel_counts = sa.Table(
    "channel_counts",
    metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("bulletins", sa.BigInteger, nullable=False),
)

user_channel_reads = sa.Table(
    "user_channel_reads",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("opened", sa.BigInteger, nullable=False),
)

receipts = sa.Table(
    "receipts",
    metadata,
    sa.Column("bulletin_id", sa.String(64), primary_key=True),
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
    # the signed receipt as JCS text; empty for a receipt kept as a leaf of a batch below
    sa.Column("receipt", sa.Text, nullable=False),
    # a partner's receipt taken in the batch form (docs/protocol.md 10.4): its batch and leaf index,
    # from which its text is made when it is shown (exchange.service.held_receipts)
    sa.Column("batch", sa.Integer, nullable=True),
    sa.Column("idx", sa.Integer, nullable=True),
)

# A partner's signed receipt statement, kept once for the receipts of its batch (above).
receipt_batches = sa.Table(
    "receipt_batches",
    metadata,
    # Given by the one INSERT (exchange.service.outbox_sql.kept_batches: one past the highest, under
    # the write lock), never drawn from PostgreSQL's sequence, which therefore does not advance.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("statement", sa.Text, nullable=False),  # JCS of the statement (10.2)
    sa.Column("signature", sa.String(128), nullable=False),
    sa.Column("bulletins", sa.Text, nullable=False),  # the bulletin ids in leaf order, joined by ","
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dest", sa.String(64), nullable=False),
    # what to send: a bulletin's envelope (ref = bulletin id) or a channel event (ref = channel:pos)
    sa.Column("kind", sa.String(16), nullable=False, default="envelope"),
    sa.Column("ref", sa.String(140), nullable=False),
    # queued until the destination's signed receipt is stored; rejected if it refused it (4xx)
    sa.Column("state", sa.String(16), nullable=False, default="queued"),
    sa.Column("detail", sa.Text, nullable=True),
    # set at the first attempt to send the item, when an envelope's send is audited (retries are not)
    sa.Column("sent_at", sa.String(32), nullable=True),
    # when the retention loop (exchange.service.retention) first found the row delivered, rejected
    # or cancelled; the row is deleted once that is older than the outbox retention
    sa.Column("done_at", sa.String(32), nullable=True),
    # Led by the item (revision 0015): a post's rows, one per reader, all name its bulletin and go
    # side by side in the key, not in as many places as it has readers.
    sa.UniqueConstraint("ref", "dest", "kind", name="uq_outbox_item"),
)
# A row is queued until it finishes (delivered, rejected or cancelled), never back. Each index
# below holds the rows of one side (revision 0013): an item queued enters one index besides the
# key and the unique one, and one that finishes moves from the first to the second. A query that
# should use one names its term as written, a literal: PostgreSQL's generic plans (a statement
# prepared and run often) prove the index's term from the statement's text, not from a bound value.
OUTBOX_QUEUED = outbox.c.state == sa.literal_column("'queued'")
OUTBOX_FINISHED = outbox.c.state != sa.literal_column("'queued'")
# The heads of the queues (exchange.service.outbox_sql.queue_heads) and their lengths.
sa.Index("ix_outbox_queued", outbox.c.dest, outbox.c.n, sqlite_where=OUTBOX_QUEUED, postgresql_where=OUTBOX_QUEUED)
# The retention's passes: finished rows not yet marked (NULL), then those marked before a cutoff.
sa.Index("ix_outbox_finished", outbox.c.done_at, sqlite_where=OUTBOX_FINISHED, postgresql_where=OUTBOX_FINISHED)

# Which worker process sends to a destination, until when (exchange.store.workers); PostgreSQL only.
outbox_leases = sa.Table(
    "outbox_leases",
    metadata,
    sa.Column("dest", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
)

channel_events = sa.Table(
    "channel_events",
    metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("pos", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("event", sa.Text, nullable=False),
)

user_channels = sa.Table(
    "user_channels",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
)

cursors = sa.Table(
    "cursors",
    metadata,
    # how far this node has pulled a channel from a partner, in that partner's storage order
    sa.Column("peer", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("cursor", sa.Integer, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.String(32), nullable=False),
    # when an administrator disabled the user (`exchange users disable`); NULL: it may sign in
    sa.Column("disabled_at", sa.String(32), nullable=True),
)

# exchange.web, the console: argon2 password hashes (a table of their own), server-side sessions
# (only the SHA-256 of the cookie is kept), sign-in failures for rate limiting, and which
# bulletins each user has opened.
user_passwords = sa.Table(
    "user_passwords",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("hash", sa.String(256), nullable=False),
    sa.Column("set_at", sa.String(32), nullable=False),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(64), nullable=False, index=True),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("created", sa.String(32), nullable=False),
    sa.Column("expires", sa.String(32), nullable=False),
    sa.Column("last_seen", sa.String(32), nullable=False),
)

signin_failures = sa.Table(
    "signin_failures",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Index("ix_signin_failures_user", "user", "at"),
    sa.Index("ix_signin_failures_address", "address", "at"),
    sqlite_autoincrement=True,  # revision 0009, as for webhooks
)

# exchange.service.posting: the Idempotency-Key of each post or forward made with one, stored in the
# post's own transaction (so a committed post always has its key) and kept for a retention period;
# result is the JSON answered the first time, which a retry with the same key gets again.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),  # SHA-256 of what was asked
    sa.Column("bulletin_id", sa.String(64), nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("created", sa.String(32), nullable=False),
    sa.Index("ix_idempotency_keys_created", "created"),
)

user_reads = sa.Table(
    "user_reads",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("bulletin_id", sa.String(64), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary, nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
    # the bulletin the entry names (its "bulletin" field), so a trace seeks instead of reading the log
    sa.Column("bulletin", sa.String(64), nullable=True),
    sa.Index("ix_audit_log_bulletin", "bulletin", "idx"),
)

# exchange.audit: this node's signed checkpoints (note = C2SP signed note with our signature only;
# frontier = the compact range at `size`, so a restart resumes without re-reading the log),
# the witnesses' cosignature lines, and what this node has witnessed of its partners' logs.
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("frontier", sa.LargeBinary, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_cosignatures = sa.Table(
    "audit_cosignatures",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("witness", sa.String(64), primary_key=True),
    sa.Column("line", sa.Text, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_witnessed = sa.Table(
    "audit_witnessed",
    metadata,
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("root", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_split_views = sa.Table(
    "audit_split_views",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("seen", sa.Text, nullable=False),  # the checkpoint this node had witnessed
    sa.Column("shown", sa.Text, nullable=False),  # the inconsistent one the log showed later
    sa.Column("shown_hash", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.UniqueConstraint("node", "shown_hash", name="uq_split_view"),
)

# exchange.service.audit.tlog_witnessing: the latest checkpoint of each foreign C2SP log this node
# co-signed as a tlog-witness (docs/audit.md, section 4); updated by compare-and-swap on size and
# root, so two concurrent requests cannot both advance it (revision 0008).
tlog_witnessed = sa.Table(
    "tlog_witnessed",
    metadata,
    sa.Column("origin", sa.String(255), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("root", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)

# exchange.service.federation: every roster v2 version this node accepted (docs/protocol.md, 6a), as
# the canonical JSON of the signed roster; the highest version is the one the node holds, and a node
# never goes back below it, across restarts too. Rows are only added (revision 0004).
roster_versions = sa.Table(
    "roster_versions",
    metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),  # SHA-256 of JCS(roster), hex
    sa.Column("signed", sa.LargeBinary, nullable=False),
    sa.Column("installed_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("hash", name="uq_roster_versions_hash"),
)

# Roster versions this node found signed twice by the authority (revision 0014; docs/protocol.md
# 6a.11): for a version number, the first other version seen with it, as signed, beside the hash
# this node holds for it. Written by exchange.service.roster_forks, never changed after.
roster_forks = sa.Table(
    "roster_forks",
    metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("held_hash", sa.String(64), nullable=False),
    sa.Column("other_hash", sa.String(64), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),  # who offered it: peer:<id>, offer:<address>, import
    sa.Column("seen_at", sa.String(32), nullable=False),
    sa.Column("other", sa.LargeBinary, nullable=False),  # the other version as signed (JCS): the evidence
)

# exchange.service.webhooks: per channel, a URL each new bulletin's metadata is POSTed to, signed
# with the webhook's secret (HMAC-SHA256), from `cursor` (the last bulletins.n delivered), which
# moves only when the receiver answered 2xx (revision 0005). On SQLite, AUTOINCREMENT (revision 0009):
# without it a removed webhook's id went to the next one registered, and the audit log names webhooks
# by id; PostgreSQL's serial ids are never given twice.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(64), nullable=False),
    sa.Column("cursor", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_try_at", sa.String(32), nullable=True),
    sa.Column("last_error", sa.String(300), nullable=True),
    sa.Column("delivered", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_webhooks_channel", "channel"),
    sqlite_autoincrement=True,
)

# exchange.service.epochs: envelope v2 (docs/protocol.md, 15), revision 0006. Epoch records and
# history grants as received (JCS), served to members that missed them; the epoch keys this node
# opened (via "wrap": its own wrap, or "grant"), kept like `bulletins.content`, so that stored v2
# bulletins stay readable after its own encryption key changes; each partner's signed announcement
# that it takes v2 envelopes (15.12).
channel_epochs = sa.Table(
    "channel_epochs",
    metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("n", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("state_pos", sa.Integer, nullable=False),
    sa.Column("record", sa.LargeBinary, nullable=False),
    sa.Column("stored_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("hash", name="uq_channel_epochs_hash"),
)

epoch_grants = sa.Table(
    "epoch_grants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("state_pos", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("grant", sa.LargeBinary, nullable=False),
    sa.Column("stored_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("hash", name="uq_epoch_grants_hash"),
    sa.Index("ix_epoch_grants_node", "channel", "node"),
    sqlite_autoincrement=True,  # revision 0009, as for webhooks
)

epoch_keys = sa.Table(
    "epoch_keys",
    metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("n", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.LargeBinary, nullable=False),
    sa.Column("via", sa.String(8), nullable=False),
)

epoch_support = sa.Table(
    "epoch_support",
    metadata,
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("announcement", sa.LargeBinary, nullable=False),
    sa.Column("fetched_at", sa.String(32), nullable=False),
)
