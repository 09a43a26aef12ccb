"""Issue 14, must-show 6, on real nodes over mutual TLS (SQLite and PostgreSQL): in a federation of
six nodes where each log has three designated witnesses (docs/audit.md, section 12), a log that
rewrites its history is still caught as a split view by its designated witnesses, and `exchange
audit verify --quorum` refuses it even when the log had the rewritten history co-signed by
witnesses of its own choosing; a node's round pushes to its own witnesses and pulls the logs it
witnesses, and no other partner hears from it."""

from __future__ import annotations

from typing import Any

import pytest

from exchange.audit.witness_sets import witness_sets, witnesses_of
from exchange.cli.audit import verify_node
from exchange.errors import AuditTampered, SplitView
from exchange.node.metrics_api import HTTP_FIGURES
from exchange.protocol.roster import Federation as RosterView
from tests.conftest import Federation, MakeFederation, Member
from tests.test_audit_e2e import checkpoint, keys, post, rewrite_history, run_cli, target, wait_for

NODES = {
    "nl-customs": ("NL", "customs"),
    "ke-customs": ("KE", "customs"),
    "de-customs": ("DE", "customs"),
    "fr-customs": ("FR", "customs"),
    "sg-customs": ("SG", "customs"),
    "us-customs": ("US", "customs"),
}
K = 3
# The witness round is driven by the tests (`tick`), never by the timer.
OPTIONS = {"audit_witnesses": K, "audit_checkpoint_seconds": 3600}
LOG = "nl-customs"


async def six(make_federation: MakeFederation) -> Federation:
    return await make_federation(nodes=NODES, options=OPTIONS)


def audit_requests(member: Member) -> int:
    """Federation audit requests (push, pull, returned cosignature) this node has answered."""
    assert member.node is not None
    registry = member.node.app[HTTP_FIGURES].registry
    return int(
        sum(
            s.value
            for metric in registry.collect()
            for s in metric.samples
            if s.name == "exchange_http_requests_total" and s.labels["route"].startswith("/fed/v1/audit/")
        )
    )


def test_the_nodes_hold_the_sets_the_rule_gives() -> None:
    sets = witness_sets(NODES, K)
    assert all(len(sets.witnesses(n)) == K and n not in sets.witnesses(n) for n in NODES)


async def test_a_log_that_rewrites_its_history_is_caught_by_its_designated_witnesses_and_refused_by_the_quorum(
    make_federation: MakeFederation,
) -> None:
    fed = await six(make_federation)
    nl = fed[LOG]
    designated = witnesses_of(LOG, NODES, K)
    outsiders = [n for n in NODES if n != LOG and n not in designated]
    assert nl.service.audit.witness.my_witnesses() == list(designated)

    bid = await post(nl)
    status, _, _ = await nl.api("GET", f"/api/v1/bulletins/{bid}")  # nl's officer opens it
    assert status == 200
    await wait_for(nl, "bulletin.delivered", bid, count=len(NODES) - 1)
    witnessed = await checkpoint(nl)  # asks its designated witnesses, and only them
    assert witnessed["witnessing"] == dict.fromkeys(designated, "cosigned")
    # Good: three designated cosignatures meet a quorum of 3.
    report = await verify_node(target(nl), keys(nl), fresh=False, quorum=K, witnesses=K)
    assert report.quorum is not None and report.quorum.counted == tuple(sorted(designated))

    # nl erases a record from its log and starts again on a coherent, rewritten history.
    await rewrite_history(nl, fed, "bulletin.opened")
    nl = fed[LOG]
    await checkpoint(nl, witness=False)  # it signs the rewritten history, as it does each round

    # Each designated witness catches it when its round pulls nl; a non-designated one never pulls nl.
    first = await fed[designated[0]].service.audit.witness.tick()
    assert "split view" in first["pull"][LOG], first
    for w in designated[1:]:
        with pytest.raises(SplitView, match="split view"):
            await fed[w].service.audit.witness.pull(LOG)
    for o in outsiders:
        assert LOG not in (await fed[o].service.audit.witness.tick())["pull"]
    for w in designated:
        status, view, _ = await fed[w].api("GET", "/api/v1/audit/witnessed", user="auditor")
        assert status == 200 and [s["node"] for s in view["split_views"]] == [LOG], view

    # nl's log grows; its designated witnesses refuse to co-sign the fork when it pushes.
    await wait_for(nl, "bulletin.delivered", await post(nl), count=len(NODES) - 1)
    shown = await checkpoint(nl)
    assert sorted(shown["witnessing"]) == sorted(designated)
    assert all("split view" in outcome for outcome in shown["witnessing"].values()), shown["witnessing"]

    # nl shops for witnesses: the outsiders never saw its log (trust on first use) and co-sign it.
    cp = await nl.service.audit.keeper.checkpoint_at(shown["size"])
    asked = await nl.service.audit.witness.request_cosignatures(cp, outsiders)
    assert asked == dict.fromkeys(outsiders, "cosigned")
    # Counting every cosignature, the rewritten log would pass a quorum of 2 ...
    assert (await verify_node(target(nl), keys(nl), fresh=False, quorum=2)).latest is not None
    # ... the quorum policy counts designated witnesses only, and refuses it.
    with pytest.raises(AuditTampered, match="fewer than the quorum of 2; not counted, as not designated"):
        await verify_node(target(nl), keys(nl), fresh=False, quorum=2, witnesses=K)
    code, out, err = await run_cli(
        "audit", "verify", "--node", str(fed.folder / f"{LOG}.toml"), "--no-fresh", "--quorum", "2", "--json"
    )
    assert code == 1, (out, err)
    assert "not designated" in out and all(o in out for o in outsiders), out
    # An unmeetable quorum is refused as bad input before anything is asked.
    code, _, err = await run_cli("audit", "verify", "--node", str(fed.folder / f"{LOG}.toml"), "--quorum", str(K + 1))
    assert code != 0 and "cannot be met" in err, err


