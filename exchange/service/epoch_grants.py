"""History grants on a node (docs/protocol.md, 15.7): the owner wraps earlier epoch keys for a
member the channel granted its history, and the grantee checks, opens and keeps them.

The owner makes a grant when the grantee first asks it for epochs after the `grant-history`
event (it holds every epoch key: it is a reader of every epoch); the grantee then catches up the
bulletins of those epochs from any member, which hands it the v2 envelopes of the epochs it was
granted (`served_to`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from exchange.audit.epoch_events import EPOCH_GRANT_TAKEN, EPOCH_GRANTED
from exchange.audit.events import AuditEntry
from exchange.clock import timestamp, utc_now
from exchange.crypto import EpochKey, sha256
from exchange.errors import EpochInvalid, NotFound
from exchange.protocol.channel import ChannelState
from exchange.protocol.epoch import (
    WrapKeyId,
    check_signed_by_owner,
    grant_digest,
    make_grant,
    open_grant,
    parse_grant,
    verify_grant,
)
from exchange.protocol.epoch_model import MAX_GRANT_EPOCHS, EpochRecord, HistoryGrant
from exchange.protocol.epoch_support import wrap_key_id
from exchange.service.epoch_store import store_grant

if TYPE_CHECKING:
    from exchange.service.epochs import EpochBook

log = logging.getLogger("exchange.epochs")

# After the grantee's wrap key changed twice, its history is granted for a newer key at most once in this.
REGRANT_EVERY = dt.timedelta(days=1)

# The epoch a stored v2 envelope is under: its JCS header holds `"epoch":{"hash":"<hex>","n":...}`,
# and nothing before it can hold a brace or a quote (base64url ciphertext, then sorted members).
_EPOCH_OF = re.compile(rb'"epoch":\{"hash":"([0-9a-f]{64})"')


def grant_hash(grant: HistoryGrant) -> str:
    """The key a node stores a grant under (`epoch_grants.hash`); the audit log names it by
    `grant_digest`, which another implementation recomputes from the signed grant."""
    return sha256(grant.model_dump_json().encode()).hex()


def served_to(peer: str, recipients: str, wire: bytes, granted: frozenset[str]) -> bool:
    """Whether catch-up hands `peer` this stored envelope: it is a recipient (v1) or a reader of
    its epoch (v2), or it holds a grant of the v2 envelope's epoch."""
    if f" {peer} " in recipients:
        return True
    if not granted:
        return False
    found = _EPOCH_OF.search(wire)
    return found is not None and found.group(1).decode() in granted


def granted_to(book: EpochBook, peer: str, channel: str) -> frozenset[str]:
    """The hashes of the epochs of `channel` that `peer` holds a grant of, as far as this node knows."""
    return frozenset(e.hash for g in book.grants.get(channel, []) if g.node == peer for e in g.epochs)


async def ensure_grant(book: EpochBook, state: ChannelState, peer: str) -> WrapKeyId | None:
    """As owner: grant `peer` (granted the history in `state`) every earlier epoch it has no key of;
    return the key its grants are for now (None: it is granted nothing)."""
    if peer not in state.history_grants or "read" not in state.rights(peer):
        return None
    support = await book.support_of(peer, owner=True)  # never a relayed announcement (15.12)
    if support is None:
        return None
    current = wrap_key_id(book.fed, peer, support)
    # Only grants for its current wrap key count: one made for a key it has changed since is refused
    # (15.7 rule 3), and it could not open it; its epochs are granted again for the new key.
    mine = [g for g in book.grants.get(state.channel, []) if g.node == peer]
    have = {e.n for g in mine if _for(g, current) for e in g.epochs}
    wanted: list[tuple[EpochRecord, EpochKey]] = []
    for record in book.records(state.channel):
        key = book.key(state.channel, record.n)
        if record.wrap_for(peer) is None and record.n not in have and record.state.pos <= state.pos and key:
            wanted.append((record, key))
    former = {(g.suite, g.kid) for g in mine if not _for(g, current)}
    regrant = not any(_for(g, current) for g in mine)  # a new key: its whole history to wrap again
    if wanted and regrant and len(former) >= 2 and max(g.created for g in mine) > timestamp(utc_now() - REGRANT_EVERY):
        # Granted again for a second key change within REGRANT_EVERY of the last grant: it waits. A
        # grantee changes its announced key at will; each change would cost the owner the whole
        # history wrapped, stored and audited again.
        return current
    wrap_key = book.wrap_key(peer) if wanted else None  # made only when there is something to wrap
    for i in range(0, len(wanted), MAX_GRANT_EPOCHS):
        assert wrap_key is not None
        grant = make_grant(
            state,
            node=peer,
            key=wrap_key,
            epochs=wanted[i : i + MAX_GRANT_EPOCHS],
            owner_key=book.keys.signing,
            created=timestamp(),
        )
        await _store(book, grant, {}, made=True)
        log.info("%s: granted %s %d epochs of %s", book.me, peer, len(grant.epochs), state.channel)
    return current


