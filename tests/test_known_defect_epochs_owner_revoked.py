"""Known defect, reproduced.

Envelope v2 across a channel handover (docs/protocol.md 7.5 and 15): the epoch records made by
the revoked owner before the handover are refused by any node that did not already store them
(_check_owner_signature -> Federation.signing_key_of(..., stored=False): a departed node's keys
are only `verify-only`), so a node invited by the successor cannot take epoch 0 and therefore no
later epoch either (15.6 rule 4 needs the chain from 0). It gets no v2 bulletin of the channel.

Found by a read-only review on 2026-12-01 and not fixed yet: a fix needs a protocol decision on
how a node judges what departed nodes signed (docs/protocol.md 6a.7 keeps their keys
`verify-only` for what a receiver already stores; 15.6 checks every epoch record from epoch 0).
Strict xfail: it fails today, and CI fails once it passes, so that the mark goes with the fix.
"""

from __future__ import annotations

import pytest

from exchange.clock import timestamp
from exchange.protocol.epoch import EPOCH_DOMAIN, _check_owner_signature
from exchange.protocol.rostermigration import admit
from tests.conftest import MakeFederation, eventually
from tests.test_channel_handover import owned_by
from tests.test_roster_gossip import CONVERGE, Authority, holds, import_at, post, runs_on

NODES = {
    "nl-customs": ("NL", "customs"),
    "ke-customs": ("KE", "customs"),
    "gb-customs": ("GB", "customs"),
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
    },
}


async def handed_over_with_newcomer(make_federation: MakeFederation):  # type: ignore[no-untyped-def]
    fed = await make_federation(nodes=NODES, channels=[CHANNEL], options={"envelope_v2": True})
    nl, ke, gb, fr = (fed[n] for n in NODES)
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(gb.config, version1)
    for member in fed.members.values():
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")

    status, early = await post(nl, title="Before the revocation")
    assert status == 201, early
    await eventually(lambda: holds(gb, early["id"]), what="the early bulletin at gb")
    assert nl.service.epochs.latest("c2c") is not None  # epoch 0, made and signed by nl-customs

    version2 = auth.sign(
        admit(version1.roster, timestamp(), version1.roster.expires, statuses={"nl-customs": "revoked"})
    )
    await import_at(gb.config, version2)
    for member in (ke, gb, fr):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
    for member in (ke, gb):
        await eventually(owned_by(member, "ke-customs"), timeout=CONVERGE, what=f"the handover at {member.id}")

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
    assert status == 200, body

    async def joined() -> bool:
        return "fr-customs" in gb.service.channels.state("c2c").members

    await eventually(joined, timeout=CONVERGE, what="fr-customs a member at gb-customs")

    return ke, fr


@pytest.mark.xfail(strict=True, reason="known defect: a newcomer refuses the epochs of an owner revoked since")
async def test_a_member_invited_after_a_handover_can_pull_the_channels_epochs(make_federation: MakeFederation) -> None:
    """Defect A: the page of epoch 0 relays the support announcement of its reader nl-customs, now
    revoked; take_relayed_support -> verify_support -> fed.node('nl-customs') raises UnknownPeer and
    the whole pull fails (epoch_announcements.py:165 / epochs.py:301)."""
    _, fr = await handed_over_with_newcomer(make_federation)
    await fr.service.epochs.pull("ke-customs", "c2c")  # UnknownPeer: node 'nl-customs' is not in the roster
    assert fr.service.epochs.latest("c2c") is not None


@pytest.mark.xfail(strict=True, reason="known defect: a newcomer refuses the epochs of an owner revoked since")
async def test_a_member_invited_after_a_handover_accepts_the_revoked_owners_epoch_records(
    make_federation: MakeFederation,
) -> None:
    """Defect B: even without the relayed announcements, epoch 0 (made before the revocation) is
    refused by a node that did not store it: its wrap key ids need the revoked reader's support
    (StateUnavailable, 503: epochs.py:348 record_key_ids), and its owner signature is looked up
    with stored=False, which a departed node's verify-only keys never pass (epoch.py:155)."""
    ke, fr = await handed_over_with_newcomer(make_federation)
    held = ke.service.epochs.records("c2c")
    assert held[0].owner == "nl-customs"
    _check_owner_signature(EPOCH_DOMAIN, held[0], fr.service.fed)  # EpochInvalid: not the owner's roster key
    records = [r.model_dump(mode="json") for r in held]
    await fr.service.epochs.accept("c2c", records)  # EpochInvalid: not signed with the owner's roster key
    assert fr.service.epochs.latest("c2c") is not None
