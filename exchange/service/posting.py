"""Posting: encrypt a bulletin for exactly the readers of a channel's current state, sign, store,
and queue it for the other readers, all in one transaction.

A post or forward may carry an Idempotency-Key: the key is stored in the post's own transaction,
and a retry with the same key (same user, same request, within KEY_RETENTION) gets the first
answer again and creates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp, utc_now
from exchange.crypto import EncryptionKey, NodeKeys, canonical_json, sha256
from exchange.errors import Forbidden, IdempotencyKeyReused, InvalidInput
from exchange.model import Bulletin, BulletinId, ChannelId, NodeId, first_error
from exchange.protocol.indicators import check_indicators
from exchange.protocol.roster import Federation
from exchange.service.access import Access
from exchange.service.cryptopool import EnvelopeCrypto, Sealed, SealJob, seal_one
from exchange.service.envelopes_v2 import seal_v2
from exchange.service.epochs import EpochBook
from exchange.service.inbox import Inbox
from exchange.service.outbox import EnvelopeRef, Outbox, queued_row
from exchange.service.users import User
from exchange.service.views import Posted
from exchange.store import AuditBuffer, Store, bulletins, outbox, user_reads
from exchange.store.tables import idempotency_keys

NO_ONWARD_TLP = ("RED", "AMBER+STRICT")

# Idempotency keys: 16 to 128 characters of letters, digits and -._~:+/= (a UUID, a ULID, base64 of
# random bytes), optionally as an RFC 8941 string ("..."), as draft-ietf-httpapi-idempotency-key
# writes it. A key is kept for KEY_RETENTION after its post, then forgotten: reused after that, it
# makes a new post.
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~:+/=-]{16,128}")
KEY_RETENTION = dt.timedelta(hours=24)

# Without crypto worker processes, a post whose text and attachments hold more characters than this
# is canonicalised and encrypted in a worker thread. A small one is sealed inline: a thread hop
# per post costs more than the work (bench/throughput.py, 2 readers, 1,000 posts, load 1.6: 185
# and 249 bulletins/s with every post in a thread, 306 and 332 inline).
OFFLOAD_CHARS = 256 * 1024


def _bulky(bulletin: Bulletin) -> bool:
    return len(bulletin.body) + sum(len(a.data) for a in bulletin.attachments) > OFFLOAD_CHARS


def idempotency_key(raw: str) -> str:
    """The key an Idempotency-Key header carries (bare or as a quoted string), or InvalidInput."""
    key = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidInput(
            "Idempotency-Key must be 16 to 128 characters of letters, digits and -._~:+/= (a UUID will do)"
        )
    return key


@dataclass(frozen=True)
class Keyed:
    """A request made with an Idempotency-Key: whose, which key, and the digest of what it asked."""

    user: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Replayed(Posted):
    """A post made earlier with the same Idempotency-Key, answered again; nothing was created now."""


class Posting:
    """This node as an author."""

    def __init__(
        self,
        me: NodeId,
        store: Store,
        fed: Federation,
        keys: NodeKeys,
        access: Access,
        inbox: Inbox,
        out: Outbox,
        crypto: EnvelopeCrypto | None = None,
        epochs: EpochBook | None = None,
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.keys = keys
        self.access = access
        self.inbox = inbox
        self.outbox = out
        self.crypto = crypto or EnvelopeCrypto(me, keys, fed, 0)
        self.epochs = epochs  # envelope v2 (docs/protocol.md, 15): None, v1 only
        self._seqs: dict[str, int] = {}
        self._seq_lock = asyncio.Lock()
        # (user, key) -> [lock, holders]: requests with the same key run one after the other here,
        # so a retry that arrives while the first is still being posted waits and gets its answer.
        self._keys: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        # Readers' roster encryption keys, made once: the roster does not change while the node runs.
        self._readers: dict[str, EncryptionKey] = {}

    async def _next_seq(self, channel: str) -> int:
        """This node's next sequence number in a channel: kept in memory, loaded once.

        Allocating outside the writer lets the crypto run outside it too. A post whose commit
        fails leaves a hole in the stream; receivers ask the author, who has no such bulletin,
        and go on.
        """
        if channel not in self._seqs:
            async with self._seq_lock:
                if channel not in self._seqs:
                    async with self.store.read() as conn:
                        last = await conn.scalar(
                            sa.select(sa.func.max(bulletins.c.seq)).where(
                                bulletins.c.author == self.me, bulletins.c.channel == channel
                            )
                        )
                    self._seqs[channel] = int(last or 0)
        self._seqs[channel] += 1
        return self._seqs[channel]

    def forget_keys(self) -> None:
        """The roster changed: wrap for the partners' current encryption keys from now on."""
        self._readers.clear()

    async def post(
        self, user: User, channel: str, bulletin: Bulletin, *, seen: bool = False, idempotency_key: str | None = None
    ) -> Posted:
        """Encrypt for exactly the readers of the current state, sign, store, queue for the others.

        `seen`: the author has seen it (composed in the console), so it is not unread for them;
        recorded in the post's own transaction. `idempotency_key`: see `once`.
        """
        check_indicators(bulletin)  # the author's domain rules; receivers check shapes only
        if idempotency_key is None:
            return await self._post(user, channel, bulletin, seen=seen)
        asked = {"op": "post", "channel": channel, "bulletin": bulletin.model_dump(mode="json")}
        return await self._keyed(
            user, idempotency_key, asked, lambda keyed: self._post(user, channel, bulletin, seen=seen, keyed=keyed)
        )

    async def _keyed(
        self, user: User, raw_key: str, asked: dict[str, Any], run: Callable[[Keyed], Awaitable[Posted]]
    ) -> Posted:
        """`run` once per Idempotency-Key: the earlier answer if there is one. The key's lock is
        this process's: another worker of the node (PostgreSQL) may store a request with the same
        key meanwhile, whose row makes this one's insert fail; then that request's answer is this
        one's too (or IdempotencyKeyReused for another request), not an internal error."""
        async with self.once(user, raw_key, asked) as (keyed, earlier):
            if earlier is not None:
                return earlier
            try:
                return await run(keyed)
            except sa.exc.IntegrityError:
                earlier = await self._earlier(keyed)
                if earlier is None:
                    raise
                return earlier

    @contextlib.asynccontextmanager
    async def once(
        self, user: User, raw_key: str, asked: dict[str, Any]
    ) -> AsyncIterator[tuple[Keyed, Replayed | None]]:
        """Hold the user's key while the request runs; yield the earlier answer to it, if any.

        InvalidInput for a malformed key; IdempotencyKeyReused if the key was used, within its
        retention, for a different request (another body, channel, bulletin or operation).
        """
        key = idempotency_key(raw_key)
        keyed = Keyed(user.name, key, sha256(canonical_json(asked)).hex())
        slot = (user.name, key)
        lock, holders = self._keys.setdefault(slot, (asyncio.Lock(), [0]))
        holders[0] += 1
        try:
            async with lock:
                yield keyed, await self._earlier(keyed)
        finally:
            holders[0] -= 1
            if not holders[0]:
                del self._keys[slot]

    async def _earlier(self, keyed: Keyed) -> Replayed | None:
        cutoff = timestamp(utc_now() - KEY_RETENTION)
        async with self.store.read() as conn:
            row = (
                await conn.execute(
                    sa.select(idempotency_keys.c.fingerprint, idempotency_keys.c.result).where(
                        idempotency_keys.c.user == keyed.user,
                        idempotency_keys.c.key == keyed.key,
                        idempotency_keys.c.created >= cutoff,
                    )
                )
            ).first()
        if row is None:
            return None
        if row.fingerprint != keyed.fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for a different request; use a new key for a new request"
            )
        return Replayed(**json.loads(row.result))

    async def _post(
        self, user: User, channel: str, bulletin: Bulletin, *, seen: bool = False, keyed: Keyed | None = None
    ) -> Posted:
        state = self.access.require_postable(user, channel)
        readers = tuple((n, self._encryption_key(n).raw) for n in state.readers)
        # v2 once the channel has an epoch for this state (every reader takes v2, 15.9), else v1.
        epoch = await self.epochs.for_post(state) if self.epochs is not None else None
        seq = await self._next_seq(channel)
        now = timestamp()
        # Several workers share the database (PostgreSQL): the sequence number is the one the writer
        # hands out under the log's lock (`AuditBuffer.take_seq`, read once per group commit), so
        # numbers are gap-free and in commit order across workers. A small post is sealed there,
        # once, with it; a bulky one here with the number expected, and again there if it was taken.
        stream = (self.me, channel) if self.store.shared else None
        sealed: Sealed | None = None
        if stream is not None and not _bulky(bulletin):
            pass
        elif epoch is not None:  # one HKDF and one AES-GCM pass, whatever the number of readers
            sealed = seal_v2(bulletin, state, epoch, self.me, self.keys.signing, seq, now)
        else:
            # Sealed in a crypto worker process, or here; a bulky post (tens of milliseconds at
            # the largest) in a thread, not on the event loop.
            sealed = await self.crypto.seal(SealJob(bulletin, state, readers, seq, now), bulky=_bulky(bulletin))
        sealed_seq = seq if sealed is not None else 0  # the number the row below was sealed with
        bid, row = (sealed.bid, sealed.row) if sealed is not None else ("", {})
        dests: list[str] = [n for n in state.readers if n != self.me]
        recipients = [NodeId(d) for d in dests]
        posted = Posted(id=BulletinId(bid), channel=ChannelId(channel), seq=seq, recipients=recipients, created=now)

        def rows(audit: AuditBuffer) -> Posted:
            # Rows, not statements: the writer sends every post's rows of a group commit together.
            nonlocal seq, sealed_seq, bid, row, posted
            if stream is not None:
                seq = audit.take_seq(*stream)
                self._seqs[channel] = max(seq, self._seqs[channel])
                if seq != sealed_seq:
                    resealed = (
                        seal_v2(bulletin, state, epoch, self.me, self.keys.signing, seq, now)
                        if epoch is not None
                        else seal_one(self.crypto.ctx, SealJob(bulletin, state, readers, seq, now))
                    )
                    sealed_seq, bid, row = seq, resealed.bid, resealed.row
                    posted = replace(posted, id=BulletinId(bid), seq=seq)
            audit.insert(bulletins, [row])
            if seen:
                audit.insert(user_reads, [{"user": user.name, "bulletin_id": bid, "at": now}])
            if dests:
                audit.insert(outbox, [queued_row(d, "envelope", EnvelopeRef(bid)) for d in dests])
            if keyed is not None:
                audit.insert(
                    idempotency_keys,
                    [
                        {
                            "user": keyed.user,
                            "key": keyed.key,
                            "fingerprint": keyed.fingerprint,
                            "bulletin_id": bid,
                            "result": json.dumps(posted.as_json()),
                            "created": now,
                        }
                    ],
                )
            audit.add(
                ev.BulletinPosted(
                    event=ev.BULLETIN_POSTED,
                    at=now,
                    bulletin=bid,
                    channel=channel,
                    author=self.me,
                    seq=seq,
                    state=state.pos,
                    user=user.name,
                    recipients=list(state.readers),
                    tlp=bulletin.handling.tlp,
                )
            )
            return posted

        if keyed is None:
            posted = await self.store.insert(rows, stream=stream)
        else:

            async def job(conn: AsyncConnection, audit: AuditBuffer) -> Posted:
                # Expired keys go here, a few at a time, so the table holds one retention's worth.
                cutoff = timestamp(utc_now() - KEY_RETENTION)
                await conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.created < cutoff))
                return rows(audit)

            posted = await self.store.write(job, stream=stream)
        self.outbox.wake(dests)
        return posted

    def _encryption_key(self, node: str) -> EncryptionKey:
        if node not in self._readers:
            self._readers[node] = self.fed.encryption_key(node)
        return self._readers[node]

    async def forward(self, user: User, bid: str, channel: str, *, idempotency_key: str | None = None) -> Posted:
        """Re-post a bulletin to another channel, as this node, referring to the original."""
        if idempotency_key is None:
            return await self._forward(user, bid, channel)
        asked = {"op": "forward", "bulletin": bid, "channel": channel}
        return await self._keyed(
            user, idempotency_key, asked, lambda keyed: self._forward(user, bid, channel, keyed=keyed)
        )

    async def _forward(self, user: User, bid: str, channel: str, *, keyed: Keyed | None = None) -> Posted:
        original = await self.inbox.load(user, bid)
        handling = original.bulletin["handling"]
        if handling["no_onward_sharing"] or handling["tlp"] in NO_ONWARD_TLP:
            marks = f"TLP:{handling['tlp']}" + (" no-onward-sharing" if handling["no_onward_sharing"] else "")
            raise Forbidden(f"handling {marks} forbids forwarding")
        copy = dict(original.bulletin)
        copy["references"] = sorted({*copy["references"], bid})
        try:  # the original's id added may take its references past the most a bulletin holds
            forwarded = Bulletin.model_validate(copy)
        except ValidationError as exc:
            raise InvalidInput(
                f"the bulletin cannot be forwarded: its copy would break a rule: {first_error(exc)}"
            ) from exc
        return await self._post(user, channel, forwarded, keyed=keyed)