def grants_served(book: EpochBook, peer: str, channel: str, current: WrapKeyId | None) -> list[dict[str, Any]]:
    """The grants of `channel` for `peer` that an epochs answer carries: as owner (`current`, from
    `ensure_grant`), only those for its current wrap key; the grants of its former keys it could not use."""
    return [
        g.model_dump(mode="json")
        for g in book.grants.get(channel, [])
        if g.node == peer and (current is None or _for(g, current))
    ]


def _for(grant: HistoryGrant, key: WrapKeyId) -> bool:
    return (grant.suite, grant.kid) == (key.suite, key.kid)


async def accept_grants(book: EpochBook, channel: str, raws: Sequence[Any]) -> int:
    """Check grants addressed to this node (15.7) and keep them with the keys they open."""
    fresh = 0
    known = {grant_hash(g) for g in book.grants.get(channel, [])}
    ids = await book.wrap_key_ids([book.me], strict=True) if raws else None  # this node's own wrap key
    for raw in raws:
        grant = parse_grant(raw)
        if grant.channel != channel or grant.node != book.me:
            raise EpochInvalid("a history grant of another channel or for another node")
        if grant_hash(grant) in known:
            continue
        if ids is None:
            raise EpochInvalid("a history grant for a node that takes no v2")
        check_signed_by_owner(grant, book.fed)  # before the state it cites is fetched: a forgery is refused
        if not _for(grant, ids[book.me]):
            # The owner's, for a wrap key this node no longer has as its current one (changed since),
            # or does not have yet (the owner's roster ahead): skipped, neither kept nor an error, so
            # that a grant for its current key in the same list is taken.
            log.info("%s: a grant of %s for a key other than its current one (%s) skipped", book.me, channel, grant.kid)
            continue
        try:
            state = await book.channels.ensure(channel, grant.state)
        except NotFound as exc:
            raise EpochInvalid(f"the grant cites an unknown channel state: {exc.detail}") from exc
        held = {r.n: r for r in book.records(channel)}
        verify_grant(grant, book.fed, state, ids, held)
        keys = open_grant(grant, held, book.me, book.unwrap_key(grant.kid))  # DecryptionFailed: not kept
        await _store(book, grant, keys, made=False)
        known.add(grant_hash(grant))
        fresh += 1
    return fresh


async def _store(book: EpochBook, grant: HistoryGrant, keys: dict[int, EpochKey], *, made: bool) -> None:
    """Store a grant (exchange.service.epoch_store) and hold what is stored now of its grantee's
    grants and of its epochs' keys; audited at the end where it was stored (made or taken)."""
    ghash = grant_hash(grant)
    named = grant_digest(grant)  # in the audit entry: what an auditor recomputes from the signed grant
    epochs = [e.n for e in grant.epochs]
    entry: AuditEntry
    if made:
        entry = {
            "event": EPOCH_GRANTED,
            "at": timestamp(),
            "channel": grant.channel,
            "node": grant.node,
            "state": grant.state.pos,
            "hash": named,
            "epochs": epochs,
        }
    else:
        entry = {
            "event": EPOCH_GRANT_TAKEN,
            "at": timestamp(),
            "channel": grant.channel,
            "owner": grant.owner,
            "state": grant.state.pos,
            "hash": named,
            "epochs": epochs,
        }
    stored, held = await store_grant(book.store, grant, ghash, keys, entry, made=made)
    book.hold_grants(stored)
    for n, k in held.items():
        book.remember_key(grant.channel, n, k, keys.get(n))
