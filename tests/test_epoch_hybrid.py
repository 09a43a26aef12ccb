"""Must-show 5 of issue 13: a channel that mixes a node with a hybrid (ML-KEM-768 + X25519) wrap
key and X25519-only nodes delivers to all of them, and the stored epoch shows the hybrid wrap."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.crypto import b64e
from exchange.crypto.content import os_random
from exchange.crypto.epoch import SUITE_X25519, SUITE_XWING, WRAP_SIZES, HybridDecryptionKey, hybrid_supported
from exchange.errors import EpochInvalid
from exchange.protocol.epoch_support import make_support, parse_support
from exchange.service.epoch_keyfile import HYBRID_KEY_FILE
from exchange.store.tables import channel_epochs, epoch_support
from tests.conftest import Federation, MakeFederation, eventually
from tests.test_epoch_delivery import C2C, THREE, V2, arrives, post, reads, stored_envelope

pytestmark = pytest.mark.skipif(not hybrid_supported(), reason="this cryptography cannot do ML-KEM-768 + X25519 HPKE")


async def started_with_hybrid_key(make_federation: MakeFederation, node: str) -> tuple[Federation, HybridDecryptionKey]:
    """Three nodes and channel c2c on envelope v2, `node` with a hybrid wrap key, started."""
    fed = await make_federation(nodes=THREE, channels=[C2C], options=V2, start=False)
    hybrid = HybridDecryptionKey.generate(os_random)
    (fed[node].config.keys_dir / HYBRID_KEY_FILE).write_text(b64e(hybrid.private_bytes()) + "\n")
    for n in fed.members:
        await fed.start(n)
    return fed, hybrid


async def test_a_channel_mixing_a_hybrid_node_and_x25519_nodes_delivers_to_both(
    make_federation: MakeFederation,
) -> None:
    fed, hybrid = await started_with_hybrid_key(make_federation, "ke-customs")
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    sent = await post(nl, "to a hybrid and two classic readers")
    for member in (ke, de):
        await arrives(member, sent["id"])
        assert (await reads(member, sent["id"]))["bulletin"]["title"] == "to a hybrid and two classic readers"
    env = await stored_envelope(ke, sent["id"])
    assert env is not None and env["header"]["v"] == 2
    # The epoch record as every node stores it: ke's wrap is hybrid, for its announced key.
    for member in (nl, ke, de):
        async with member.service.store.read() as conn:
            raw = await conn.scalar(sa.select(channel_epochs.c.record).where(channel_epochs.c.n == 0))
        assert raw is not None
        wraps = {w["node"]: w for w in json.loads(bytes(raw))["wraps"]}
        assert wraps["ke-customs"]["suite"] == SUITE_XWING and wraps["ke-customs"]["kid"] == hybrid.kid
        assert {wraps[n]["suite"] for n in ("nl-customs", "de-customs")} == {SUITE_X25519}
    record = ke.service.epochs.record("c2c", 0)
    assert record is not None
    wrap = record.wrap_for("ke-customs")
    assert wrap is not None and len(wrap.wrap) * 3 // 4 >= WRAP_SIZES[SUITE_XWING] - 2
    # And the hybrid node posts back to the classic ones.
    back = await post(ke, "from the hybrid node")
    for member in (nl, de):
        await arrives(member, back["id"])
        assert (await reads(member, back["id"]))["bulletin"]["title"] == "from the hybrid node"


async def test_a_relayed_older_announcement_does_not_downgrade_the_owners_wrap(
    make_federation: MakeFederation,
) -> None:
    """A member relays, with epoch records, an announcement of ke-customs from before it took a
    hybrid key: valid, signed with ke-customs' current roster key, and with no hybrid key. The
    owner kept it as if it had asked ke-customs itself, for an hour, and wrapped the next epoch
    for ke-customs with X25519 alone, the downgrade 15.4 rules out (found by a read-only review).
    A relayed announcement now serves readers checking wraps; the owner asks the node itself."""
    fed, hybrid = await started_with_hybrid_key(make_federation, "ke-customs")
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    # The owner holds no announcement of ke-customs yet, as for a new reader or one whose signing
    # key changed since (each is then asked for when it is needed, or taken from a relay).
    book = nl.service.epochs

    async def announced() -> bool:  # ke-customs' announcement, taken as the nodes start (slow under load)
        return "ke-customs" in book._support

    await eventually(announced, timeout=30, what="ke-customs' announcement at the owner")
    book._support.pop("ke-customs")
    book._fetched.pop("ke-customs", None)
    book._author_memo.clear()
    older = make_support("ke-customs", ke.service.keys.signing, None)  # as before its hybrid key
    await book.take_relayed_support([older.model_dump(mode="json")])
    ids = await book.wrap_key_ids(["ke-customs"], strict=False, owner=True)  # as make_current asks
    assert ids is not None and ids["ke-customs"].suite == SUITE_XWING and ids["ke-customs"].kid == hybrid.kid
    sent = await post(nl, "after a relayed older announcement")
    await arrives(ke, sent["id"])
    record = nl.service.epochs.latest("c2c")
    assert record is not None
    wrap = record.wrap_for("ke-customs")
    assert wrap is not None and wrap.suite == SUITE_XWING, wrap


async def test_a_relayed_older_announcement_does_not_downgrade_a_history_grant(
    make_federation: MakeFederation,
) -> None:
    """As above, for a history grant: the owner holds ke-customs' announcement only by relay, an
    older one without the hybrid key ke-customs announces now. Before, `ensure_grant` took it as
    it was (`support_of` without `owner`) and wrapped the grant for ke-customs' X25519 key, which
    15.12 rules out, and ke-customs refused the grant. Now the owner asks ke-customs itself."""
    rights = {"nl-customs": ["read", "post", "admin"], "ke-customs": ["post"], "de-customs": ["read", "post"]}
    post_only = {**C2C, "members": rights}
    fed = await make_federation(nodes=THREE, channels=[post_only], options=V2)
    nl, de = fed["nl-customs"], fed["de-customs"]

    async def change(action: str, body: dict[str, Any]) -> None:
        status, answer, _ = await nl.api("POST", f"/api/v1/channels/c2c/{action}", user="admin", body=body)
        assert status == 200, answer

    hidden = await post(nl, "epoch 0, before ke-customs reads")
    await arrives(de, hidden["id"])
    await change("rights", {"node": "ke-customs", "rights": ["read", "post"]})
    later = await post(nl, "epoch 1, ke-customs wrapped with X25519")
    await arrives(de, later["id"])
    # ke-customs takes a hybrid key; the owner then holds only a relayed announcement of it from
    # before, which still matches epoch 1's wrap for it, so no new epoch is made.
    await fed.stop("ke-customs")
    hybrid = HybridDecryptionKey.generate(os_random)
    (fed["ke-customs"].config.keys_dir / HYBRID_KEY_FILE).write_text(b64e(hybrid.private_bytes()) + "\n")
    await fed.start("ke-customs")
    ke, book = fed["ke-customs"], nl.service.epochs
    book._support.pop("ke-customs")
    book._fetched.pop("ke-customs", None)
    book._author_memo.clear()
    older = make_support("ke-customs", ke.service.keys.signing, None)
    await book.take_relayed_support([older.model_dump(mode="json")])
    await change("grant-history", {"node": "ke-customs"})
    await ke.service.epochs.pull("nl-customs", "c2c")
    grants = [g for g in book.grants.get("c2c", []) if g.node == "ke-customs"]
    assert grants and {(g.suite, g.kid) for g in grants} == {(SUITE_XWING, hybrid.kid)}, grants
    assert ke.service.epochs.key("c2c", 0) is not None


async def test_an_owner_with_a_hybrid_key_wraps_its_own_copy_for_it_and_makes_one_epoch(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel's owner holds the hybrid key. It wrapped its own copy of each epoch for its X25519
    key, since its own announcement is not among those it holds of others; it then refused that
    epoch as not the state's (its wrap should be hybrid), posted v1, and made a new epoch at each
    post and at each member's fetch: a member could grow the owner's store, log and memory without
    end (found by a read-only review). Now its wrap is hybrid, the channel goes to v2, and fetches
    make nothing more; and an epoch the owner would not take as current is never stored."""
    fed, hybrid = await started_with_hybrid_key(make_federation, "nl-customs")
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    sent = await post(nl, "from a hybrid owner")
    await arrives(ke, sent["id"])
    env = await stored_envelope(nl, sent["id"])
    assert env is not None and env["header"]["v"] == 2
    book = nl.service.epochs
    record = book.latest("c2c")
    assert record is not None
    own = record.wrap_for("nl-customs")
    assert own is not None and (own.suite, own.kid) == (SUITE_XWING, hybrid.kid), own
    made = len(book.records("c2c"))
    for _ in range(5):  # a member asks again and again
        await book.serve("ke-customs", "c2c", -1)
    assert len(book.records("c2c")) == made
    back = await post(ke, "from a classic member")
    await arrives(nl, back["id"])
    assert (await reads(nl, back["id"]))["bulletin"]["title"] == "from a classic member"

    # Should the owner's wraps and its own check of them ever disagree again, it stores no epoch.
    async with nl.service.store.read() as conn:
        stored = await conn.scalar(sa.select(sa.func.count()).select_from(channel_epochs))
    monkeypatch.setattr(type(book), "wrap_key", lambda self, node: self.fed.encryption_key(node))
    status, _, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/remove", user="admin", body={"node": "de-customs"}
    )  # one reader fewer: the state needs an epoch of its own
    assert status == 200
    state = nl.service.channels.state("c2c")
    with pytest.raises(EpochInvalid, match="does not check"):
        await book.make_current(state)
    await book.serve("ke-customs", "c2c", -1)  # served what is held, without a new epoch
    async with nl.service.store.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(channel_epochs)) == stored


