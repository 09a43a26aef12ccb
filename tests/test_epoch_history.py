"""A v2 channel's epoch records outlive the nodes that made or read them (docs/protocol.md, 15.6
rules 2 and 7): a member invited after a reader was revoked, or after the owner was revoked and its
successor took the channel over, takes the whole chain of epoch records and reads what is posted
next. A departed owner's records are history: each is kept only with a later record of an active
owner after it, whose `prev` pins it; alone, or in a chain that does not hold, they are refused
and nothing is kept. Announcements of departed readers are neither relayed nor taken.

Before, both newcomers failed: the page from epoch 0 relayed the revoked reader's announcement, and
its check raised UnknownPeer; the revoked owner's records needed a current key. Tested on SQLite
and PostgreSQL."""

from __future__ import annotations

import pytest

from exchange.clock import timestamp
from exchange.errors import EpochInvalid
from exchange.protocol.epoch import EPOCH_DOMAIN, _check_owner_signature, make_epoch
from exchange.protocol.epoch_model import EpochRecord
from exchange.protocol.epoch_support import make_support
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rostermigration import admit, propose
from exchange.protocol.rotation import rotate
from exchange.service import epochs as epochs_module
from tests import test_epoch_attacks as attacks
from tests.conftest import Federation, MakeFederation, eventually
from tests.test_channel_handover import owned_by
from tests.test_epoch_attacks import admin_invite_and_accept, arrives, post
from tests.test_key_rotation import rotate_on_host
from tests.test_roster_gossip import CONVERGE, Authority, import_at, runs_on

NODES = {
    "nl-customs": ("NL", "customs"),
    "ke-customs": ("KE", "customs"),
    "gb-customs": ("GB", "customs"),
    "fr-customs": ("FR", "customs"),
}
QUIET = {"envelope_v2": True, "epoch_prefetch_seconds": 0}  # epochs fetched when this test says


def channel(nl: list[str], ke: list[str], gb: list[str]) -> dict[str, object]:
    return {
        "id": "c2c",
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {"nl-customs": nl, "ke-customs": ke, "gb-customs": gb},
    }


async def on_version_1_with_epoch_0(fed: Federation) -> tuple[Authority, SignedRosterV2, EpochRecord]:
    """Roster version 1 (the migration) everywhere, and a bulletin from the owner: epoch 0."""
    nl, gb = fed["nl-customs"], fed["gb-customs"]
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(nl.config, version1)
    for member in fed.members.values():
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")
    early = await post(nl, "epoch 0")
    await arrives(gb, early["id"])
    epoch0 = nl.service.epochs.record("c2c", 0)
    assert epoch0 is not None and epoch0.owner == "nl-customs"
    return auth, version1, epoch0


async def test_a_newcomer_takes_the_epochs_of_a_channel_whose_reader_was_revoked(
    make_federation: MakeFederation,
) -> None:
    rp = ["read", "post"]
    fed = await make_federation(nodes=NODES, channels=[channel([*rp, "admin"], rp, rp)], options={"envelope_v2": True})
    nl, ke, gb, fr = (fed[n] for n in NODES)
    first = await post(nl, "before the revocation")
    await arrives(ke, first["id"])
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(nl.config, version1)
    for member in fed.members.values():
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")
    version2 = auth.sign(
        admit(version1.roster, timestamp(), version1.roster.expires, statuses={"gb-customs": "revoked"})
    )
    await import_at(nl.config, version2)
    for member in (nl, ke, fr):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")

    async def removed() -> bool:
        return "gb-customs" not in nl.service.channels.state("c2c").members

    await eventually(removed, timeout=CONVERGE, what="gb-customs removed")

    # The owner no longer relays the revoked reader's announcement; a relayed one is not taken.
    page = await nl.service.epochs.serve("ke-customs", "c2c", -1)
    assert b'"node":"gb-customs"' not in page.split(b'"support":', 1)[1]
    await fr.service.epochs.take_relayed_support([make_support("gb-customs", gb.service.keys.signing, None)])
    assert "gb-customs" not in fr.service.epochs._support

    await admin_invite_and_accept(nl, fr)
    welcome = await post(nl, "welcome")
    assert "fr-customs" in welcome["recipients"], welcome
    await arrives(fr, welcome["id"])
    records = fr.service.epochs.records("c2c")
    assert [r.n for r in records] == list(range(len(records))) and "gb-customs" in records[0].readers
    assert fr.service.epochs.key("c2c", records[-1].n) is not None
    assert fr.service.epochs.key("c2c", 0) is None  # no history granted: the earlier epochs stay closed


