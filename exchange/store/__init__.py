"""The node's database: SQLAlchemy Core tables, a group-commit writer and a versioned schema.

- `tables`: the tables (today's schema, the head revision);
- `writer`: `Store`, the connection and the group-commit writer that indexes audit entries;
- `schema`: the schema revision a database is at, and `upgrade` (Alembic, see `migrations/`).

Every name importable from `exchange.store` before it became a package still is.
"""

from __future__ import annotations

from exchange.errors import ExchangeError
from exchange.store.bulk import among, insert_rows
from exchange.store.tables import (
    OUTBOX_FINISHED,
    OUTBOX_QUEUED,
    audit_checkpoints,
    audit_cosignatures,
    audit_log,
    audit_split_views,
    audit_witnessed,
    bulletins,
    channel_events,
    console_sessions,
    cursors,
    metadata,
    no_onward,
    outbox,
    receipt_batches,
    receipts,
    signin_failures,
    user_channels,
    user_passwords,
    user_reads,
    users,
)
from exchange.store.writer import AuditBuffer, Job, Store, T, is_unique_violation

__all__ = [
    "OUTBOX_FINISHED",
    "OUTBOX_QUEUED",
    "AuditBuffer",
    "ExchangeError",
    "Job",
    "Store",
    "T",
    "among",
    "audit_checkpoints",
    "audit_cosignatures",
    "audit_log",
    "audit_split_views",
    "audit_witnessed",
    "bulletins",
    "channel_events",
    "console_sessions",
    "cursors",
    "insert_rows",
    "is_unique_violation",
    "metadata",
    "no_onward",
    "outbox",
    "receipt_batches",
    "receipts",
    "signin_failures",
    "user_channels",
    "user_passwords",
    "user_reads",
    "users",
]
