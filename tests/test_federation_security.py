"""Attacks on the federation endpoint, over real mutual TLS: every one is refused and stores nothing."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web

from exchange.clock import timestamp, utc_now
from exchange.crypto import b64d, b64e, generate_tls_identity
from exchange.model import Bulletin, ChannelEvent, Envelope, NodeId
from exchange.node.tls import peer_context
from exchange.protocol.channel import apply_event, event_hash, sign_event
from exchange.protocol.envelope import build_envelope, envelope_bytes
from exchange.store import audit_log, bulletins, channel_events
from tests.conftest import DEFAULT_NODES, MakeFederation, Member, authored
from tests.standin import StandIn

THREE = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "wco-rilo")}
BULLETIN = Bulletin.model_validate(
    {"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "Test alert", "body": "body text"}
)


def envelope_from(member: Member, channel: str = "c2c", seq: int = 1) -> Envelope:
    """An envelope exactly as `member` would author it, without posting it."""
    return authored(member, BULLETIN, channel, seq)


def batch(*envs: bytes) -> bytes:
    return b'{"txn":"t1","envelopes":[' + b",".join(envs) + b"]}"


async def stored(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(bulletins))).scalar_one())


async def rejections(member: Member) -> int:
    async with member.service.store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.entry))).scalars().all()
    return sum(json.loads(r)["event"] == "request.rejected" for r in rows)


def flip_b64(value: str, index: int = 0) -> str:
    raw = bytearray(b64d(value))
    raw[index % len(raw)] ^= 0x01
    return b64e(bytes(raw))


def tampered_variants(env: Envelope) -> dict[str, dict[str, Any]]:
    """One single-byte change in each part of the envelope, re-encoded so it reaches verification."""
    good = env.model_dump(mode="json")
    out: dict[str, dict[str, Any]] = {}

    def variant(name: str, change: Any) -> None:
        doc = json.loads(json.dumps(good))
        change(doc)
        out[name] = doc

    variant("signature", lambda d: d.update(signature=flip_b64(d["signature"], 5)))
    variant("signature-last-byte", lambda d: d.update(signature=flip_b64(d["signature"], -1)))
    variant("ciphertext", lambda d: d.update(ciphertext=flip_b64(d["ciphertext"], 3)))
    for i in range(len(good["wraps"])):
        variant(f"wrap-{i}-enc", lambda d, i=i: d["wraps"].__setitem__(i, flip_b64(d["wraps"][i], 0)))
        variant(f"wrap-{i}-body", lambda d, i=i: d["wraps"].__setitem__(i, flip_b64(d["wraps"][i], 50)))
    variant("header-nonce", lambda d: d["header"].update(nonce=flip_b64(d["header"]["nonce"])))
    variant(
        "header-key-commitment", lambda d: d["header"].update(key_commitment=flip_b64(d["header"]["key_commitment"]))
    )
    variant(
        "header-ciphertext-hash",
        lambda d: d["header"].update(ciphertext_sha256=flip_b64(d["header"]["ciphertext_sha256"])),
    )
    variant("header-seq", lambda d: d["header"].update(seq=d["header"]["seq"] + 1))
    variant("header-tlp", lambda d: d["header"]["handling"].update(tlp="GREEN"))
    variant("header-created", lambda d: d["header"].update(created=d["header"]["created"].replace("2", "3", 1)))
    variant(
        "header-recipient-kid",
        lambda d: d["header"]["recipients"][0].update(
            kid="0" + d["header"]["recipients"][0]["kid"][1:]
            if d["header"]["recipients"][0]["kid"][0] != "0"
            else "1" + d["header"]["recipients"][0]["kid"][1:]
        ),
    )
    variant("wrap-dropped", lambda d: d["wraps"].pop())
    return out


async def test_every_tampered_part_is_refused_with_problem_json_and_nothing_stored(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    env = envelope_from(a)
    variants = tampered_variants(env)
    assert len(variants) >= 14
    for name, doc in variants.items():
        status, body, ctype = await b.fed_post(a, batch(json.dumps(doc).encode()))
        assert 400 <= status < 500, (name, status, body)
        assert ctype == "application/problem+json", name
        assert body["status"] == status and body["detail"], name
    # Raw single-byte flips across the whole wire form, header to ciphertext.
    wire = envelope_bytes(env)
    for pos in range(0, len(wire), max(1, len(wire) // 40)):
        broken = bytearray(wire)
        broken[pos] ^= 0x01
        status, body, ctype = await b.fed_post(a, batch(bytes(broken)))
        assert 400 <= status < 500 and ctype == "application/problem+json", (pos, status, body)
    assert await stored(b) == 0
    assert await rejections(b) >= len(variants) + 40
    # The untouched envelope is accepted: the test above could have failed.
    status, body, _ = await b.fed_post(a, batch(wire))
    assert status == 200, body
    assert await stored(b) == 1


async def test_duplicate_delivery_stores_once_and_returns_the_same_receipt(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    wire = envelope_bytes(envelope_from(a))
    first = await b.fed_post(a, batch(wire))
    second = await b.fed_post(a, batch(wire))
    both = await b.fed_post(a, batch(wire, wire))
    assert first[0] == second[0] == both[0] == 200
    assert first[1]["receipts"] == second[1]["receipts"] == both[1]["receipts"][:1]
    assert await stored(b) == 1


async def test_same_sequence_number_for_two_bulletins_is_refused_as_equivocation(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    assert (await b.fed_post(a, batch(envelope_bytes(envelope_from(a, seq=1)))))[0] == 200
    status, body, _ = await b.fed_post(a, batch(envelope_bytes(envelope_from(a, seq=1))))
    assert status == 409 and body["type"].endswith("Equivocation")
    assert await stored(b) == 1


async def test_certificate_not_in_roster_is_refused_before_any_envelope_is_read(
    make_federation: MakeFederation, tmp_path: Any
) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    key_pem, cert_pem = generate_tls_identity("rogue", utc_now())
    (tmp_path / "rogue.key").write_bytes(key_pem)
    (tmp_path / "rogue.crt").write_bytes(cert_pem)
    ctx = peer_context(b.service.fed.node(b.id), tmp_path / "rogue.crt", tmp_path / "rogue.key")
    refused = False
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.post(b.config.endpoint + "/fed/v1/envelopes", data=batch(envelope_bytes(envelope_from(a)))) as resp,
        ):
            refused = resp.status == 403
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
        refused = True  # the TLS handshake failed: the server never read the body
    assert refused
    assert await stored(b) == 0


async def test_client_without_certificate_gets_403_problem_json(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    status, body, ctype = await b.api(
        "POST", "/fed/v1/envelopes", user="", body=json.loads(batch(envelope_bytes(envelope_from(a))))
    )
    assert status == 403 and ctype == "application/problem+json"
    assert body["type"].endswith("UnknownPeer")
    assert await stored(b) == 0 and await rejections(b) == 1


@pytest.mark.parametrize("make", ["relay-of-another-author", "non-member-author"])
async def test_roster_node_outside_the_channel_is_refused(make_federation: MakeFederation, make: str) -> None:
    fed = await make_federation(
        nodes=THREE,
        channels=[
            {
                "id": "c2c",
                "owner": "nl-customs",
                "agencies": ["customs"],
                "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
            }
        ],
    )
    a, b, outsider = fed["nl-customs"], fed["ke-customs"], fed["wco-rilo"]
    if make == "relay-of-another-author":
        wire = envelope_bytes(envelope_from(a))  # genuine, but pushed by someone else
    else:
        # Suppose the outsider learnt the channel's state somehow and signs a bulletin of its own.
        wire = envelope_bytes(authored(outsider, BULLETIN, state_of=a))
    status, body, ctype = await b.fed_post(outsider, batch(wire))
    assert status == 422 and ctype == "application/problem+json", body
    assert await stored(b) == 0


async def test_a_non_recipient_cannot_decrypt(make_federation: MakeFederation) -> None:
    from exchange.errors import DecryptionFailed
    from exchange.protocol.envelope import bulletin_id, open_envelope

    fed = await make_federation(
        nodes=THREE,
        channels=[
            {
                "id": "c2c",
                "owner": "nl-customs",
                "agencies": ["customs"],
                "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
            }
        ],
    )
    a, outsider = fed["nl-customs"], fed["wco-rilo"]
    env = envelope_from(a)
    bid = bulletin_id(env.header)
    with pytest.raises(DecryptionFailed):
        open_envelope(env, bid, outsider.service.me, outsider.service.keys.decryption)
    # Even claiming a recipient's slot with its own key gets nowhere.
    with pytest.raises(DecryptionFailed):
        open_envelope(env, bid, NodeId("ke-customs"), outsider.service.keys.decryption)


async def test_two_bulletins_with_one_sequence_number_in_one_transaction_are_refused(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    first, second = envelope_from(a, seq=1), envelope_from(a, seq=1)
    status, body, _ = await b.fed_post(a, batch(envelope_bytes(first), envelope_bytes(second)))
    assert status == 409 and body["type"].endswith("Equivocation")
    assert await stored(b) == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/fed/v1/envelopes", b'{"txn":{"x":1},"envelopes":[]}'),
        ("/fed/v1/envelopes", b'{"txn":"t","envelopes":[]}'),
        ("/fed/v1/envelopes", b'{"txn":"t","envelopes":[],"envelopes":[]}'),
        ("/fed/v1/envelopes", b'{"txn":"t","envelopes":[{"header":1.5}]}'),
        ("/fed/v1/envelopes", b"not json"),
        ("/fed/v1/channels/c2c/accept", b'{"channel":"c2c"}'),
    ],
)
async def test_malformed_federation_requests_get_422(make_federation: MakeFederation, path: str, body: bytes) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    status, problem, ctype = await b.fed_post(a, body, path=path)
    assert status == 422 and ctype == "application/problem+json", problem
    assert await stored(b) == 0


@pytest.mark.parametrize("after", ["--1", "-5", "x", "1e3"])
async def test_bad_log_positions_get_422(make_federation: MakeFederation, after: str) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    ctx = peer_context(a.service.fed.node(a.id), b.config.keys_dir / "tls.crt", b.config.keys_dir / "tls.key")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"{a.config.endpoint}/fed/v1/channels/c2c/events?after={after}") as resp,
    ):
        assert resp.status == 422 and resp.content_type == "application/problem+json"


async def test_an_event_past_a_gap_whose_owner_is_not_in_the_roster_is_refused(make_federation: MakeFederation) -> None:
    """There is no node to fetch the gap from: a 422 refusal, audited, not a 503 its sender would
    retry for ever (it was 503), and nothing stored."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    state = nl.service.channels.state("c2c")
    event = sign_event(
        channel="zz-unknown",
        owner="zz-nowhere",
        pos=1,
        prev=state.hash,
        at=timestamp(),
        change={"type": "close"},
        key=nl.service.keys.signing,
    )
    before = await rejections(ke)
    body = json.dumps({"txn": "t1", "events": [event.model_dump(mode="json")], "envelopes": []}).encode()
    status, problem, ctype = await ke.fed_post(nl, body)
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert "zz-nowhere is not in the roster" in json.dumps(problem)
    assert await rejections(ke) == before + 1
    assert "zz-unknown" not in [s.channel for s in ke.service.channels.all()]
    async with ke.service.store.read() as conn:
        assert (
            await conn.execute(
                sa.select(sa.func.count()).select_from(channel_events).where(channel_events.c.channel == "zz-unknown")
            )
        ).scalar_one() == 0