async def test_a_member_invited_after_a_handover_takes_the_revoked_owners_epochs_as_history(
    make_federation: MakeFederation,
) -> None:
    rpa = ["read", "post", "admin"]
    fed = await make_federation(nodes=NODES, channels=[channel(rpa, rpa, ["read", "post"])], options=QUIET)
    nl, ke, gb, fr = (fed[n] for n in NODES)
    auth, version1, epoch0 = await on_version_1_with_epoch_0(fed)

    version2 = auth.sign(
        admit(version1.roster, timestamp(), version1.roster.expires, statuses={"nl-customs": "revoked"})
    )
    await import_at(gb.config, version2)
    for member in (ke, gb, fr):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
    for member in (ke, gb):
        await eventually(owned_by(member, "ke-customs"), timeout=CONVERGE, what=f"the handover at {member.id}")
    await admin_invite_and_accept(ke, fr)
    state = ke.service.channels.state("c2c")
    successor = await ke.service.epochs.make_current(state)
    assert successor is not None and successor.n == 1 and successor.prev is not None

    # As a current owner's record, epoch 0 fails: nl-customs's key is no longer current. As history
    # (a later record of an active owner follows), its verify-only key checks it.
    with pytest.raises(EpochInvalid, match="owner's roster key"):
        _check_owner_signature(EPOCH_DOMAIN, epoch0, fr.service.fed)
    _check_owner_signature(EPOCH_DOMAIN, epoch0, fr.service.fed, history=True)

    # The attacker's side: the revoked owner's records alone, or a record it forged after its
    # revocation, in a chain that the successor's record does not extend, are refused; nothing kept.
    wire0 = epoch0.model_dump(mode="json")
    with pytest.raises(EpochInvalid, match="no longer current"):
        await fr.service.epochs.accept("c2c", [wire0])
    before = await ke.service.channels.ensure("c2c", epoch0.state)
    keys = {m.id: m.service.keys.decryption.public for m in (nl, ke, gb)}
    forged, _ = make_epoch(before, n=1, prev=epoch0, keys=keys, owner_key=nl.service.keys.signing, created=timestamp())
    wire1 = forged.model_dump(mode="json")
    with pytest.raises(EpochInvalid):
        await fr.service.epochs.accept("c2c", [wire0, wire1, successor.model_dump(mode="json")])
    with pytest.raises(EpochInvalid, match="no longer current"):
        await fr.service.epochs.accept("c2c", [wire0, wire1])
    assert fr.service.epochs.latest("c2c") is None

    # The chain as the successor serves it: taken, and the newcomer opens the current epoch.
    await fr.service.epochs.pull("ke-customs", "c2c")
    assert [r.n for r in fr.service.epochs.records("c2c")] == [0, 1]
    assert fr.service.epochs.key("c2c", 1) is not None and fr.service.epochs.key("c2c", 0) is None
    later = await post(ke, "after the handover")
    await arrives(fr, later["id"])


async def test_a_newcomer_takes_epochs_made_before_the_owner_and_a_reader_rotated_their_keys(
    make_federation: MakeFederation,
) -> None:
    """Epoch 0 is signed with the owner's old signing key and wraps for a reader's old encryption
    key, both `verify-only` once the rotations' overlap ended: a member invited afterwards still
    takes it (history, pinned by the owner's next record), and reads what is posted next."""
    rpa = ["read", "post", "admin"]
    fed = await make_federation(nodes=NODES, channels=[channel(rpa, ["read", "post"], ["read", "post"])], options=QUIET)
    nl, ke, fr = fed["nl-customs"], fed["ke-customs"], fed["fr-customs"]
    auth, version1, epoch0 = await on_version_1_with_epoch_0(fed)

    requests = [await rotate_on_host(nl, fed.folder, "signing"), await rotate_on_host(ke, fed.folder, "encryption")]
    doc2 = rotate(version1.roster, propose(version1.roster, timestamp(), version1.roster.expires), requests)
    doc3 = rotate(doc2, propose(doc2, timestamp(), doc2.expires), [], ["nl-customs", "ke-customs"])
    await import_at(nl.config, auth.sign(doc2), auth.sign(doc3))
    for member in fed.members.values():
        await eventually(runs_on(member, 3), timeout=CONVERGE, what=f"version 3 at {member.id}")
    assert fr.service.fed.signing_key_of("nl-customs", epoch0.signer) is None  # verify-only now

    await admin_invite_and_accept(nl, fr)
    welcome = await post(nl, "after the rotations")
    assert "fr-customs" in welcome["recipients"], welcome
    await arrives(fr, welcome["id"])
    held = fr.service.epochs.records("c2c")
    assert held[0].n == 0 and held[-1].n > 0 and fr.service.epochs.key("c2c", held[-1].n) is not None


