"""Three v2 epoch findings of a read-only review, on real nodes over mutual TLS (SQLite and
PostgreSQL). None let anyone read what they should not; each let one reader stop a channel:

1. A reader that answered its v2 support announcement with junk (signed by itself, a hybrid key
   that is no key) made every author's post in the channel a 422, with no fall back to v1; after a
   restart too; and the owner could make no epoch without it even once it was removed. Such an
   answer is now taken as an unreachable reader's: v1 is posted, and the next epoch is made.
2. A hybrid key whose X25519 half is of small order was accepted; each wrap for it failed, and
   the owner answered 500 on its epochs route and on its own posts. It is now refused
   (`check_hybrid_order`), so it is a junk announcement as in 1.
3. An honest member that still held a reader's announcement signed with that reader's key from
   before a rotation failed every epochs page it relayed it with. Such an announcement is now left
   out, not the page.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from exchange.crypto import b64e
from exchange.crypto.epoch import HybridDecryptionKey, HybridEncryptionKey, check_hybrid_order
from exchange.crypto.keys import key_id
from exchange.errors import PeerError, SmallOrderKey
from exchange.model import NodeId
from exchange.protocol.epoch_support import SUPPORT_DOMAIN
from exchange.protocol.signing import sign
from exchange.service.epoch_announcements import SUPPORT_PATH
from tests.conftest import MakeFederation, Member
from tests.standin import StandIn
from tests.test_epoch_attacks import NODES, V2, JunkAnnouncement, admin, arrives, channel, post


async def try_post(member: Member, title: str) -> tuple[int, Any]:
    body = {"kind": "alert", "title": title}
    status, answer, _ = await member.api("POST", "/api/v1/channels/c2c/bulletins", body=body)
    return status, answer


async def three_under_epoch_0(make_federation: MakeFederation) -> tuple[Any, tuple[Member, Member, Member]]:
    """The owner nl-customs and readers ke-customs and de-customs on v2, with de-customs's first
    bulletin (epoch 0) at the owner; each test then has ke-customs answer for itself."""
    fed = await make_federation(nodes=NODES, channels=[channel("nl-customs", "ke-customs", "de-customs")], options=V2)
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    sent = await post(de, "under epoch 0")
    await arrives(nl, sent["id"])
    return fed, (nl, ke, de)


def due(member: Member, node: str) -> None:
    """`member`'s held announcement of `node` is due to be asked for again (after an hour, or a restart)."""
    book = member.service.epochs
    book._fetched[node] = -math.inf
    book._author_memo.clear()


async def test_a_readers_junk_announcement_leaves_every_author_posting(make_federation: MakeFederation) -> None:
    fed, (nl, ke, de) = await three_under_epoch_0(make_federation)
    due(de, "ke-customs")
    due(nl, "ke-customs")
    junk = JunkAnnouncement(ke)
    await fed.stop("ke-customs")
    async with junk:
        de_status, de_body = await try_post(de, "by de, ke serving junk")
        nl_status, nl_body = await try_post(nl, "by the owner, ke serving junk")
    assert de_status == 201 and nl_status == 201, (de_status, de_body, nl_status, nl_body)


async def test_the_owner_makes_the_next_epoch_once_the_junk_reader_is_removed(make_federation: MakeFederation) -> None:
    fed, (nl, ke, _) = await three_under_epoch_0(make_federation)
    due(nl, "ke-customs")
    junk = JunkAnnouncement(ke)
    await fed.stop("ke-customs")
    async with junk:
        await admin(nl, "remove", "ke-customs")
        assert "ke-customs" not in nl.service.channels.state("c2c").readers
        status, body = await try_post(nl, "by the owner, ke removed")
        epochs = [r.n for r in nl.service.epochs.records("c2c")]
    assert status == 201, (status, body)
    assert len(epochs) == 2, epochs  # before: [0], and a 422


