"""Known defect, reproduced.

A node suspended in the roster stays a member of its channels (only revoked nodes are removed:
exchange/service/revocation.py), and posting then fails in every channel it reads: the author
looks up the suspended reader's encryption key in a roster view that lists active nodes only,
and answers 403 UnknownPeer. The same holds for v2 channels
(tests/test_known_defect_epochs_suspended_reader.py).

Found on 2026-12-01 while checking a review's finding; not fixed: docs/protocol.md 6a.7 says only
active nodes are sent to, while 9.8 rule 10 wants a bulletin's recipients to be exactly the
state's readers; a fix decides between removing suspended members (as revoked ones are) and
leaving them out of the readers at both ends. Strict xfail: CI fails once it passes.
"""

from __future__ import annotations

import pytest

from exchange.clock import timestamp
from exchange.protocol.rostermigration import admit
from tests.conftest import MakeFederation, eventually
from tests.test_epoch_attacks import NODES, channel
from tests.test_roster_gossip import CONVERGE, Authority, import_at, runs_on


@pytest.mark.xfail(strict=True, reason="known defect: a suspended reader blocks posting in its channels")
async def test_members_still_post_to_a_channel_whose_reader_is_suspended(make_federation: MakeFederation) -> None:
    members = ("nl-customs", "ke-customs", "de-customs")
    fed = await make_federation(nodes={n: NODES[n] for n in members}, channels=[channel(*members)])
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(nl.config, version1)
    for member in (nl, ke, de):
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")
    suspended = admit(version1.roster, timestamp(), version1.roster.expires, statuses={"de-customs": "suspended"})
    await import_at(nl.config, auth.sign(suspended))
    for member in (nl, ke):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": "after"})
    assert status == 201, body  # 403 UnknownPeer: node 'de-customs' is not in the roster
