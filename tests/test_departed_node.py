"""A node that takes a roster version suspending it (docs/operations.md, "When this node is the one
suspended"): it installs what still applies, stops its federation work with one log line, refuses
to start on that version with one line naming the way out, and starts again once it holds a
version that reactivates it.

Before, its live install stopped half-way (UnknownPeer when it looked up its own keys): the
senders, the crypto workers, the adapters and the sweep of departed nodes never followed, so a node
revoked by the same version kept its sender here; after a restart it failed with "not in the
roster". Tested on SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import pytest

from exchange import errors
from exchange.clock import timestamp
from exchange.protocol.roster2_model import NodeStatus
from exchange.protocol.rostermigration import admit
from tests.conftest import MakeFederation, eventually
from tests.test_epoch_attacks import NODES
from tests.test_roster_gossip import CONVERGE, Authority, import_at, runs_on

MEMBERS = ("nl-customs", "ke-customs", "de-customs")


async def test_a_node_suspended_by_the_version_it_takes_stops_cleanly_and_comes_back(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await make_federation(nodes={n: NODES[n] for n in MEMBERS})
    de = fed["de-customs"]
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(de.config, version1)
    await eventually(runs_on(de, 1), timeout=CONVERGE, what="version 1 at de-customs")
    assert set(de.service.outbox.senders) == {"nl-customs", "ke-customs"}

    # Version 2 suspends de-customs and revokes ke-customs; de-customs takes it (an import beside it).
    departed: dict[str, NodeStatus] = {"de-customs": "suspended", "ke-customs": "revoked"}
    doc2 = admit(version1.roster, timestamp(), version1.roster.expires, statuses=departed)
    version2 = auth.sign(doc2)
    with caplog.at_level(logging.ERROR, logger="exchange.node"):
        await import_at(de.config, version2)
        await eventually(runs_on(de, 2), timeout=CONVERGE, what="version 2 at de-customs")

        async def stopped() -> bool:
            return not de.service.outbox.senders and "de-customs is suspended in roster version 2" in caplog.text

        await eventually(stopped, timeout=CONVERGE, what="de-customs stops its federation work")

    # Its users' posts are refused with a clear error until then (its partners would refuse them).
    status, body, _ = await de.api("POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": "x"})
    assert status == 403 and "not in the roster" in body["detail"], body

    # It does not start on that version, and says how to come back.
    await fed.stop("de-customs")
    with pytest.raises(errors.ConfigError, match="suspended in roster version 2: import the version that reactivates"):
        await fed.start("de-customs")

    # The way out: the version that reactivates it, imported while it is stopped; then it starts.
    doc3 = admit(doc2, timestamp(), doc2.expires, statuses={"de-customs": "active"})
    await import_at(de.config, auth.sign(doc3))
    await fed.start("de-customs")
    await eventually(runs_on(de, 3), timeout=CONVERGE, what="version 3 at de-customs")
    assert set(de.service.outbox.senders) == {"nl-customs"}  # ke-customs stays revoked
