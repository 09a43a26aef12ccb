"""A history grant (docs/protocol.md, 15.7) made for the grantee's key before that key was rotated.

The grantee refuses such a grant (rule 3: its wrap is not for the key the roster lists now), and
cannot open it anyway. Before, the owner counted the epochs of that grant as granted and never
made another: the grantee's every pull of epochs failed on the old grant, and it never read the
history it was granted. Now the owner counts only grants for the grantee's current key and makes a
new one, and the grantee skips a grant for another key (neither kept nor an error) and takes the
new one. Found by a read-only review. Real nodes over HTTPS, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from exchange.clock import timestamp
from exchange.crypto import DecryptionKey
from exchange.crypto.epoch import SUITE_X25519
from exchange.protocol.epoch import WrapKeyId
from exchange.protocol.rostermigration import propose
from exchange.protocol.rotation import rotate
from exchange.service import epoch_grants
from exchange.service.epoch_grants import accept_grants, ensure_grant
from tests.conftest import MakeFederation, eventually
from tests.test_epoch_attacks import admin_invite_and_accept, arrives, post, stored_wire
from tests.test_epoch_history import NODES, QUIET, channel, on_version_1_with_epoch_0
from tests.test_key_rotation import rotate_on_host
from tests.test_roster_gossip import CONVERGE, import_at, runs_on


async def test_a_grant_for_the_grantees_rotated_key_is_made_again_for_its_new_key(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    rpa = ["read", "post", "admin"]
    fed = await make_federation(nodes=NODES, channels=[channel(rpa, ["read", "post"], ["read", "post"])], options=QUIET)
    nl, fr = fed["nl-customs"], fed["fr-customs"]
    auth, version1, _ = await on_version_1_with_epoch_0(fed)
    early = (await post(nl, "before fr-customs joined"))["id"]
    await arrives(fed["gb-customs"], early)

    # fr-customs takes no epochs (and so no grant) until this test says.
    real_pull = fr.service.epochs.pull

    async def no_pull(peer: str, channel: str) -> int:
        return 0

    monkeypatch.setattr(fr.service.epochs, "pull", no_pull)
    await admin_invite_and_accept(nl, fr)
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": fr.id})
    assert status == 200, body
    await ensure_grant(nl.service.epochs, nl.service.channels.state("c2c"), fr.id)
    (old,) = [g for g in nl.service.epochs.grants["c2c"] if g.node == fr.id]
    assert old.kid == nl.service.fed.encryption_key(fr.id).kid

    # fr-customs rotates its encryption key; the overlap ends.
    requests = [await rotate_on_host(fr, fed.folder, "encryption")]
    doc2 = rotate(version1.roster, propose(version1.roster, timestamp(), version1.roster.expires), requests)
    doc3 = rotate(doc2, propose(doc2, timestamp(), doc2.expires), [], [fr.id])
    await import_at(nl.config, auth.sign(doc2), auth.sign(doc3))
    for member in fed.members.values():
        await eventually(runs_on(member, 3), timeout=CONVERGE, what=f"version 3 at {member.id}")
    new_kid = nl.service.fed.encryption_key(fr.id).kid
    assert new_kid != old.kid

    monkeypatch.setattr(fr.service.epochs, "pull", real_pull)
    await fr.service.epochs.pull(nl.id, "c2c")  # before: EpochInvalid, at every pull, for ever
    kids = sorted(g.kid for g in nl.service.epochs.grants["c2c"] if g.node == fr.id)
    assert kids == sorted([old.kid, new_kid])  # the owner made one for the new key
    assert [g.kid for g in fr.service.epochs.grants["c2c"]] == [new_kid]
    # The owner's answer carries only the grant for the current key; the old one, given anyway, is
    # skipped: neither kept nor an error.
    served = json.loads(await nl.service.epochs.serve(fr.id, "c2c", -1))
    assert [g["kid"] for g in served["grants"]] == [new_kid]
    assert await accept_grants(fr.service.epochs, "c2c", [old.model_dump(mode="json")]) == 0
    assert [g.kid for g in fr.service.epochs.grants["c2c"]] == [new_kid]
    assert fr.service.epochs.key("c2c", 0) is not None

    async def caught_up() -> bool:
        fr.service.catchup.wake()
        return await stored_wire(fr, early) is not None

    await eventually(caught_up, timeout=30, what="the earlier bulletin at fr-customs")
    status, shown, _ = await fr.api("GET", f"/api/v1/bulletins/{early}")
    assert status == 200, shown

    # A grantee changing its wrap key again and again (it announces its hybrid key at will) is
    # granted the history for a newer key at most once in REGRANT_EVERY after its second change.
    other = DecryptionKey.generate().public
    monkeypatch.setattr(epoch_grants, "wrap_key_id", lambda fed, node, support: WrapKeyId(SUITE_X25519, other.kid))
    monkeypatch.setattr(nl.service.epochs, "wrap_key", lambda node: other)
    state = nl.service.channels.state("c2c")
    await ensure_grant(nl.service.epochs, state, fr.id)
    assert sorted(g.kid for g in nl.service.epochs.grants["c2c"] if g.node == fr.id) == kids  # none made
    monkeypatch.setattr(epoch_grants, "REGRANT_EVERY", dt.timedelta(0))
    await ensure_grant(nl.service.epochs, state, fr.id)
    assert [g.kid for g in nl.service.epochs.grants["c2c"] if g.node == fr.id][-1] == other.kid