async def test_a_round_pushes_to_its_witnesses_and_pulls_the_logs_it_witnesses_only(
    make_federation: MakeFederation,
) -> None:
    fed = await six(make_federation)
    sets = witness_sets(NODES, K)
    for node in NODES:  # every log has grown since its partners last saw it
        await post(fed[node])
    for node in NODES:
        member = fed[node]
        witness = member.service.audit.witness
        assert witness.my_witnesses() == list(sets.witnesses(node))
        assert witness.logs_witnessed() == list(sets.witnessed_by(node))
        before = {n: audit_requests(fed[n]) for n in NODES}
        outcome: dict[str, Any] = await witness.tick()
        heard = {n for n in NODES if audit_requests(fed[n]) > before[n]}
        expected = set(sets.witnesses(node)) | set(sets.witnessed_by(node))
        assert heard == expected, (node, outcome)
        assert set(outcome["cosign"]) == set(sets.witnesses(node))
        assert set(outcome["pull"]) == set(sets.witnessed_by(node))
        # O(k): one push per witness, a pull and a returned cosignature per log witnessed.
        sent = sum(audit_requests(fed[n]) - before[n] for n in NODES)
        assert sent <= len(sets.witnesses(node)) * 3 + len(sets.witnessed_by(node)) * 2

    # The roster changes (a live install swaps what the node's `fed` holds, as roster gossip does):
    # the next round uses the sets of the roster held then.
    nl = fed[LOG]
    gone = sets.witnesses(LOG)[0]
    held = nl.service.fed.roster
    nl.service.fed.install(RosterView.index(held.model_copy(update={"nodes": [n for n in held.nodes if n.id != gone]})))
    now = witness_sets([n for n in NODES if n != gone], K)
    assert nl.service.audit.witness.my_witnesses() == list(now.witnesses(LOG)) != list(sets.witnesses(LOG))
    assert gone not in nl.service.audit.witness.my_witnesses()
    outcome = await nl.service.audit.witness.tick()
    assert set(outcome["pull"]) == set(now.witnessed_by(LOG))


async def test_a_push_from_a_log_this_node_does_not_witness_is_still_answered(
    make_federation: MakeFederation,
) -> None:
    """Any partner may ask any node to co-sign (docs/audit.md, section 12): it is checked and
    remembered like a designated witness's, and reported as not designated by the verifier."""
    fed = await six(make_federation)
    nl = fed[LOG]
    outsider = next(n for n in NODES if n != LOG and n not in witnesses_of(LOG, NODES, K))
    await post(nl)
    cp = await nl.service.audit.keeper.checkpoint()
    assert cp is not None
    assert await nl.service.audit.witness.request_cosignatures(cp, [outsider]) == {outsider: "cosigned"}
    report = await verify_node(target(nl), keys(nl), fresh=False, quorum=0, witnesses=K)
    assert report.quorum is not None and report.quorum.not_designated == (outsider,)
