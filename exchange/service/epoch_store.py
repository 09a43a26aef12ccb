"""The epoch tables (docs/protocol.md, 15.13): what a node stores of its channel epochs, and how
the worker processes of one node over one PostgreSQL database agree on them.

Every write transaction of every worker holds the log's lock first (exchange.store.workers), so
a job that reads what is stored of epoch n and then inserts it is alone in doing so: whichever
worker comes first stores epoch n of a channel, with its key, and any later one takes what is
stored instead (`store_epoch`). Each such commit notifies the other workers (`EPOCHS`, with the
channel), which read the channel's rows again (`read_held`); a worker that misses a notification
reads them again before it makes, fetches or looks up an epoch it lacks. (Were two such jobs ever
to run at once, the second insert would meet the unique key; the writer runs each job of a failed
batch again alone, and that run finds the stored record.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.epoch_events import EPOCH_MADE
from exchange.audit.events import AuditEntry
from exchange.clock import timestamp
from exchange.crypto import EpochKey
from exchange.crypto.epoch import UnwrapKey
from exchange.errors import ExchangeError
from exchange.protocol.epoch import (
    check_stored,
    commitment_matches,
    epoch_hash,
    open_epoch,
    parse_epoch,
    parse_grant,
)
from exchange.protocol.epoch_model import EpochRecord, HistoryGrant
from exchange.protocol.roster import Federation
from exchange.store import AuditBuffer, Store, cursors
from exchange.store.tables import channel_epochs, epoch_grants, epoch_keys
from exchange.store.workers import EPOCHS, notify

log = logging.getLogger("exchange.epochs")


@dataclass
class Held:
    """Rows of the epoch tables, as read: records in (channel, n) order, keys, grants in the
    order they were stored with their hashes."""

    records: list[EpochRecord] = field(default_factory=list)
    keys: dict[tuple[str, int], EpochKey] = field(default_factory=dict)
    grants: list[tuple[str, HistoryGrant]] = field(default_factory=list)


async def read_held(conn: AsyncConnection, channel: str | None = None, after: int = -1) -> Held:
    """What is stored of `channel`'s epochs (None: of every channel), records after `after`.
    Records and grants were checked when they came, so they are parsed, not checked again."""
    records = sa.select(channel_epochs.c.record).order_by(channel_epochs.c.channel, channel_epochs.c.n)
    keys = sa.select(epoch_keys)
    grants = sa.select(epoch_grants.c.hash, epoch_grants.c.grant).order_by(epoch_grants.c.id)
    if channel is not None:
        records = records.where(channel_epochs.c.channel == channel, channel_epochs.c.n > after)
        keys = keys.where(epoch_keys.c.channel == channel)
        grants = grants.where(epoch_grants.c.channel == channel)
    held = Held()
    held.records = [parse_epoch(bytes(row.record)) for row in await conn.execute(records)]
    held.keys = {(row.channel, int(row.n)): EpochKey(bytes(row.key)) for row in await conn.execute(keys)}
    held.grants = [(row.hash, parse_grant(bytes(row.grant))) for row in await conn.execute(grants)]
    return held


def checked_key(
    record: EpochRecord,
    key: EpochKey,
    me: str,
    unwrap_key: Callable[[str], UnwrapKey],
    given: EpochKey | None = None,
) -> EpochKey | None:
    """`key` if it is the key `record` commits to. A stored key that is not (its row edited
    outside the node) is never used: this node's key is `given` instead (the key a grant just
    gave, checked against the grant) if that one is, else it is opened again from this node's wrap
    in the record, if it has one (a key taken from a grant has none: that epoch stays unreadable
    here until a grant gives it again)."""
    if commitment_matches(record, key):
        return key
    if given is not None and commitment_matches(record, given):
        again: EpochKey | None = given
    else:
        wrap = record.wrap_for(me)
        try:
            again = open_epoch(record, me, unwrap_key(wrap.kid)) if wrap is not None else None
        except ExchangeError:
            again = None
    log.error(
        "%s: the stored key of epoch %d of %s is not the key its record commits to (the database was"
        " changed outside the node); %s",
        me,
        record.n,
        record.channel,
        "using the key opened again" if again else "the epoch is not readable here",
    )
    return again


def checked_record(record: EpochRecord, prev: EpochRecord | None, me: str, fed: Federation) -> bool:
    """Whether a stored record may be held (`check_stored`); one that may not (its row edited
    outside the node) is logged and never used, nor any later epoch of its channel."""
    try:
        check_stored(record, prev, fed)
    except ExchangeError as exc:
        log.error(
            "%s: the stored record of epoch %d of %s is not one this node took in (the database was changed"
            " outside the node): %s; it and the channel's later epochs are not used",
            me,
            record.n,
            record.channel,
            exc.detail,
        )
        return False
    return True


def made_entry(record: EpochRecord) -> AuditEntry:
    """The audit entry of an epoch this node made as the channel's owner."""
    return {
        "event": EPOCH_MADE,
        "at": timestamp(),
        "channel": record.channel,
        "n": record.n,
        "hash": epoch_hash(record),
        "state": record.state.pos,
        "readers": list(record.readers),
    }


