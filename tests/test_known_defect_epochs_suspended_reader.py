"""Known defect, reproduced.

A channel owner whose channel still lists a reader that the held roster version SUSPENDS (only
revoked nodes are swept out of channels: exchange/service/revocation.py) refuses every current
member's epoch fetch: EpochBook.serve -> make_current -> wrap_key_ids -> support_of ->
fed.node(suspended) raises UnknownPeer, uncaught, so GET /fed/v1/channels/c2c/epochs answers 403
"not in the roster" to a legitimate member (ke-customs), which then cannot get epoch records
it lacks from the owner.

Found by a read-only review on 2026-12-01 and not fixed yet: a fix needs a protocol decision on
how a node judges what departed nodes signed (docs/protocol.md 6a.7 keeps their keys
`verify-only` for what a receiver already stores; 15.6 checks every epoch record from epoch 0).
Strict xfail: it fails today, and CI fails once it passes, so that the mark goes with the fix.
"""

from __future__ import annotations

import pytest

from exchange.clock import timestamp
from exchange.protocol.rostermigration import admit
from tests.conftest import MakeFederation, eventually
from tests.test_epoch_attacks import arrives, post, started
from tests.test_roster_gossip import CONVERGE, Authority, import_at, runs_on


@pytest.mark.xfail(strict=True, reason="known defect: a suspended reader makes the owner refuse members' epoch fetches")
async def test_the_owner_serves_epochs_to_members_while_a_reader_is_suspended(make_federation: MakeFederation) -> None:
    fed = await started(make_federation, "nl-customs", "ke-customs", "de-customs")
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    first = await post(nl, "before the suspension")
    await arrives(ke, first["id"])
    assert nl.service.epochs.latest("c2c") is not None  # a v2 epoch exists: every reader's support is held

    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(nl.config, version1)
    for member in (nl, ke, de):
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")
    version2 = auth.sign(
        admit(version1.roster, timestamp(), version1.roster.expires, statuses={"de-customs": "suspended"})
    )
    await import_at(nl.config, version2)
    for member in (nl, ke):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
    assert "de-customs" in nl.service.channels.state("c2c").members  # suspension is not a removal

    # ke-customs, a current member and reader, asks the owner for the channel's epoch records.
    await ke.service.epochs.pull("nl-customs", "c2c")  # PeerRefused 403 UnknownPeer here