async def test_a_pushed_log_that_does_not_name_the_receiver_is_refused(make_federation: MakeFederation) -> None:
    """A roster node sharing no channel with the receiver pushed 50 channels of its own: all were
    kept, audited and listed to the receiver's administrators. Now refused with nothing kept; a
    log that names the receiver in a later event of the same batch (an invitation) is kept."""
    fed = await make_federation(nodes=THREE)
    ke, outsider = fed["ke-customs"], fed["wco-rilo"]
    assert all(outsider.id not in s.involved for s in ke.service.channels.all())  # no channel in common
    create = ke.service.channels.events("c2c")[0].change.model_dump(mode="json")
    create["policy"]["agencies"] = ["international", "customs"]

    def event(channel: str, pos: int, change: dict[str, Any], prev: str | None = None) -> Any:
        signed = sign_event(
            channel=channel, owner=outsider.id, pos=pos, prev=prev, at=timestamp(), change=change,
            key=outsider.service.keys.signing,
        )  # fmt: skip
        return signed

    unrelated = [event(f"unrelated-{i}", 0, create).model_dump(mode="json") for i in range(50)]
    before = await rejections(ke)
    status, problem, ctype = await ke.fed_post(
        outsider, json.dumps({"txn": "t1", "events": unrelated, "envelopes": []}).encode()
    )
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert "does not name this node" in json.dumps(problem)
    assert await rejections(ke) == before + 1
    assert not [s for s in ke.service.channels.all() if s.channel.startswith("unrelated-")]
    _, listed, _ = await ke.api("GET", "/api/v1/channels", user="admin")
    assert "unrelated-0" not in json.dumps(listed)
    async with ke.service.store.read() as conn:
        kept = (
            sa.select(sa.func.count()).select_from(channel_events).where(channel_events.c.channel.like("unrelated-%"))
        )
        assert (await conn.execute(kept)).scalar_one() == 0
    first = event("joint-op", 0, create)
    invite = event("joint-op", 1, {"type": "invite", "node": ke.id, "rights": ["read"]}, prev=event_hash(first))
    body = {"txn": "t2", "events": [first.model_dump(mode="json"), invite.model_dump(mode="json")], "envelopes": []}
    status, answer, _ = await ke.fed_post(outsider, json.dumps(body).encode())
    assert status == 200, answer
    assert ke.id in ke.service.channels.state("joint-op").involved


