"""Witness sets and the quorum policy, the pure part (docs/audit.md, section 12): the vectors in
tests/vectors/witness-sets-v1.json reproduce, bad witness counts and unmeetable quorums are
refused, a roster change moves only the witnesses of the nodes that came or went, and the policy
counts designated witnesses only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exchange.audit import quorum as policy
from exchange.audit.log import CheckpointInfo, KeyRing, LogReport
from exchange.audit.witness_sets import (
    DOMAIN,
    check_witness_count,
    rank,
    roster_nodes,
    tally,
    witness_sets,
    witnesses_of,
)
from exchange.crypto import SigningKey
from exchange.errors import AuditTampered, InvalidInput
from tests.vectors import make_witness_set_vectors as gen

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "witness-sets-v1.json").read_text())


def test_the_vectors_file_is_what_the_generator_writes() -> None:
    assert gen.render(gen.build()) == gen.FILE.read_text()


def test_ranks_reproduce() -> None:
    assert VECTORS["domain"].encode() == DOMAIN
    for pair, expected in VECTORS["ranks"].items():
        log, node = pair.split(" ")
        assert rank(log, node).hex() == expected


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: str(c["name"]))
def test_witness_sets_reproduce(case: dict[str, Any]) -> None:
    sets = witness_sets(case["nodes"], case["k"])
    for log, expected in case["witnesses"].items():
        assert list(sets.witnesses(log)) == expected
        assert list(witnesses_of(log, reversed(case["nodes"]), case["k"])) == expected  # order of the roster: none
        assert log not in expected and len(expected) == min(case["k"], len(case["nodes"]) - 1)
    for node, expected in case["witnessed_by"].items():
        assert list(sets.witnessed_by(node)) == expected


@pytest.mark.parametrize("k", VECTORS["bad_counts"])
def test_a_bad_witness_count_is_refused(k: Any) -> None:
    with pytest.raises(InvalidInput, match="witnesses per log"):
        check_witness_count(k)
    with pytest.raises(InvalidInput):
        witness_sets(["a-1", "b-2"], k)


def test_a_node_outside_the_roster_has_no_witnesses_and_witnesses_nothing() -> None:
    sets = witness_sets(gen.EIGHT, 3)
    assert sets.witnesses("xx-unknown") == () and sets.witnessed_by("xx-unknown") == ()


def test_a_roster_change_moves_only_the_witnesses_of_the_nodes_that_came_or_went() -> None:
    before = witness_sets(gen.EIGHT, 3)
    after = witness_sets([*gen.EIGHT, "jp-customs"], 3)
    for log in gen.EIGHT:
        old, new = before.witnesses(log), after.witnesses(log)
        if "jp-customs" not in new:
            assert new == old  # rendezvous hashing: nothing moves unless the newcomer outranks
        else:
            assert set(old) - set(new) == {old[-1]}  # it displaced the last-ranked witness only


def keyring(nodes: list[str]) -> KeyRing:
    return KeyRing(
        {n: SigningKey.generate().verify_key for n in nodes}, {"witness.example/w1": SigningKey.generate().verify_key}
    )


def report(node: str, witnesses: tuple[str, ...]) -> LogReport:
    return LogReport(node, True, 10, b"\0" * 32, (CheckpointInfo(10, b"\0" * 32, witnesses, "note"),))


def test_the_roster_nodes_are_read_from_a_keyring_without_the_c2sp_witnesses() -> None:
    keys = keyring(gen.EIGHT)
    assert roster_nodes("nl-customs", keys.witnesses("nl-customs")) == set(gen.EIGHT)
    assert policy.designated(keys, "nl-customs", 3) == witnesses_of("nl-customs", gen.EIGHT, 3)


def test_the_quorum_counts_designated_witnesses_and_reports_the_others() -> None:
    keys = keyring(gen.EIGHT)
    chosen = witnesses_of("nl-customs", gen.EIGHT, 3)
    outsider = next(n for n in gen.EIGHT if n not in chosen and n != "nl-customs")
    # Good: two designated witnesses meet a quorum of 2; the outsider and a C2SP witness are reported.
    cosigners = (chosen[0], chosen[1], outsider, "witness.example/w1")
    checked = policy.apply(report("nl-customs", cosigners), keys, 3, 2)
    assert checked.quorum == tally(cosigners, chosen)
    assert checked.quorum.counted == tuple(sorted(chosen[:2]))
    assert checked.quorum.not_designated == tuple(sorted([outsider, "witness.example/w1"]))
    # Bad: one designated witness and two others do not make a quorum of 2.
    with pytest.raises(AuditTampered, match="fewer than the quorum of 2; not counted, as not designated"):
        policy.apply(report("nl-customs", (chosen[0], outsider, "witness.example/w1")), keys, 3, 2)
    # Bad: a log with no checkpoint has no quorum.
    with pytest.raises(AuditTampered, match="no checkpoint"):
        policy.apply(LogReport("nl-customs", True, 0, b"\0" * 32, ()), keys, 3, 1)
    # No policy: nothing is required, the split is still reported.
    assert policy.apply(report("nl-customs", (outsider,)), keys, 3, 0).quorum is not None


@pytest.mark.parametrize(("quorum", "k"), [(4, 3), (-1, 3), (1, 0)])
def test_an_unmeetable_quorum_is_refused(quorum: int, k: int) -> None:
    with pytest.raises(InvalidInput):
        policy.check_policy(quorum, k)