async def store_epoch(
    store: Store, record: EpochRecord, key: EpochKey | None, entry: AuditEntry | None
) -> tuple[EpochRecord, EpochKey | None]:
    """Store `record`, and this node's `key` of it, unless another worker stored epoch n of its
    channel first; return the record and key stored now. `entry` is audited if this call stored
    anything (the record, or a key another worker had not stored)."""
    now = timestamp()

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> tuple[EpochRecord, EpochKey | None]:
        at = (channel_epochs.c.channel == record.channel) & (channel_epochs.c.n == record.n)
        stored = await conn.scalar(sa.select(channel_epochs.c.record).where(at))
        raw_key = await conn.scalar(
            sa.select(epoch_keys.c.key).where(epoch_keys.c.channel == record.channel, epoch_keys.c.n == record.n)
        )
        held = parse_epoch(bytes(stored)) if stored is not None else record
        held_key = EpochKey(bytes(raw_key)) if raw_key is not None else None
        if stored is not None and epoch_hash(held) != epoch_hash(record):
            return held, held_key  # another record n: the caller decides (lost a race, or equivocation)
        if stored is None:
            await conn.execute(
                sa.insert(channel_epochs).values(
                    channel=record.channel,
                    n=record.n,
                    hash=epoch_hash(record),
                    state_pos=record.state.pos,
                    record=record.canonical,
                    stored_at=now,
                )
            )
        if held_key is None and key is not None:
            await conn.execute(
                sa.insert(epoch_keys).values(channel=record.channel, n=record.n, key=key.secret_bytes(), via="wrap")
            )
            held_key = key
        elif stored is not None:
            return held, held_key  # nothing new
        if entry is not None:
            audit.add(entry)
        await notify(conn, EPOCHS, record.channel)
        return held, held_key

    return await store.write(job)


async def store_grant(
    store: Store, grant: HistoryGrant, ghash: str, keys: dict[int, EpochKey], entry: AuditEntry, *, made: bool
) -> tuple[list[tuple[str, HistoryGrant]], dict[int, EpochKey]]:
    """Store a history grant, `made` here by the owner or taken by the grantee with the `keys` it
    opened, unless it is stored already, or (`made`) another worker of the owner granted its
    epochs first. Return the grants stored for its grantee in its channel, and every key stored of
    the epochs it names. `entry` is audited if this call stored the grant."""
    now = timestamp()
    wanted = [e.n for e in grant.epochs]

    async def job(
        conn: AsyncConnection, audit: AuditBuffer
    ) -> tuple[list[tuple[str, HistoryGrant]], dict[int, EpochKey]]:
        rows = await conn.execute(
            sa.select(epoch_grants.c.hash, epoch_grants.c.grant)
            .where(epoch_grants.c.channel == grant.channel, epoch_grants.c.node == grant.node)
            .order_by(epoch_grants.c.id)
        )
        stored = [(row.hash, parse_grant(bytes(row.grant))) for row in rows]
        # Granted for the key this grant is for (another worker's; one for a key since rotated does not count).
        covered = {e.n for _, g in stored if (g.suite, g.kid) == (grant.suite, grant.kid) for e in g.epochs}
        held = {
            int(row.n): EpochKey(bytes(row.key))
            for row in await conn.execute(
                sa.select(epoch_keys.c.n, epoch_keys.c.key).where(
                    epoch_keys.c.channel == grant.channel, epoch_keys.c.n.in_(wanted)
                )
            )
        }
        if any(h == ghash for h, _ in stored) or (made and set(wanted) <= covered):
            return stored, held
        await conn.execute(
            sa.insert(epoch_grants).values(
                channel=grant.channel,
                node=grant.node,
                state_pos=grant.state.pos,
                hash=ghash,
                grant=grant.model_dump_json().encode(),
                stored_at=now,
            )
        )
        new_keys = {n: k for n, k in keys.items() if n not in held}
        if new_keys:
            await conn.execute(
                sa.insert(epoch_keys),
                [
                    {"channel": grant.channel, "n": n, "key": k.secret_bytes(), "via": "grant"}
                    for n, k in new_keys.items()
                ],
            )
            held |= new_keys
            # Catch-up passed these epochs' envelopes by as not ours: pull the channel again from
            # the start (what is held is skipped by id).
            await conn.execute(sa.delete(cursors).where(cursors.c.channel == grant.channel))
        audit.add(entry)
        await notify(conn, EPOCHS, grant.channel)
        return [*stored, (ghash, grant)], held

    return await store.write(job)
