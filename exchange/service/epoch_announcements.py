"""Which partners take envelope v2 and which key each reader's wrap is for (docs/protocol.md,
15.4 and 15.12): the signed announcements a node fetches, keeps and relays, and its own.

The base of `exchange.service.epochs.EpochBook`: the one place that says which key a wrap is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp
from exchange.crypto import NodeKeys, b64d
from exchange.crypto.epoch import HybridDecryptionKey, HybridEncryptionKey, UnwrapKey, WrapKey
from exchange.errors import EpochInvalid, ExchangeError, PeerError, PeerRefused, StateUnavailable
from exchange.model import NodeId
from exchange.protocol.epoch import WrapKeyId
from exchange.protocol.epoch_model import EpochRecord
from exchange.protocol.epoch_support import EpochSupport, make_support, parse_support, verify_support, wrap_key_id
from exchange.protocol.roster import Federation
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store
from exchange.store.tables import epoch_support

log = logging.getLogger("exchange.epochs")

SUPPORT_PATH = "/fed/v1/epochs/support"
UNSUPPORTED_RECHECK = 300.0  # seconds before asking again a node that announced no v2 support
UNREACHABLE_RECHECK = 30.0  # seconds before an author asks again a node whose ask timed out
SLOW_ASK = 1.0  # seconds: a failed ask that took longer is a timeout, not a refused connection
SUPPORT_REFRESH = 3600.0  # seconds after which the owner asks a node for its announcement again
ASK_AT_ONCE = 16  # announcements asked for at the same time (wrap_key_ids)
MEMO_SIZE = 64  # epochs' reader lists whose wrap keys a receiver keeps (wrap_key_ids)

# Announcements relayed with pages of epoch records while a pull checks them (`relayed_for`): seen
# by that pull's checks (its task and those it starts) as if held, and kept at its end only for the
# readers of the records it took (`keep_relayed`), so that a page refused leaves nothing of its own.
_OFFERED: contextvars.ContextVar[Mapping[str, EpochSupport]] = contextvars.ContextVar(
    "offered", default=MappingProxyType({})
)


class Announcements:
    """This node's v2 announcement and the partners' it holds (fetched once, kept, refreshed)."""

    def __init__(
        self,
        me: NodeId,
        store: Store,
        fed: Federation,
        keys: NodeKeys,
        transport: PeerTransport,
        hybrid: HybridDecryptionKey | None = None,
        *,
        announce: bool = True,
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.keys = keys
        self.transport = transport
        self.hybrid = hybrid
        self.announce = announce  # False: this node says it takes no v2 (config `envelope_v2`)
        self._announcement = make_support(me, keys.signing, hybrid)
        self._support: dict[str, EpochSupport] = {}
        self._fetched: dict[str, float] = {}  # node -> when its announcement was fetched (-inf: loaded)
        # Nodes whose announcement held came relayed by a member (`take_relayed_support`), not from
        # the node: enough for checking wraps, not for making them (`support_of`, `owner`).
        self._relayed: set[str] = set()
        self._unsupported: dict[str, float] = {}  # node -> until when it counts as taking no v2
        self._unreachable: dict[str, float] = {}  # node -> until when an author does not ask it again
        # A receiver's `wrap_key_ids(readers, strict=True)` for an epoch, as long as the roster and
        # the announcements held are those it was made from (each change counts in _generation).
        self._generation = 0
        self._memo: dict[tuple[str, ...], tuple[object, int, dict[str, WrapKeyId]]] = {}
        # An author's `wrap_key_ids(readers, strict=False)`, likewise, and only until the first of
        # its announcements is due to be asked for again (SUPPORT_REFRESH): until then each one
        # is the one held, so the answer is the same (an author asks it twice per post).
        self._author_memo: dict[tuple[str, ...], tuple[object, int, float, dict[str, WrapKeyId]]] = {}

    async def _load_support(self, conn: AsyncConnection) -> None:
        """The announcements stored (checked when they came)."""
        for row in await conn.execute(sa.select(epoch_support)):
            try:
                support = parse_support(bytes(row.announcement))
                verify_support(support, self.fed, row.node)
            except ExchangeError:  # the node's roster key changed since: fetched again when needed
                continue
            self._support[row.node] = support
            self._fetched[row.node] = -math.inf  # asked again when next needed, whatever the uptime
            self._generation += 1

    @property
    def announcement(self) -> EpochSupport:
        """This node's own announcement (15.12), signed again after its signing key changed."""
        if self._announcement.signer != self.keys.signing.kid:
            self._announcement = make_support(self.me, self.keys.signing, self.hybrid)
        return self._announcement

    async def support_of(
        self, node: str, *, strict: bool = False, refresh: bool = False, owner: bool = False
    ) -> EpochSupport | None:
        """`node`'s v2 announcement (None: it takes no v2, or, unless `strict`, it cannot be asked
        now). `strict` (a receiver checking wraps): an unreachable node is StateUnavailable, which
        the sender retries. Fetched once and kept; fetched again when signed with a key the roster
        no longer lists, with `refresh`, and by an owner (not `strict`) after SUPPORT_REFRESH.
        `owner` (an owner making wraps): one only relayed by a member is asked for again from the
        node itself, as long as it can be asked: a member could relay an older announcement,
        valid but without the hybrid key the node announces now, and so have the owner wrap for
        it with X25519 alone (15.4)."""
        if node == self.me:
            return self.announcement if self.announce else None
        now = time.monotonic()
        held = self._support.get(node)
        offered = _OFFERED.get().get(node)
        if offered is not None and (held is None or held.signer != self.fed.node(node).signing_kid):
            held = offered  # relayed with the page being checked: what `keep_relayed` would keep
        if (
            held is not None
            and not refresh
            and held.signer == self.fed.node(node).signing_kid
            and (
                strict
                or (
                    now - self._fetched.get(node, -math.inf) < SUPPORT_REFRESH and not (owner and node in self._relayed)
                )
                or self._unreachable.get(node, 0.0) > now
            )
        ):
            return held
        if self._unsupported.get(node, 0.0) > now:
            return None
        if not strict and self._unreachable.get(node, 0.0) > now:
            return held
        try:
            raw = await self.transport.fetch(NodeId(node), SUPPORT_PATH)
        except PeerRefused as exc:
            if exc.status == 404:  # a release before v2, or v2 switched off
                self._unsupported[node] = now + UNSUPPORTED_RECHECK
                self._support.pop(node, None)
                self._generation += 1
                return None
            if strict:
                raise StateUnavailable(f"{node} did not give its v2 support announcement: {exc.detail}") from exc
            self._slow(node, now)
            return held
        except PeerError as exc:
            if strict:
                raise StateUnavailable(f"{node} is unreachable for its v2 support announcement") from exc
            self._slow(node, now)
            return held
        self._unreachable.pop(node, None)
        try:
            support = parse_support(raw)
            verify_support(support, self.fed, node)
        except ExchangeError as exc:
            # An answer that is no valid announcement (junk, another's, a key that cannot be
            # wrapped for) is the reader's fault: taken as an unreachable reader's, not as this
            # node's failure. Before, it failed every author's post in the channel (422), and the
            # owner's next epoch even once the reader was removed (found by a read-only review).
            if strict:
                raise
            log.warning("%s gave a v2 support announcement that does not check: %s", node, exc.detail)
            self._unreachable[node] = now + UNREACHABLE_RECHECK
            return held
        wire = support.model_dump_json().encode()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.delete(epoch_support).where(epoch_support.c.node == node))
            await conn.execute(sa.insert(epoch_support).values(node=node, announcement=wire, fetched_at=timestamp()))

        await self.store.write(job)
        self._support[node] = support
        self._fetched[node] = time.monotonic()
        self._relayed.discard(node)
        self._generation += 1
        return support

    def _slow(self, node: str, asked: float) -> None:
        """A failed ask that took long (a timeout): authors do not wait for it again for a while."""
        if time.monotonic() - asked > SLOW_ASK:
            self._unreachable[node] = time.monotonic() + UNREACHABLE_RECHECK

    async def take_relayed_support(self, raws: Sequence[Any]) -> None:
        """`relayed_support`, kept at once (`keep_relayed`)."""
        await self.keep_relayed(self.relayed_support(raws))

    def relayed_support(self, raws: Sequence[Any]) -> dict[str, EpochSupport]:
        """Announcements relayed by a member with epoch records, by node: each checked against its
        own node's roster key, and taken if none is held for that node (a held one is asked for
        again directly when an epoch's wrap disagrees with it: `record_key_ids`). One of a node
        that the held version does not list as active is skipped: no epoch is made for it (15.6
        rule 7). Nothing is kept here: the pages they came with are checked first (`relayed_for`)."""
        fresh: dict[str, EpochSupport] = {}
        for raw in raws[: len(self.fed.roster.nodes)]:
            support = parse_support(raw)
            if support.node == self.me or support.node in fresh or not self.fed.listed(support.node):
                continue
            held = self._support.get(support.node)
            if held is not None and held.signer == self.fed.node(support.node).signing_kid:
                continue
            try:
                verify_support(support, self.fed, support.node)
            except ExchangeError:
                # Not taken, and the page not failed for it: one signed with a key the node has
                # rotated since is what an honest member still holds (found by a read-only
                # review). What the page's records need of that node is asked of the node itself.
                continue
            fresh[support.node] = support
        return fresh

    @contextlib.asynccontextmanager
    async def relayed_for(self, taken: Callable[[], set[str]]) -> AsyncIterator[dict[str, EpochSupport]]:
        """A pull of epoch records: the announcements its pages relay (`relayed_support`, added to
        the dict given) are seen by its checks as if held (this task and those it starts), and kept
        at its end, failed or not, only for the readers of the records it took (`taken`): a page
        refused leaves none of its own kept."""
        offered: dict[str, EpochSupport] = {}
        token = _OFFERED.set(MappingProxyType(offered))
        try:
            yield offered
        except Exception:
            _OFFERED.reset(token)
            await self.keep_relayed({n: s for n, s in offered.items() if n in taken()})
            raise
        except BaseException:
            _OFFERED.reset(token)
            raise
        _OFFERED.reset(token)
        await self.keep_relayed({n: s for n, s in offered.items() if n in taken()})

    async def keep_relayed(self, fresh: Mapping[str, EpochSupport]) -> None:
        """Keep relayed announcements (`relayed_support`), but not over one held that is signed with
        its node's current key: one the node gave itself meanwhile (asked when a wrap disagreed)."""
        fresh = {
            n: s
            for n, s in fresh.items()
            if self.fed.listed(n)
            and ((held := self._support.get(n)) is None or held.signer != self.fed.node(n).signing_kid)
        }
        if not fresh:
            return
        now = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.delete(epoch_support).where(epoch_support.c.node.in_(list(fresh))))
            await conn.execute(
                sa.insert(epoch_support),
                [
                    {"node": n, "announcement": s.model_dump_json().encode(), "fetched_at": now}
                    for n, s in fresh.items()
                ],
            )

        await self.store.write(job)
        for node, support in fresh.items():
            self._support[node] = support
            self._fetched[node] = time.monotonic()
            self._unsupported.pop(node, None)
            self._relayed.add(node)
        self._generation += 1

    async def wrap_key_ids(
        self, nodes: Iterable[str], *, strict: bool, owner: bool = False
    ) -> dict[str, WrapKeyId] | None:
        """The key each node's wrap must be for (15.4, 15.12); None if one of them takes no v2.
        `owner`: for wraps this node makes (`support_of`).

        The announcements not held yet are asked for together, ASK_AT_ONCE at a time (an owner's
        first epoch of a channel of 200 needs 199 of them), then read in order. A receiver's
        (`strict`) answer depends only on the roster and the announcements held, so it is kept for
        the next envelope of the same epoch until either changes."""
        nodes = tuple(nodes)
        generation, roster = self._generation, self.fed.roster
        offered = _OFFERED.get()
        if offered:  # not kept yet: what is found with them is remembered for no one
            generation = -1
        if strict and (memo := self._memo.get(nodes)) is not None and memo[0] is roster and memo[1] == generation:
            return dict(memo[2])
        if (
            not strict
            and not owner
            and (kept := self._author_memo.get(nodes)) is not None
            and kept[0] is roster
            and kept[1] == generation
            and time.monotonic() < kept[2]
        ):
            return dict(kept[3])
        missing = [
            n
            for n in nodes
            if n != self.me and n not in offered and (n not in self._support or (owner and n in self._relayed))
        ]
        if len(missing) > 1:
            gate = asyncio.Semaphore(ASK_AT_ONCE)

            async def ask(node: str) -> None:
                async with gate:
                    await self.support_of(node, strict=strict, owner=owner)

            results = await asyncio.gather(*(ask(n) for n in missing), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        out: dict[str, WrapKeyId] = {}
        for node in nodes:
            support = await self.support_of(node, strict=strict, owner=owner)
            if support is None:
                return None
            out[node] = wrap_key_id(self.fed, node, support)
        if generation < 0:
            return out
        if strict:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[nodes] = (roster, generation, dict(out))
        elif (
            self._generation == generation  # nothing fetched meanwhile
            and self.fed.roster is roster
            # each one held is signed with its node's roster key: one that is not (its key rotated)
            # is asked for again at the next post, as `support_of` does when such an ask failed
            and all(self._support[n].signer == self.fed.node(n).signing_kid for n in nodes if n != self.me)
        ):
            due = min(
                (self._fetched.get(n, -math.inf) + SUPPORT_REFRESH for n in nodes if n != self.me), default=math.inf
            )
            if len(self._author_memo) >= MEMO_SIZE:
                self._author_memo.clear()
            self._author_memo[nodes] = (roster, generation, due, dict(out))
        return out

    async def record_key_ids(self, record: EpochRecord) -> dict[str, WrapKeyId]:
        """The wrap keys a received epoch's readers announce; a reader whose wrap names another key
        is asked again first (it may have announced a new one since this node asked). Readers that
        the held version does not list as active are left out: their wraps are not judged (15.6
        rule 7), and no bulletin is posted or taken under an epoch that wraps for them."""
        ids = await self.wrap_key_ids([r for r in record.readers if self.fed.listed(r)], strict=True)
        if ids is None:
            raise EpochInvalid("the epoch wraps for a node that announced no v2 support")
        for w in record.wraps:
            if w.node not in ids:
                continue
            if (w.suite, w.kid) != (ids[w.node].suite, ids[w.node].kid):
                support = await self.support_of(w.node, strict=True, refresh=True)
                if support is None:
                    raise EpochInvalid(f"the epoch wraps for {w.node}, which announces no v2 support")
                ids[w.node] = wrap_key_id(self.fed, w.node, support)
        return ids

    def wrap_key(self, node: str) -> WrapKey:
        """The public key the owner wraps for `node` (call after `wrap_key_ids` found its support),
        itself included: its own announcement, as `support_of` gives it, is not among those held."""
        support = (self.announcement if self.announce else None) if node == self.me else self._support.get(node)
        if support is not None and support.hybrid_key is not None:
            return HybridEncryptionKey(b64d(support.hybrid_key))
        return self.fed.encryption_key(node)

    def unwrap_key(self, kid: str) -> UnwrapKey:
        """This node's private key with `kid` (its hybrid key, or its X25519 roster key)."""
        if self.hybrid is not None and self.hybrid.kid == kid:
            return self.hybrid
        return next((k for k in (*self.keys.former, self.keys.decryption) if k.kid == kid), self.keys.decryption)