class ServedLog(StandIn):
    """Stands in for `member`'s node and answers every request for a channel's log with `events`:
    a partner that serves a log of its own making."""

    def __init__(self, member: Member, events: list[ChannelEvent]) -> None:
        super().__init__(member)
        self.events = events
        self.asked: list[str] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/fed/v1/channels/{channel}/events", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.asked.append(request.path_qs)
        return web.json_response({"events": [e.model_dump(mode="json") for e in self.events]})


async def test_a_log_fetched_for_a_cited_state_that_does_not_name_the_receiver_is_not_kept(
    make_federation: MakeFederation,
) -> None:
    """The pushed-log rule above, through the other door: a roster node signs an envelope citing a
    channel of its own that the receiver takes no part in, and serves that log when the receiver
    fetches the cited state (an honest owner answers 403). The log was kept before the envelope
    was refused as not addressed to the receiver; now the fetched log is refused with the
    envelope, audited once, and nothing of it is kept (found by a read-only review)."""
    fed = await make_federation(nodes=THREE)
    ke, outsider = fed["ke-customs"], fed["wco-rilo"]
    create = ke.service.channels.events("c2c")[0].change.model_dump(mode="json")
    create["policy"]["agencies"] = ["international", "customs"]
    first = sign_event(
        channel="its-own", owner=outsider.id, pos=0, prev=None, at=timestamp(), change=create,
        key=outsider.service.keys.signing,
    )  # fmt: skip
    state = apply_event(None, first, outsider.service.fed)
    svc = outsider.service
    readers = [(NodeId(n), svc.fed.encryption_key(n)) for n in state.readers]
    env = build_envelope(
        BULLETIN, state=state, author=svc.me, key=svc.keys.signing, seq=1, readers=readers, created=timestamp()
    )
    await fed.stop(outsider.id)
    before = await rejections(ke)
    async with ServedLog(outsider, [first]) as served:
        status, problem, ctype = await ke.fed_post(outsider, batch(envelope_bytes(env)))
    assert served.asked == ["/fed/v1/channels/its-own/events?after=-1"]  # the cited state was fetched
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert "does not name this node" in json.dumps(problem)
    assert await rejections(ke) == before + 1
    assert "its-own" not in [s.channel for s in ke.service.channels.all()]
    async with ke.service.store.read() as conn:
        kept = sa.select(sa.func.count()).select_from(channel_events).where(channel_events.c.channel == "its-own")
        assert (await conn.execute(kept)).scalar_one() == 0
    assert await stored(ke) == 0


async def test_a_refused_envelope_stores_no_envelope_and_keeps_the_owners_events_before_it(
    make_federation: MakeFederation,
) -> None:
    """docs/protocol.md section 9: the envelopes and receipts of a transaction are all or nothing;
    its events are the owner's signed log, which verifies on its own, and are kept."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    state = nl.service.channels.state("c2c")
    event = sign_event(
        channel="c2c",
        owner=nl.id,
        pos=state.pos + 1,
        prev=state.hash,
        at=timestamp(),
        change={"type": "set-export", "amber_strict": True},
        key=nl.service.keys.signing,
    )
    env = envelope_from(nl).model_dump(mode="json")
    env["signature"] = flip_b64(env["signature"], 5)
    body = json.dumps({"txn": "t1", "events": [event.model_dump(mode="json")], "envelopes": [env]}).encode()
    status, problem, ctype = await ke.fed_post(nl, body)
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert await stored(ke) == 0
    assert ke.service.channels.state("c2c").pos == state.pos + 1  # the owner's event, kept
    assert ke.service.channels.events("c2c")[-1] == event