class LowOrderAnnouncement(StandIn):
    """Answers for `member` with an announcement it signed, whose hybrid key is a real ML-KEM-768
    key followed by a low-order X25519 point (all zeros)."""

    def __init__(self, member: Member) -> None:
        super().__init__(member)
        self.key = member.service.keys.signing
        self.asked = 0
        self.raw = HybridDecryptionKey(bytes(32)).public.raw[:1184] + bytes(32)

    def routes(self, app: web.Application) -> None:
        app.router.add_get(SUPPORT_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.asked += 1
        body = {
            "v": 2,
            "node": self.member.id,
            "hybrid_key": b64e(self.raw),
            "hybrid_kid": key_id(HybridEncryptionKey.alg, self.raw),
            "signer": self.key.kid,
        }
        return web.json_response({**body, "signature": sign(SUPPORT_DOMAIN, body, self.key)})


async def test_a_low_order_hybrid_key_is_refused_and_the_owner_serves_its_epochs(
    make_federation: MakeFederation,
) -> None:
    fed, (nl, ke, de) = await three_under_epoch_0(make_federation)
    due(nl, "ke-customs")
    bad = LowOrderAnnouncement(ke)
    await fed.stop("ke-customs")
    async with bad:
        status, body = await try_post(nl, "by the owner, ke low-order")
        try:
            page = await de.service.transport.fetch(NodeId("nl-customs"), "/fed/v1/channels/c2c/epochs?after=-1")
            fetched: tuple[Any, ...] = ("ok", [r["n"] for r in page["epochs"]])
        except PeerError as exc:
            fetched = ("refused", type(exc).__name__, getattr(exc, "status", None), exc.detail)
    assert bad.asked >= 1
    assert status != 500 and fetched[0] == "ok", (status, body, fetched)


async def test_after_a_restart_a_member_posts_while_a_reader_serves_junk(make_federation: MakeFederation) -> None:
    """No test hooks: de-customs restarts (its stored announcements are asked again when next needed)."""
    fed, (_, ke, de) = await three_under_epoch_0(make_federation)
    junk = JunkAnnouncement(ke)
    await fed.stop("ke-customs")
    await fed.stop("de-customs")
    await fed.start("de-customs")
    async with junk:
        status, body = await try_post(de, "by de after its restart")
    assert status == 201, (status, body)


async def test_an_announcement_signed_before_a_rotation_does_not_fail_a_relayed_page(
    make_federation: MakeFederation,
) -> None:
    """fr-customs rotated its signing key (simulated: the signer of the announcements held of it
    is no longer its roster kid). de-customs, an honest member, still holds and relays the old one;
    ke-customs holds none signed with fr-customs' current key. ke-customs' pull of epochs from
    de-customs then fails as a whole."""
    fed = await make_federation(
        nodes=NODES, channels=[channel("nl-customs", "ke-customs", "de-customs", "fr-customs")], options=V2
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    first = await post(nl, "under epoch 0")
    await arrives(de, first["id"])
    await arrives(ke, first["id"])
    status, answer, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/rights", user="admin", body={"node": "ke-customs", "rights": ["post"]}
    )
    assert status == 200, answer
    second = await post(nl, "under epoch 1")
    await arrives(de, second["id"])
    latest = (de.service.epochs.latest("c2c"), ke.service.epochs.latest("c2c"))
    assert [r.n if r is not None else None for r in latest] == [1, 0]
    held = de.service.epochs._support["fr-customs"]
    de.service.epochs._support["fr-customs"] = held.model_copy(update={"signer": "0" * 16})
    ke.service.epochs._support.pop("fr-customs", None)
    await ke.service.epochs.pull("de-customs", "c2c")  # before: EpochInvalid, the whole page refused
    took = ke.service.epochs.latest("c2c")
    assert took is not None and took.n == 1


def test_a_low_order_x25519_half_is_refused() -> None:
    good = HybridDecryptionKey(bytes(32)).public.raw
    check_hybrid_order(good)
    try:
        check_hybrid_order(good[:1184] + bytes(32))
    except SmallOrderKey:
        pass
    else:
        raise AssertionError("a low-order X25519 half was accepted")
