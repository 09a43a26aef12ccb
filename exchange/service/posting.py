"""Posting: encrypt a bulletin for exactly the readers of a channel's current state, sign, store,
and queue it for the other readers, all in one transaction."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.crypto import NodeKeys
from exchange.errors import Forbidden
from exchange.model import Bulletin, BulletinId, ChannelId, NodeId
from exchange.protocol.envelope import build_envelope, bulletin_id
from exchange.protocol.roster import Federation
from exchange.service.access import Access
from exchange.service.inbox import Inbox
from exchange.service.outbox import EnvelopeRef, Outbox, queued_row
from exchange.service.records import bulletin_row
from exchange.service.users import User
from exchange.service.views import Posted
from exchange.store import AuditBuffer, Store, bulletins, outbox, user_reads

NO_ONWARD_TLP = ("RED", "AMBER+STRICT")


class Posting:
    """This node as an author."""

    def __init__(
        self, me: NodeId, store: Store, fed: Federation, keys: NodeKeys, access: Access, inbox: Inbox, out: Outbox
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.keys = keys
        self.access = access
        self.inbox = inbox
        self.outbox = out
        self._seqs: dict[str, int] = {}
        self._seq_lock = asyncio.Lock()

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

    async def post(self, user: User, channel: str, bulletin: Bulletin, *, seen: bool = False) -> Posted:
        """Encrypt for exactly the readers of the current state, sign, store, queue for the others.

        `seen`: the author has seen it (composed in the console), so it is not unread for them;
        recorded in the post's own transaction.
        """
        state = self.access.require_postable(user, channel)
        readers = [(n, self.fed.encryption_key(n)) for n in state.readers]
        seq = await self._next_seq(channel)
        now = timestamp()
        env = build_envelope(
            bulletin, state=state, author=self.me, key=self.keys.signing, seq=seq, readers=readers, created=now
        )
        bid = bulletin_id(env.header)
        dests: list[str] = [n for n in state.readers if n != self.me]
        row = bulletin_row(env, bid, bulletin, now)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.insert(bulletins).values(**row))
            if seen:
                await conn.execute(sa.insert(user_reads).values(user=user.name, bulletin_id=bid, at=now))
            if dests:
                await conn.execute(sa.insert(outbox), [queued_row(d, "envelope", EnvelopeRef(bid)) for d in dests])
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

        await self.store.write(job)
        self.outbox.wake(dests)
        recipients = [NodeId(d) for d in dests]
        return Posted(id=BulletinId(bid), channel=ChannelId(channel), seq=seq, recipients=recipients, created=now)

    async def forward(self, user: User, bid: str, channel: str) -> Posted:
        """Re-post a bulletin to another channel, as this node, referring to the original."""
        original = await self.inbox.load(user, bid)
        handling = original.bulletin["handling"]
        if handling["no_onward_sharing"] or handling["tlp"] in NO_ONWARD_TLP:
            marks = f"TLP:{handling['tlp']}" + (" no-onward-sharing" if handling["no_onward_sharing"] else "")
            raise Forbidden(f"handling {marks} forbids forwarding")
        copy = dict(original.bulletin)
        copy["references"] = sorted({*copy["references"], bid})
        return await self.post(user, channel, Bulletin.model_validate(copy))
