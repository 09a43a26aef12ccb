"""A channel handover after its owner is revoked (docs/protocol.md 7.5; issue 11, must-show 6), on
real nodes over mutual TLS, on SQLite and PostgreSQL.

nl-customs owns a channel with three other members; ke-customs holds the admin right. A roster
version that revokes nl-customs is imported at ONE node; it spreads by gossip, and ke-customs, the
successor, takes the channel over with a `handover` that continues the same log. The rest then
exchange bulletins (posted, delivered, receipted), ke-customs invites a node that joins, and the
revoked node gets nothing. From the attacker's side: the revoked owner cannot connect, and its
events relayed by a member are refused; a handover by a node that is not the successor, a handover
of a channel whose owner is not revoked, and a forked handover are refused with a named error and
nothing stored; the handover offered again changes nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
import sqlalchemy as sa

from exchange.clock import timestamp
from exchange.model import Bulletin, ChannelEvent, NodeId
from exchange.protocol.channel import sign_event
from exchange.protocol.envelope import build_envelope, envelope_bytes
from exchange.protocol.rostermigration import admit
from exchange.store import channel_events, receipts
from tests.conftest import MakeFederation, Member, eventually
from tests.test_federation_security import ServedLog
from tests.test_roster_gossip import CONVERGE, Authority, holds, import_at, post, runs_on

NODES = {
    "nl-customs": ("NL", "customs"),
    "ke-customs": ("KE", "customs"),
    "gb-customs": ("GB", "customs"),
    "de-customs": ("DE", "customs"),
    "fr-customs": ("FR", "customs"),
}
CHANNEL = {
    "id": "c2c",
    "owner": "nl-customs",
    "agencies": ["customs"],
    "members": {
        "nl-customs": ["read", "post", "admin"],
        "ke-customs": ["read", "post", "admin"],
        "gb-customs": ["read", "post"],
        "de-customs": ["read", "post"],
    },
}
FROZEN = {  # no admin member: no successor, so no handover (7.5); it stays as it was
    "id": "c3",
    "owner": "nl-customs",
    "agencies": ["customs"],
    "members": {"nl-customs": ["read", "post", "admin"], "gb-customs": ["read", "post"], "de-customs": ["read"]},
}
REST = ("ke-customs", "gb-customs", "de-customs")  # the members that stay
TXNS = itertools.count()


def owned_by(member: Member, owner: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        state = member.service.channels.state("c2c")
        return bool(state.owner == owner and "nl-customs" not in state.members)

    return check


def receipted(author: Member, bid: str, node: str) -> Callable[[], Awaitable[bool]]:
    """`node`'s signed receipt for `bid` is stored at the author."""

    async def check() -> bool:
        async with author.service.store.read() as conn:
            query = sa.select(receipts.c.bulletin_id).where(receipts.c.bulletin_id == bid, receipts.c.node == node)
            return (await conn.scalar(query)) is not None

    return check


async def stored_events(member: Member) -> int:
    async with member.service.store.read() as conn:
        count = await conn.scalar(sa.select(sa.func.count()).select_from(channel_events))
        return int(count or 0)


def forged(
    member: Member, change: dict[str, Any], *, pos: int, prev: str, owner: str | None = None, channel: str = "c2c"
) -> ChannelEvent:
    """An event of `channel` signed by `member` with its own roster key, as `owner` (default: itself)."""
    return sign_event(
        channel=channel,
        owner=owner or member.id,
        pos=pos,
        prev=prev,
        at=timestamp(),
        change=change,
        key=member.service.keys.signing,
    )


async def relay(receiver: Member, sender: Member, *events: ChannelEvent) -> tuple[int, Any]:
    """`sender`, a member with a valid certificate, pushes `events` to `receiver` in a transaction."""
    body = {"txn": f"relay-{next(TXNS)}", "events": [e.model_dump(mode="json") for e in events], "envelopes": []}
    status, answer, _ = await receiver.fed_post(sender, json.dumps(body).encode())
    return status, answer


async def refused(receiver: Member, sender: Member, error: str, *events: ChannelEvent) -> None:
    """The transaction is refused with `error` and the receiver stores nothing of it."""
    before = await stored_events(receiver)
    status, answer = await relay(receiver, sender, *events)
    assert status == 422, (status, answer)
    assert error in json.dumps(answer), answer
    assert await stored_events(receiver) == before


