"""Envelope v2 from the attacker's side, on real nodes over mutual TLS (docs/protocol.md, 15):
removed readers, joiners without a grant, one bulletin's key, the signature over the header, the
cited state and the epoch, and a node that missed an epoch change."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

from exchange.audit.epoch_events import EPOCH_EQUIVOCATION
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.crypto import b64d, b64e
from exchange.crypto.epoch import unwrap_epoch_key
from exchange.errors import BadSignature, DecryptionFailed, EpochInvalid, PeerRefused
from exchange.model import Bulletin, NodeId
from exchange.protocol.envelope_v2 import (
    build_envelope_v2,
    bulletin_key,
    envelope_v2_bytes,
    parse_envelope_v2,
    sign_envelope_v2,
)
from exchange.protocol.epoch import epoch_hash, epoch_wrap_info, make_epoch, make_grant, open_epoch
from exchange.protocol.epoch_model import EnvelopeV2
from exchange.protocol.epoch_support import SUPPORT_DOMAIN
from exchange.protocol.signing import sign
from exchange.service.epoch_announcements import SUPPORT_PATH
from exchange.service.epoch_grants import accept_grants
from exchange.store import audit_log, bulletins
from exchange.store.tables import channel_epochs
from exchange.web.auditor import describe
from tests.conftest import DEFAULT_NODES, Federation, MakeFederation, Member, eventually
from tests.standin import StandIn

NODES = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")} | {
    "de-customs": ("DE", "customs"),
    "fr-customs": ("FR", "customs"),
}
V2 = {"envelope_v2": True}  # nodes announce v2 support (off by default in this release)


def channel(*members: str) -> dict[str, Any]:
    return {
        "id": "c2c",
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {m: ["read", "post"] + (["admin"] if m == "nl-customs" else []) for m in members},
    }


async def post(member: Member, title: str) -> dict[str, Any]:
    status, body, _ = await member.api("POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": title})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


async def audit_entries(member: Member) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        return [json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]


async def stored_wire(member: Member, bid: str) -> bytes | None:
    async with member.service.store.read() as conn:
        raw = await conn.scalar(sa.select(bulletins.c.envelope).where(bulletins.c.id == bid))
    return None if raw is None else bytes(raw)


async def envelope_at(member: Member, bid: str) -> EnvelopeV2 | None:
    raw = await stored_wire(member, bid)
    return None if raw is None else parse_envelope_v2(raw)


async def version_at(member: Member, bid: str) -> int | None:
    raw = await stored_wire(member, bid)
    return None if raw is None else int(json.loads(raw)["header"]["v"])


async def arrives(member: Member, bid: str) -> None:
    async def check() -> bool:
        return await stored_wire(member, bid) is not None

    await eventually(check, timeout=20, what=f"{bid[:8]} at {member.id}")


async def count(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) or 0)


async def rejections(member: Member) -> int:
    async with member.service.store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.entry))).scalars().all()
    return sum(json.loads(r)["event"] == "request.rejected" for r in rows)


async def admin(member: Member, action: str, node: str) -> None:
    status, body, _ = await member.api("POST", f"/api/v1/channels/c2c/{action}", user="admin", body={"node": node})
    assert status == 200, body


def batch(env: EnvelopeV2) -> bytes:
    return b'{"txn":"t1","envelopes":[' + envelope_v2_bytes(env) + b"]}"


async def refused(receiver: Member, sender: Member, env: EnvelopeV2, error: str) -> None:
    """`receiver` refuses `env` pushed by `sender` with `error`, stores nothing and audits it."""
    before, audited = await count(receiver), await rejections(receiver)
    status, body, _ = await receiver.fed_post(sender, batch(env))
    assert 400 <= status < 500 and error in json.dumps(body), (status, body)
    assert await count(receiver) == before
    assert await rejections(receiver) == audited + 1


def note(title: str) -> Bulletin:
    return Bulletin.model_validate({"kind": "alert", "title": title, "handling": {"tlp": "AMBER"}})


async def started(make_federation: MakeFederation, *members: str) -> Federation:
    return await make_federation(nodes={n: NODES[n] for n in members}, channels=[channel(*members)], options=V2)


async def test_a_removed_reader_cannot_decrypt_later_epochs(make_federation: MakeFederation) -> None:
    fed = await started(make_federation, "nl-customs", "ke-customs", "de-customs")
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    before = await post(nl, "before the removal")
    await arrives(de, before["id"])
    await admin(nl, "remove", "de-customs")
    after = await post(nl, "after the removal")
    env = await envelope_at(nl, after["id"])
    assert env is not None and env.header.epoch.n == 1 and "de-customs" not in after["recipients"]
    await arrives(ke, after["id"])
    assert await envelope_at(de, after["id"]) is None
    # de holds no key of the new epoch, and no member hands it the record any more.
    assert de.service.epochs.key("c2c", 1) is None
    with pytest.raises(PeerRefused) as asked:
        await de.service.epochs.pull("nl-customs", "c2c")
    assert asked.value.status == 403
    # Given the record and the envelope all the same (a leak), its key opens no wrap of it.
    record = nl.service.epochs.record("c2c", 1)
    assert record is not None and record.wrap_for("de-customs") is None
    key = de.service.keys.decryption
    with pytest.raises(DecryptionFailed):
        open_epoch(record, "de-customs", key)
    for w in record.wraps:
        info = epoch_wrap_info("c2c", 1, record.state.hash, "de-customs", key.kid)
        with pytest.raises(DecryptionFailed):
            unwrap_epoch_key(b64d(w.wrap), info, key, b64d(record.commitment))
    # An insider cannot keep de reading by encrypting under the old epoch while citing the
    # current state: the receivers check the epoch's readers against the cited state.
    state = ke.service.channels.state("c2c")
    old = ke.service.epochs.record("c2c", 0)
    old_key = ke.service.epochs.key("c2c", 0)
    assert old is not None and old_key is not None and "de-customs" in old.readers
    then = ke.service.channels.state("c2c", old.state.pos)
    built = build_envelope_v2(
        note("still for de"),
        state=then,
        epoch=old,
        epoch_key=old_key,
        author=NodeId("ke-customs"),
        key=ke.service.keys.signing,
        seq=50,
        created=timestamp(),
    )
    cites_now = built.header.model_copy(
        update={"state": built.header.state.model_copy(update={"pos": state.pos, "hash": state.hash})}
    )
    cites_now.__dict__.pop("canonical", None)
    forged = sign_envelope_v2(cites_now, b64d(built.ciphertext), ke.service.keys.signing)
    await refused(nl, ke, forged, "StaleEpoch")


async def test_a_joiner_gets_no_earlier_epoch_key_without_a_grant(make_federation: MakeFederation) -> None:
    fed = await make_federation(
        nodes={n: NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[channel("nl-customs", "ke-customs")],
        options=V2,
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    early = await post(nl, "before de joined")
    await arrives(ke, early["id"])
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": "de-customs", "rights": ["read", "post"]}
    )
    assert status == 200, body

    async def invited() -> bool:
        try:
            return NodeId("de-customs") in de.service.channels.state("c2c").invited
        except Exception:
            return False

    await eventually(invited, what="the invitation at de-customs")
    status, body, _ = await de.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200, body
    late = await post(nl, "after de joined")
    await arrives(de, late["id"])
    assert (await envelope_at(de, late["id"])).header.epoch.n == 1  # type: ignore[union-attr]
    # de pulled every epoch record, and holds the key of the new one only.
    await de.service.epochs.pull("ke-customs", "c2c")
    assert de.service.epochs.record("c2c", 0) is not None
    assert de.service.epochs.key("c2c", 0) is None and de.service.epochs.key("c2c", 1) is not None
    record = de.service.epochs.record("c2c", 0)
    assert record is not None
    with pytest.raises(DecryptionFailed):
        open_epoch(record, "de-customs", de.service.keys.decryption)
    # Catch-up hands it no envelope of the earlier epoch ...
    page = json.loads(await nl.service.catchup.served_envelopes("de-customs", "c2c"))
    assert [i["envelope"] for i in page["items"] if i["id"] == early["id"]] == [None]
    # ... and given one all the same, it cannot open it: it refuses it and stores nothing.
    env = await envelope_at(nl, early["id"])
    assert env is not None
    await refused(de, nl, env, "holds no key of the envelope's epoch")


async def test_one_bulletins_key_reveals_no_other(make_federation: MakeFederation) -> None:
    fed = await started(make_federation, "nl-customs", "ke-customs")
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    one, two = await post(nl, "one"), await post(nl, "two")
    await arrives(ke, two["id"])
    a, b = await envelope_at(ke, one["id"]), await envelope_at(ke, two["id"])
    assert a is not None and b is not None and a.header.epoch == b.header.epoch
    epoch_key = ke.service.epochs.key("c2c", a.header.epoch.n)
    assert epoch_key is not None
    key_a = bulletin_key(a.header, epoch_key)
    assert json.loads(key_a.open(b64d(a.ciphertext)))["title"] == "one"  # an auditor handed key_a reads one
    with pytest.raises(DecryptionFailed):
        key_a.open(b64d(b.ciphertext))  # and not two
    okm_a = epoch_key.bulletin_okm(b64d(a.header.salt), b"")
    okm_b = epoch_key.bulletin_okm(b64d(b.header.salt), b"")
    assert okm_a != okm_b and epoch_key.secret_bytes() not in (okm_a, okm_b)


async def test_the_signature_covers_header_state_and_epoch(make_federation: MakeFederation) -> None:
    fed = await started(make_federation, "nl-customs", "ke-customs")
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    first = await post(ke, "signed")  # ke fetches the owner's epoch and posts under it
    await arrives(nl, first["id"])
    state = ke.service.channels.state("c2c")
    epoch = ke.service.epochs.record("c2c", 0)
    epoch_key = ke.service.epochs.key("c2c", 0)
    assert epoch is not None and epoch_key is not None
    good = build_envelope_v2(
        note("good"),
        state=state,
        epoch=epoch,
        epoch_key=epoch_key,
        author=NodeId("ke-customs"),
        key=ke.service.keys.signing,
        seq=40,
        created=timestamp(),
    )
    wire = json.loads(envelope_v2_bytes(good))
    changes: dict[str, Callable[[dict[str, Any]], None]] = {
        "epoch number": lambda h: h["epoch"].update(n=1),
        "epoch hash": lambda h: h["epoch"].update(hash="0" * 64),
        "state position": lambda h: h["state"].update(pos=h["state"]["pos"] - 1),
        "state hash": lambda h: h["state"].update(hash="1" * 64),
        "created": lambda h: h.update(created="2020-01-01T00:00:00Z"),
        "salt": lambda h: h.update(salt=b64e(bytes(32))),
    }
    for name, change in changes.items():
        doc = json.loads(json.dumps(wire))
        change(doc["header"])
        before = await count(nl)
        status, body, _ = await nl.fed_post(ke, b'{"txn":"t","envelopes":[' + json.dumps(doc).encode() + b"]}")
        assert 400 <= status < 500 and "BadSignature" in json.dumps(body), (name, status, body)
        assert await count(nl) == before, name
    status, body, _ = await nl.fed_post(ke, batch(good))
    assert status == 200, body


async def test_a_node_that_missed_an_epoch_change_catches_up_from_any_member(
    make_federation: MakeFederation,
) -> None:
    fed = await started(make_federation, "nl-customs", "ke-customs", "de-customs", "fr-customs")
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    await post(nl, "epoch 0")
    await admin(nl, "remove", "fr-customs")

    async def removal_at_de() -> bool:
        return "fr-customs" not in fed["de-customs"].service.channels.state("c2c").members

    await eventually(removal_at_de, what="the removal at de-customs")
    await fed.stop("de-customs")
    missed = [await post(nl, f"epoch 1, #{i}") for i in range(3)]
    for m in missed:
        await arrives(ke, m["id"])
    latest = nl.service.epochs.latest("c2c")
    assert latest is not None and latest.n == 1
    await fed.stop("nl-customs")  # the owner is gone: only ke can hand de the new epoch
    await fed.start("de-customs")
    de = fed["de-customs"]
    for m in missed:
        await arrives(de, m["id"])
    assert de.service.epochs.key("c2c", 1) is not None
    for i, m in enumerate(missed):
        status, shown, _ = await de.api("GET", f"/api/v1/bulletins/{m['id']}")
        assert status == 200 and shown["bulletin"]["title"] == f"epoch 1, #{i}", shown


async def test_a_reader_without_v2_keeps_the_channel_on_v1_and_v1_stays_readable(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(
        nodes={n: NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[channel("nl-customs", "ke-customs", "de-customs")],
        start=False,
        options=V2,
    )
    path = fed.folder / "de-customs.toml"  # de runs with v2 switched off: it announces none
    path.write_text(path.read_text().replace("envelope_v2 = true", "envelope_v2 = false"))
    fed["de-customs"].config = NodeConfig.load(path, environ={})
    for n in fed.members:
        await fed.start(n)
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    old = await post(nl, "in v1")
    for m in (ke, de):
        await arrives(m, old["id"])
        assert await version_at(m, old["id"]) == 1
    assert nl.service.epochs.latest("c2c") is None
    # Once the reader without v2 is gone, the channel moves to v2; the v1 bulletin stays readable.
    await admin(nl, "remove", "de-customs")
    new = await post(nl, "in v2")
    await arrives(ke, new["id"])
    assert await version_at(ke, new["id"]) == 2
    for bid, title in ((old["id"], "in v1"), (new["id"], "in v2")):
        status, shown, _ = await ke.api("GET", f"/api/v1/bulletins/{bid}")
        assert status == 200 and shown["bulletin"]["title"] == title, shown


async def test_a_history_grant_delivers_the_earlier_epochs(make_federation: MakeFederation) -> None:
    """Must-show 4: after `grant-history`, the owner wraps the earlier epoch keys for the new
    member, which catches up the earlier bulletins and reads them."""
    fed = await make_federation(
        nodes={n: NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[channel("nl-customs", "ke-customs")],
        options=V2,
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    early = [await post(nl, "early from nl"), await post(ke, "early from ke")]
    await arrives(ke, early[0]["id"])
    await admin_invite_and_accept(nl, de)
    late = await post(nl, "after de joined")
    await arrives(de, late["id"])
    for e in early:
        assert await stored_wire(de, e["id"]) is None
    assert de.service.epochs.key("c2c", 0) is None
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": "de-customs"}
    )
    assert status == 200 and body["history_grants"] == ["de-customs"], body

    async def caught_up() -> bool:
        de.service.catchup.wake()
        return all([await stored_wire(de, e["id"]) is not None for e in early])

    await eventually(caught_up, timeout=30, what="the earlier bulletins at de-customs")
    assert de.service.epochs.key("c2c", 0) is not None
    grants = de.service.epochs.grants["c2c"]
    assert [(g.node, [e.n for e in g.epochs]) for g in grants] == [("de-customs", [0])]
    for e, title in zip(early, ("early from nl", "early from ke"), strict=True):
        status, shown, _ = await de.api("GET", f"/api/v1/bulletins/{e['id']}")
        assert status == 200 and shown["bulletin"]["title"] == title, shown
    # A grant is for its grantee only: ke is handed none, and a forged one is refused.
    page = json.loads(await ke.service.epochs.serve("de-customs", "c2c", -1))
    assert page["grants"] == []
    forged = grants[0].model_dump(mode="json") | {"node": "ke-customs"}
    with pytest.raises(BadSignature):
        await accept_grants(ke.service.epochs, "c2c", [forged])
    assert "c2c" not in ke.service.epochs.grants


async def admin_invite_and_accept(owner: Member, joiner: Member) -> None:
    status, body, _ = await owner.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": joiner.id, "rights": ["read", "post"]}
    )
    assert status == 200, body

    async def invited() -> bool:
        try:
            return NodeId(joiner.id) in joiner.service.channels.state("c2c").invited
        except Exception:
            return False

    await eventually(invited, what=f"the invitation at {joiner.id}")
    status, body, _ = await joiner.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200, body
    status, body, _ = await joiner.api("POST", "/api/v1/channels/c2c/users", user="admin", body={"user": "officer"})
    assert status == 200, body


async def test_forged_or_equivocating_epoch_records_are_refused(make_federation: MakeFederation) -> None:
    """Only the owner makes epochs, one per number: a member's own record, or a second record for
    a number already held, is refused and not kept; the good record still is."""
    fed = await started(make_federation, "nl-customs", "ke-customs", "de-customs")
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    sent = await post(nl, "epoch 0")
    await arrives(ke, sent["id"])
    state = nl.service.channels.state("c2c")
    keys = {str(n): nl.service.epochs.wrap_key(n) for n in state.readers}
    by_member, _ = make_epoch(state, n=0, prev=None, keys=keys, owner_key=ke.service.keys.signing, created=timestamp())
    second, _ = make_epoch(state, n=0, prev=None, keys=keys, owner_key=nl.service.keys.signing, created=timestamp())
    good = nl.service.epochs.record("c2c", 0)
    assert good is not None and epoch_hash(second) != epoch_hash(good)
    # Refused as not the owner's key: as a second record 0 if de holds epoch 0 already, or as one
    # no record signed with the owner's current key follows, if it does not yet (a race with the post).
    with pytest.raises(EpochInvalid, match=r"owner's roster key|no epoch signed with a current key follows"):
        await de.service.epochs.accept("c2c", [by_member.model_dump(mode="json")])
    for _ in range(2):  # as a pull's page would bring it, twice
        with pytest.raises(EpochInvalid, match="equivocates"):
            await ke.service.epochs.accept("c2c", [second.model_dump(mode="json")])
    # The owner's second record is audited where it was found, once, with both hashes; the
    # member's forgery is not the owner's equivocation, and is not.
    found = [e for e in await audit_entries(ke) if e["event"] == EPOCH_EQUIVOCATION]
    assert [(e["channel"], e["n"], e["owner"], e["held"], e["other"]) for e in found] == [
        ("c2c", 0, "nl-customs", epoch_hash(good), epoch_hash(second))
    ], found
    assert not [e for e in await audit_entries(de) if e["event"] == EPOCH_EQUIVOCATION]
    shown = describe(found[0])  # as the auditor's console lists it
    assert (
        shown
        == f"nl-customs signed two epochs 0 of c2c: {epoch_hash(good)[:12]} kept, {epoch_hash(second)[:12]} refused"
    )
    assert describe(found[0], "fr").startswith("nl-customs a signé deux époques 0 de c2c")
    mine = de.service.epochs.record("c2c", 0)
    assert mine is None or epoch_hash(mine) == epoch_hash(good)
    await de.service.epochs.pull("ke-customs", "c2c")
    held = de.service.epochs.record("c2c", 0)
    assert held is not None and epoch_hash(held) == epoch_hash(good)
    async with de.service.store.read() as conn:
        assert (await conn.scalar(sa.select(sa.func.count()).select_from(channel_epochs))) == 1


async def test_an_epoch_record_or_grant_the_owner_did_not_sign_fetches_nothing(
    make_federation: MakeFederation,
) -> None:
    """A record or grant citing a channel state the receiver does not hold makes it fetch the
    owner's log, but only once the owner's signature on it is checked: one whose cited state was
    changed is refused first, and nothing is fetched for it or kept."""
    fed = await started(make_federation, "nl-customs", "ke-customs", "de-customs")
    nl, de = fed["nl-customs"], fed["de-customs"]
    sent = await post(nl, "epoch 0")
    await arrives(de, sent["id"])
    state = nl.service.channels.state("c2c")
    record, key = nl.service.epochs.record("c2c", 0), nl.service.epochs.key("c2c", 0)
    assert record is not None and key is not None
    ahead = {"owner": "nl-customs", "pos": state.pos + 5, "hash": "0" * 64}  # a state de does not hold
    keys = {str(n): nl.service.epochs.wrap_key(n) for n in state.readers}
    forged, _ = make_epoch(state, n=1, prev=record, keys=keys, owner_key=nl.service.keys.signing, created=timestamp())
    grant = make_grant(
        state,
        node="de-customs",
        key=nl.service.epochs.wrap_key(NodeId("de-customs")),
        epochs=[(record, key)],
        owner_key=nl.service.keys.signing,
        created=timestamp(),
    )
    fetched: list[Any] = []
    ensure = de.service.channels.ensure

    async def spy(channel: str, ref: Any) -> Any:
        fetched.append(ref)
        return await ensure(channel, ref)

    de.service.channels.ensure = spy  # type: ignore[method-assign]
    with pytest.raises(BadSignature):  # the owner's, with the state it cites changed
        await de.service.epochs.accept("c2c", [{**forged.model_dump(mode="json"), "state": ahead}])
    with pytest.raises(BadSignature):
        await accept_grants(de.service.epochs, "c2c", [{**grant.model_dump(mode="json"), "state": ahead}])
    assert fetched == []
    assert de.service.epochs.record("c2c", 1) is None and not de.service.epochs.grants.get("c2c")
    assert len(de.service.channels.events("c2c")) == state.pos + 1


class JunkAnnouncement(StandIn):
    """Stands in for `member`'s node and answers a request for its v2 support announcement with
    one it signed whose hybrid key is not a key."""

    def __init__(self, member: Member) -> None:
        super().__init__(member)
        self.key = member.service.keys.signing  # taken while the node runs
        self.asked = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get(SUPPORT_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.asked += 1
        body = {"v": 2, "node": self.member.id, "hybrid_key": b64e(bytes(10)), "hybrid_kid": "0" * 16}
        body["signer"] = self.key.kid
        return web.json_response({**body, "signature": sign(SUPPORT_DOMAIN, body, self.key)})


async def test_a_readers_junk_announcement_does_not_stop_the_owner_serving_its_epochs(
    make_federation: MakeFederation,
) -> None:
    """A reader answers the owner with an announcement it signed whose hybrid key is not a key.
    The owner could not make the current epoch, and its epochs route then refused every member
    (a 500 before 0f4bb48, a 422 after), even for the epochs it held: a member that had missed
    one could not read the bulletins under it (found by a read-only review). Now the owner
    serves what it holds, and the refusal stays with the one announcement."""
    fed = await make_federation(nodes=NODES, channels=[channel("nl-customs", "ke-customs", "de-customs")], options=V2)
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    sent = await post(nl, "under epoch 0")
    await arrives(de, sent["id"])
    held = nl.service.epochs.latest("c2c")
    assert held is not None
    # The owner asks ke-customs for its announcement again (as after an hour), and gets junk.
    book = nl.service.epochs
    book._support.pop("ke-customs")
    book._fetched.pop("ke-customs", None)
    book._author_memo.clear()
    junk = JunkAnnouncement(ke)
    await fed.stop("ke-customs")
    async with junk:
        page = await de.service.transport.fetch(NodeId("nl-customs"), "/fed/v1/channels/c2c/epochs?after=-1")
    assert junk.asked >= 1
    assert [r["n"] for r in page["epochs"]] == [held.n]
    assert "ke-customs" not in book._support  # the junk was not kept


async def test_an_author_behind_does_not_post_under_an_epoch_whose_key_a_removed_grantee_holds(
    make_federation: MakeFederation,
) -> None:
    """Readers changed and changed back (de-customs joined, was given the history, then removed):
    an author that had not pulled the epochs made meanwhile held epoch 0, whose readers are again
    the state's, and posted under it, though de-customs holds its key from the grant (found by a
    read-only review). The author now takes the next epoch (or posts v1), never epoch 0."""
    fed = await make_federation(
        nodes={n: NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[channel("nl-customs", "ke-customs")],
        options=V2,
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    first = await post(nl, "under epoch 0")
    await arrives(ke, first["id"])
    await admin_invite_and_accept(nl, de)
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": "de-customs"}
    )
    assert status == 200, body

    async def granted() -> bool:
        de.service.catchup.wake()
        return de.service.epochs.key("c2c", 0) is not None

    await eventually(granted, timeout=30, what="epoch 0's key at de-customs, granted")
    await admin(nl, "remove", "de-customs")

    async def removed_at_ke() -> bool:
        return "de-customs" not in ke.service.channels.state("c2c").members

    await eventually(removed_at_ke, what="the removal at ke-customs")
    # ke-customs is behind on epochs: it holds epoch 0 alone, as if it never pulled the later ones.
    ke.service.epochs._records["c2c"] = ke.service.epochs._records["c2c"][:1]
    state = ke.service.channels.state("c2c")
    held = ke.service.epochs.latest("c2c")
    assert held is not None and held.n == 0 and held.readers == state.readers  # rule 10 alone: fine
    assert await ke.service.epochs.current("c2c", state, strict=False) is None  # before: epoch 0

    late = await post(ke, "after de-customs left")
    env = await envelope_at(ke, late["id"]) if await version_at(ke, late["id"]) == 2 else None
    assert env is None or env.header.epoch.n > 0, env  # v1, or a later epoch: never epoch 0