async def test_a_relayed_older_announcement_does_not_replace_the_one_the_node_gave(
    make_federation: MakeFederation,
) -> None:
    """A pull keeps the announcements relayed with it at its end (`relayed_for`). One that the node
    itself gave meanwhile (asked when an epoch's wrap disagreed with the relayed one) stays: the
    older relayed one, valid but without the hybrid key, is not put back over it, in memory or
    stored (found by a read-only review of the change that made relayed announcements wait)."""
    fed, hybrid = await started_with_hybrid_key(make_federation, "ke-customs")
    de, ke = fed["de-customs"], fed["ke-customs"]
    book = de.service.epochs
    given = await book.support_of("ke-customs", strict=True, refresh=True)  # asked of ke itself
    assert given is not None and given.hybrid_key is not None
    older = make_support("ke-customs", ke.service.keys.signing, None)  # as before its hybrid key
    await book.keep_relayed({"ke-customs": older})
    assert book._support["ke-customs"] == given
    async with de.service.store.read() as conn:
        raw = await conn.scalar(sa.select(epoch_support.c.announcement).where(epoch_support.c.node == "ke-customs"))
    assert raw is not None and parse_support(bytes(raw)).hybrid_key == given.hybrid_key
    ids = await book.wrap_key_ids(["ke-customs"], strict=True)
    assert ids is not None and ids["ke-customs"].kid == hybrid.kid