async def test_the_successor_takes_over_a_revoked_owners_channel_and_the_rest_go_on(
    make_federation: MakeFederation, database: Callable[[str], Awaitable[str]]
) -> None:
    # Two items a transaction: the log a new member gets comes in several, the first ones holding only
    # the revoked owner's events; the member fetches the rest, with the handover, from the sender (7.5).
    fed = await make_federation(nodes=NODES, channels=[CHANNEL, FROZEN], options={"batch_size": 2})
    nl, ke, gb, de, fr = (fed[n] for n in NODES)
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(gb.config, version1)
    for member in fed.members.values():
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")

    # Before the revocation, the owner posts: what it signed stays valid afterwards.
    status, early = await post(nl, title="Before the revocation")
    assert status == 201, early
    for member in (ke, gb, de):
        await eventually(partial(holds, member, early["id"]), what=f"the early bulletin at {member.id}")
    last_by_nl = nl.service.channels.state("c2c")

    # Version 2 revokes the owner; imported at ONE node (not the successor), it spreads by gossip.
    version2 = auth.sign(
        admit(version1.roster, timestamp(), version1.roster.expires, statuses={"nl-customs": "revoked"})
    )
    await import_at(gb.config, version2)
    for member in (ke, gb, de, fr):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")

    # ke-customs, the only other admin member, hands over; every member takes it.
    for member in (ke, gb, de):
        await eventually(owned_by(member, "ke-customs"), timeout=CONVERGE, what=f"the handover at {member.id}")
    handed = ke.service.channels.state("c2c")
    assert (handed.pos, handed.policy) == (last_by_nl.pos + 1, last_by_nl.policy)
    assert {n: sorted(r) for n, r in handed.members.items()} == {
        "ke-customs": ["admin", "post", "read"],
        "gb-customs": ["post", "read"],
        "de-customs": ["post", "read"],
    }
    handover = ke.service.channels.events("c2c", last_by_nl.pos)[0]
    assert handover.change.type == "handover" and handover.prev == last_by_nl.hash
    for member in (gb, de):
        assert member.service.channels.events("c2c") == ke.service.channels.events("c2c")  # one linear log
    # What the revoked owner signed before still reads, its signature verified (6a.7).
    status, body, _ = await gb.api("GET", f"/api/v1/bulletins/{early['id']}", user="officer")
    assert status == 200 and body["bulletin"]["title"] == "Before the revocation", body

    # The rest keep exchanging bulletins: posted, delivered and receipted.
    for author in (ke, gb):
        status, sent = await post(author, title=f"After the handover, from {author.id}")
        assert status == 201 and set(sent["recipients"]) == set(REST) - {author.id}, sent
        for member in (m for m in (ke, gb, de) if m is not author):
            bid = sent["id"]
            await eventually(partial(holds, member, bid), what=f"{author.id}'s bulletin at {member.id}")
            await eventually(receipted(author, sent["id"], member.id), what=f"{member.id}'s receipt at {author.id}")
        assert not await holds(nl, sent["id"])

    # The new owner invites a node, which accepts (through the new owner) and receives bulletins.
    status, body, _ = await ke.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": "fr-customs", "rights": ["read", "post"]}
    )
    assert status == 200, body

    async def invited() -> bool:
        try:
            return "fr-customs" in fr.service.channels.state("c2c").invited
        except Exception:
            return False

    await eventually(invited, timeout=CONVERGE, what="the invitation at fr-customs")
    status, body, _ = await fr.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200 and "fr-customs" in body["members"] and body["owner"] == "ke-customs", body
    await fr.api("POST", "/api/v1/channels/c2c/users", user="admin", body={"user": "officer"})
    for member in (ke, gb, de):
        await eventually(partial(_member, member, "fr-customs"), timeout=CONVERGE, what=f"fr-customs at {member.id}")
    status, welcome = await post(gb, title="Welcome")
    assert status == 201 and "fr-customs" in welcome["recipients"], welcome
    await eventually(lambda: holds(fr, welcome["id"]), timeout=CONVERGE, what="the bulletin at fr-customs")
    status, answer = await post(fr, kind="feedback", title="Noted", references=[welcome["id"]])
    assert status == 201, answer
    for member in (ke, gb, de):
        await eventually(partial(holds, member, answer["id"]), what=f"fr-customs' answer at {member.id}")

    # The revoked node gets nothing: no bulletin, no event of the new owner; it cannot connect.
    assert not await holds(nl, welcome["id"]) and not await holds(nl, answer["id"])
    assert nl.service.channels.state("c2c").pos == last_by_nl.pos
    assert not (await ke.service.queued_counts()).get("nl-customs")
    try:
        status, _, _ = await ke.fed_post(nl, b'{"txn": "t1", "events": [], "envelopes": []}')
    except aiohttp.ClientError:
        status = 0
    assert status == 0, f"ke-customs answered the revoked nl-customs with {status}"

    # Attacker side, each relayed by a member with a valid certificate; nothing is stored.
    head = gb.service.channels.state("c2c")
    # The revoked owner keeps going: after the handover, and at the handover's own position (a fork).
    remove = {"type": "remove", "node": "gb-customs"}
    await refused(gb, de, "OwnerRevoked", forged(nl, remove, pos=head.pos + 1, prev=head.hash))
    await refused(gb, de, "a different event at position", forged(nl, remove, pos=handed.pos, prev=last_by_nl.hash))
    # A member that is not the successor claims the channel: at the handover's position, and later.
    claim = {"type": "handover", "node": "nl-customs", "roster": 2}
    await refused(de, gb, "a different event at position", forged(gb, claim, pos=handed.pos, prev=last_by_nl.hash))
    # A handover of a channel whose owner (ke-customs) is not revoked.
    claim = {"type": "handover", "node": "ke-customs", "roster": 2}
    await refused(de, gb, "HandoverRefused", forged(gb, claim, pos=head.pos + 1, prev=head.hash))
    # The handover again, at the next position (a replay): ke-customs no longer hands over from nl.
    again = forged(ke, {"type": "handover", "node": "nl-customs", "roster": 2}, pos=head.pos + 1, prev=head.hash)
    await refused(de, gb, "HandoverRefused", again)
    # A handover citing a roster version the receiver does not hold yet is not judged now: 503, which
    # the sender retries (gossip brings the version meanwhile), and nothing is stored.
    ahead = forged(ke, {"type": "handover", "node": "nl-customs", "roster": 3}, pos=head.pos + 1, prev=head.hash)
    before = await stored_events(de)
    status, answer = await relay(de, gb, ahead)
    assert status == 503 and "roster version 3" in json.dumps(answer), (status, answer)
    assert await stored_events(de) == before
    # The very handover offered again: held already, nothing new.
    before = await stored_events(de)
    status, _ = await relay(de, gb, handover)
    assert status == 200 and await stored_events(de) == before
    # In c3 (no admin member, so no successor) the revoked owner's new event is refused even as the
    # next position: a node takes it only below a handover, and the relaying member has none.
    frozen = gb.service.channels.state("c3")
    grant = {"type": "set-rights", "node": "de-customs", "rights": ["read", "post"]}
    gone = forged(nl, grant, pos=frozen.pos + 1, prev=frozen.hash, channel="c3")
    await refused(gb, de, "OwnerRevoked", gone)
    assert gb.service.channels.state("c3") == frozen
    # The same event through the other door (found by a read-only review): de signs an envelope
    # citing the state after it, as its owner, and serves the event when gb fetches the cited state.
    # gb kept the event before it found the cited owner wrong; now it keeps nothing.
    cited = dataclasses.replace(frozen, pos=frozen.pos + 1, owner=NodeId(de.id))
    env = build_envelope(
        Bulletin.model_validate({"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "Forged", "body": ""}),
        state=cited,
        author=NodeId(de.id),
        key=de.service.keys.signing,
        seq=1,
        readers=[(NodeId(gb.id), gb.service.fed.encryption_key(gb.id))],
        created=timestamp(),
    )
    await fed.stop("de-customs")
    before = await stored_events(gb)
    async with ServedLog(de, [*gb.service.channels.events("c3"), gone]) as served:
        status, answer, _ = await gb.fed_post(de, b'{"txn":"t-c3","envelopes":[%s]}' % envelope_bytes(env))
    assert served.asked and status == 422, (served.asked, status, answer)
    assert "does not match the channel's log" in json.dumps(answer), answer
    assert await stored_events(gb) == before
    assert gb.service.channels.state("c3") == frozen

    # After a restart, the log (the revoked owner's events, the handover, the new owner's) loads again.
    await fed.stop("de-customs")
    await fed.start("de-customs")
    assert de.service.channels.events("c2c") == ke.service.channels.events("c2c")
    assert de.service.channels.state("c2c").owner == "ke-customs"
    status, again_sent = await post(de, title="After a restart")
    assert status == 201 and "fr-customs" in again_sent["recipients"], again_sent
    await eventually(lambda: holds(ke, again_sent["id"]), what="de-customs' bulletin at ke-customs")


async def _member(member: Member, node: str) -> bool:
    return node in member.service.channels.state("c2c").members