async def test_a_run_of_history_across_pages_is_taken_once_pinned(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoked owner's epoch 0 ends a page and the successor's epoch 1, which pins it, starts
    the next (one record a page here; 100 in a node): the newcomer holds epoch 0 over until the
    pin comes, then takes both. Found by a read-only review of the change above."""
    rpa = ["read", "post", "admin"]
    fed = await make_federation(nodes=NODES, channels=[channel(rpa, rpa, ["read", "post"])], options=QUIET)
    ke, gb, fr = fed["ke-customs"], fed["gb-customs"], fed["fr-customs"]
    auth, version1, _ = await on_version_1_with_epoch_0(fed)
    revoked = admit(version1.roster, timestamp(), version1.roster.expires, statuses={"nl-customs": "revoked"})
    await import_at(gb.config, auth.sign(revoked))
    for member in (ke, gb, fr):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
    await eventually(owned_by(ke, "ke-customs"), timeout=CONVERGE, what="the handover at ke-customs")
    await admin_invite_and_accept(ke, fr)
    successor = await ke.service.epochs.make_current(ke.service.channels.state("c2c"))
    assert successor is not None and successor.n == 1
    monkeypatch.setattr(epochs_module, "EPOCH_PAGE", 1)
    await fr.service.epochs.pull("ke-customs", "c2c")
    assert [r.n for r in fr.service.epochs.records("c2c")] == [0, 1]


async def test_a_reader_demoted_and_given_read_again_gets_no_epoch_of_the_time_it_could_not_read(
    make_federation: MakeFederation,
) -> None:
    """de-customs holds a history grant; the owner takes its `read` away (`set-rights`: a change of
    readers, 15.1) and posts under the epoch made without it, then gives `read` back, with no new
    `grant-history`. Before, the grant survived the demotion, and at de-customs' next fetch of
    epochs the owner granted it the key of the epoch it had been kept out of: it then caught up
    and read what was posted while it could not (found by a read-only review). Now rights without
    `read` end the grant, as a removal does."""
    fed = await make_federation(
        nodes={n: attacks.NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[attacks.channel("nl-customs", "ke-customs", "de-customs")],
        options=attacks.V2,
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]

    async def rights(node: str, given: list[str]) -> None:
        body = {"node": node, "rights": given}
        status, answer, _ = await nl.api("POST", "/api/v1/channels/c2c/rights", user="admin", body=body)
        assert status == 200, answer

    first = await post(nl, "first")
    await arrives(de, first["id"])
    grant = {"node": "de-customs"}
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/grant-history", user="admin", body=grant)
    assert status == 200, body
    await rights("de-customs", ["post"])
    assert nl.service.channels.state("c2c").history_grants == frozenset()  # before: {"de-customs"}
    hidden = await post(nl, "while de-customs is no reader")
    await arrives(ke, hidden["id"])
    epoch = nl.service.epochs.latest("c2c")
    assert epoch is not None and "de-customs" not in epoch.readers

    await rights("de-customs", ["read", "post"])
    later = await post(nl, "after read is given back")
    await arrives(de, later["id"])  # de-customs fetched the new epoch from the owner: a grant would have come with it
    status, shown, _ = await de.api("GET", f"/api/v1/bulletins/{later['id']}")
    assert status == 200, shown
    assert de.service.epochs.key("c2c", epoch.n) is None
    assert (await de.api("GET", f"/api/v1/bulletins/{hidden['id']}"))[0] == 404
