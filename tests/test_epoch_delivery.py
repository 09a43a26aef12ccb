"""Envelope v2 on real nodes over mutual TLS (docs/protocol.md, 15): epochs made by the owner,
v2 posted once every reader takes it, delivered, read, and v1 kept where a reader does not."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from exchange.store import bulletins
from exchange.store.tables import channel_epochs, epoch_keys
from tests.conftest import DEFAULT_NODES, MakeFederation, Member, eventually

THREE = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")} | {"de-customs": ("DE", "customs")}
V2 = {"envelope_v2": True}  # nodes announce v2 support (off by default in this release)
C2C = {
    "id": "c2c",
    "owner": "nl-customs",
    "agencies": ["customs"],
    "members": {
        "nl-customs": ["read", "post", "admin"],
        "ke-customs": ["read", "post"],
        "de-customs": ["read", "post"],
    },
}


async def post(member: Member, title: str) -> dict[str, Any]:
    status, body, _ = await member.api("POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": title})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


async def stored_envelope(member: Member, bid: str) -> dict[str, Any] | None:
    async with member.service.store.read() as conn:
        raw = await conn.scalar(sa.select(bulletins.c.envelope).where(bulletins.c.id == bid))
    return None if raw is None else json.loads(bytes(raw))


async def arrives(member: Member, bid: str) -> None:
    async def check() -> bool:
        return await stored_envelope(member, bid) is not None

    await eventually(check, timeout=20, what=f"{bid[:8]} at {member.id}")


async def reads(member: Member, bid: str) -> dict[str, Any]:
    status, body, _ = await member.api("GET", f"/api/v1/bulletins/{bid}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def test_v2_is_posted_delivered_and_read_by_every_reader(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=THREE, channels=[C2C], options=V2)
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    first = await post(nl, "owner's first")
    env = await stored_envelope(nl, first["id"])
    assert env is not None and env["header"]["v"] == 2 and env["header"]["epoch"]["n"] == 0
    assert "wraps" not in env and "recipients" not in env["header"]
    for member in (ke, de):
        await arrives(member, first["id"])
        shown = await reads(member, first["id"])
        assert shown["bulletin"]["title"] == "owner's first" and shown["signature_verified"]
        assert sorted(shown["recipients"]) == sorted(THREE)
    # A member that is not the owner fetches the epoch from the owner and posts under it.
    second = await post(ke, "from kenya")
    assert (await stored_envelope(ke, second["id"]) or {})["header"]["epoch"]["n"] == 0
    for member in (nl, de):
        await arrives(member, second["id"])
        assert (await reads(member, second["id"]))["bulletin"]["title"] == "from kenya"
    # The audit trace takes a v2 bulletin's readers from its epoch and asks each for its evidence.
    status, traced, _ = await nl.api("GET", f"/api/v1/audit/trace/{first['id']}", user="auditor")
    assert status == 200, traced
    assert sorted(e["node"] for e in traced["evidence"]) == sorted(THREE), traced
    assert all("error" not in e for e in traced["evidence"]), traced
    # One epoch, stored by every node with the key each opened from its own wrap.
    for member in (nl, ke, de):
        async with member.service.store.read() as conn:
            assert (await conn.scalar(sa.select(sa.func.count()).select_from(channel_epochs))) == 1
            assert (await conn.scalar(sa.select(sa.func.count()).select_from(epoch_keys))) == 1


async def test_a_post_only_author_sends_v1_and_is_wrapped_for_by_no_epoch(make_federation: MakeFederation) -> None:
    """Epoch keys go to readers only (15.1): a post-only member posts v1 to the readers, and the
    epoch of the channel does not wrap for it."""
    channel = {**C2C, "members": {**C2C["members"], "de-customs": ["post"]}}  # type: ignore[dict-item]
    fed = await make_federation(nodes=THREE, channels=[channel], options=V2)
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    from_owner = await post(nl, "to the readers")
    await arrives(ke, from_owner["id"])
    assert (await stored_envelope(nl, from_owner["id"]) or {})["header"]["v"] == 2
    assert await stored_envelope(de, from_owner["id"]) is None
    record = nl.service.epochs.record("c2c", 0)
    assert record is not None and record.readers == ["ke-customs", "nl-customs"]
    from_de = await post(de, "post-only")
    env = await stored_envelope(de, from_de["id"])
    assert env is not None and env["header"]["v"] == 1
    assert [r["node"] for r in env["header"]["recipients"]] == ["ke-customs", "nl-customs"]
    for member in (nl, ke):
        await arrives(member, from_de["id"])
        assert (await reads(member, from_de["id"]))["bulletin"]["title"] == "post-only"
    assert de.service.epochs.key("c2c", 0) is None


async def test_the_epoch_page_is_the_same_for_every_member_but_for_its_own_announcement(
    make_federation: MakeFederation,
) -> None:
    """The owner serves a new epoch to every reader at once (200 of them in a large channel), so
    the record and the announcements are made into JSON once and the page put together from them;
    what is served is still what is held: an announcement held anew is served anew."""
    fed = await make_federation(nodes=THREE, channels=[C2C], options=V2)
    nl = fed["nl-customs"]
    await post(nl, "makes the epoch")
    book = nl.service.epochs
    pages = {peer: json.loads(await book.serve(peer, "c2c", -1)) for peer in ("ke-customs", "de-customs")}
    held = [r.model_dump(mode="json") for r in book.records("c2c")]
    assert pages["ke-customs"]["epochs"] == pages["de-customs"]["epochs"] == held
    for peer, page in pages.items():  # every reader's announcement but the asker's own
        assert sorted(s["node"] for s in page["support"]) == sorted(set(THREE) - {peer})
        assert page["more"] is False and page["grants"] == []
    before = book._wire_json[("support", "de-customs")]
    anew = book._support["de-customs"] = book._support["de-customs"].model_copy()  # as when fetched again
    page = json.loads(await book.serve("ke-customs", "c2c", -1))
    assert [s for s in page["support"] if s["node"] == "de-customs"] == [anew.model_dump(mode="json")]
    assert book._wire_json[("support", "de-customs")][0] is anew is not before[0]  # made from what is held
