"""The audit vectors (tests/vectors/audit-v1.json) reproduce byte for byte, and every negative is refused.

Each part is rebuilt here from the file's inputs with the project's code and compared byte for
byte: the entries as the store writes them, the tree, proofs, checkpoints and cosignatures, the
witness exchange and the audit API's answers. The export bundle is also written by a real store
and keeper (`LogEntries.export_lines`, what `exchange audit export` saves) and compared line for
line; only its `exported_at` differs, as it is the clock's. The recorded witness requests are fed to
the node's witness service (`exchange.service.audit.witness.Witness`) on both sides, which takes
them and answers as recorded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange import errors
from exchange.audit.checkpoint import (
    Checkpoint,
    cosign,
    cosignatures,
    log_origin,
    open_checkpoint,
    sign_checkpoint,
    verify_cosignature,
    witness_name,
)
from exchange.audit.events import EVENT_KINDS
from exchange.audit.log import BundleCheck, KeyRing
from exchange.audit.note import parse_note, parse_signature_line
from exchange.audit.witness import Seen, open_logs_checkpoint, parse_cosign_request, parse_cosignature, split_detail
from exchange.crypto import SigningKey, b64d, b64e, strict_loads
from exchange.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from exchange.model import NodeId
from exchange.protocol.roster import Federation
from exchange.service.audit.entries import LogEntries
from exchange.service.audit.keeper import LogKeeper
from exchange.service.audit.witness import Witness
from exchange.store import Store, audit_checkpoints
from exchange.store.writer import AuditBuffer
from tests.vectors import make_audit_vectors as gen
from tests.vectors.make_vectors import recorded_federation, render, signing_key

RAW = gen.FILE.read_text("utf-8")
V: dict[str, Any] = strict_loads(RAW)
INPUTS, OUTPUTS = V["inputs"], V["outputs"]
NEGATIVES: list[dict[str, Any]] = OUTPUTS["negatives"]


@pytest.fixture(scope="module")
def fed() -> Federation:
    return recorded_federation(gen.load_v1()["outputs"])


@pytest.fixture(scope="module")
def keys(fed: Federation) -> KeyRing:
    return KeyRing.from_federation(fed)


def key_of(part: dict[str, Any]) -> SigningKey:
    return SigningKey(b64d(part["ed25519_private"]))


def leaves() -> list[bytes]:
    return [b64d(e["leaf_hash"]) for e in OUTPUTS["entries"]]


def test_the_generator_reproduces_the_file() -> None:
    assert render(gen.build(gen.load_v1())) == RAW


def test_every_event_kind_has_an_entry() -> None:
    assert {e["event"] for e in INPUTS["entries"]} == set(EVENT_KINDS)


def test_entries_are_the_bytes_the_store_writes() -> None:
    buffer = AuditBuffer(next_idx=0)
    for entry in INPUTS["entries"]:
        buffer.add(entry)
    for row, out in zip(buffer.rows, OUTPUTS["entries"], strict=True):
        assert row["entry"].decode("utf-8") == out["jcs"]
        assert b64e(row["leaf_hash"]) == out["leaf_hash"] == b64e(leaf_hash(out["jcs"].encode("utf-8")))
        assert json.loads(out["jcs"])["idx"] == out["idx"] == row["idx"]


def test_tree_roots_and_proofs() -> None:
    hashes = leaves()
    frontier = Frontier()
    assert b64e(frontier.root()) == OUTPUTS["tree"]["empty_root"] == b64e(EMPTY_ROOT)
    for leaf, expected in zip(hashes, OUTPUTS["tree"]["roots"], strict=True):
        frontier.append(leaf)
        assert {"size": frontier.size, "root": b64e(frontier.root())} == expected
    roots = {r["size"]: b64d(r["root"]) for r in OUTPUTS["tree"]["roots"]}
    for case in OUTPUTS["inclusion"]:
        i, n = case["index"], case["size"]
        assert [b64e(p) for p in inclusion_proof(hashes[:n], i)] == case["proof"]
        verify_inclusion(hashes[i], i, n, [b64d(p) for p in case["proof"]], roots[n])
    for case in OUTPUTS["consistency"]:
        m, n = case["from"], case["to"]
        assert [b64e(p) for p in consistency_proof(hashes[:n], m)] == case["proof"]
        verify_consistency(m, n, [b64d(p) for p in case["proof"]], roots[m], roots[n])
    sizes = {(c["index"], c["size"]) for c in OUTPUTS["inclusion"]}
    assert {(0, 1), (0, 8), (12, 13)} <= sizes  # a tree of one, a power of two, a lone last leaf
    assert {(1, 8), (8, 13), (13, 13), (16, gen.WHOLE)} <= {(c["from"], c["to"]) for c in OUTPUTS["consistency"]}


def test_checkpoints_and_cosignatures(keys: KeyRing) -> None:
    log_key = key_of(INPUTS["log"])
    witnesses = {w["node"]: key_of(w) for w in INPUTS["witnesses"]}
    for cp in OUTPUTS["checkpoints"]:
        text = Checkpoint(log_origin(gen.LOG_NODE), cp["size"], b64d(cp["root"])).text()
        assert text == cp["text"]
        assert cp["note"] == text + "\n" + cp["signature_line"]
        checkpoint, note = open_checkpoint(cp["full_note"], keys.log_key(gen.LOG_NODE), log_origin(gen.LOG_NODE))
        assert (checkpoint.size, b64e(checkpoint.root)) == (cp["size"], cp["root"])
        assert parse_note(cp["note"]).signatures[0].key_id.hex() == cp["key_id_hex"]
        lines = ""
        for c in cp["cosignatures"]:
            line = cosign(text, witness_name(c["witness"]), witnesses[c["witness"]], c["time"]).line()
            assert line == c["line"]
            assert c["signed_message"] == f"cosignature/v1\ntime {c['time']}\n{text}"
            sig = parse_signature_line(line.rstrip("\n"))
            assert sig.key_id.hex() == c["key_id_hex"]
            assert verify_cosignature(text, sig, c["key_name"], keys.log_key(c["witness"])) == c["time"]
            lines += line
        assert cp["full_note"] == cp["note"] + lines
        assert sorted(cosignatures(note, keys.witnesses(gen.LOG_NODE))) == sorted(
            c["key_name"] for c in cp["cosignatures"]
        )
        assert sign_checkpoint(checkpoint, log_key).render() == cp["note"]


def test_witness_exchange_is_what_the_witness_code_takes_and_answers(keys: KeyRing) -> None:
    """Each request parses as the witness routes parse it; each cosignature verifies; a witness
    replaying the steps reaches the same verdicts (co-sign, stale, co-sign)."""
    seen: dict[str, Seen | None] = {"ke-customs": None}
    for step in OUTPUTS["witness"]:
        answer = json.loads(step["response_body"])
        if step["request"] == "POST /fed/v1/audit/cosign":
            request = parse_cosign_request(json.loads(step["request_body"]))
            cp, note = open_logs_checkpoint(gen.LOG_NODE, request.checkpoint, keys.log_key(gen.LOG_NODE))
            verdict = split_detail(seen[step["to"]], cp, request.old_size, request.proof)
            if answer["status"] == "stale":
                assert verdict == answer
                continue
            assert verdict is None
            sig = parse_signature_line(answer["cosignature"].rstrip("\n"))
            verify_cosignature(note.text, sig, witness_name(step["to"]), keys.log_key(step["to"]))
            seen[step["to"]] = Seen(cp.size, cp.root, note.render(), "")
        elif step["request"].startswith("GET /fed/v1/audit/checkpoint"):
            cp, note = open_logs_checkpoint(gen.LOG_NODE, answer["checkpoint"], keys.log_key(gen.LOG_NODE))
            old = int(step["request"].rsplit("=", 1)[1])
            if old:
                verify_consistency(
                    old,
                    cp.size,
                    [b64d(p) for p in answer["proof"]],
                    b64d(OUTPUTS["tree"]["roots"][old - 1]["root"]),
                    cp.root,
                )
            else:
                assert answer["proof"] == []
        else:
            size, line = parse_cosignature(json.loads(step["request_body"]))
            assert answer == {"stored": True}
            text = next(c["text"] for c in OUTPUTS["checkpoints"] if c["size"] == size)
            verify_cosignature(
                text, parse_signature_line(line.rstrip("\n")), line.split(" ")[1], keys.log_key(step["from"])
            )


def test_api_answers_verify(keys: KeyRing) -> None:
    api = {k: json.loads(v) for k, v in OUTPUTS["api"].items()}
    inc = api["GET /api/v1/audit/proof/inclusion?index=9&size=13"]
    cp, _ = open_checkpoint(inc["checkpoint"], keys.log_key(gen.LOG_NODE), log_origin(gen.LOG_NODE))
    assert b64d(inc["leaf_hash"]) == leaf_hash(inc["entry"].encode("utf-8"))
    verify_inclusion(b64d(inc["leaf_hash"]), inc["index"], inc["size"], [b64d(p) for p in inc["proof"]], cp.root)
    con = api[f"GET /api/v1/audit/proof/consistency?from=8&to={gen.WHOLE}"]
    new, _ = open_checkpoint(con["checkpoint"], keys.log_key(gen.LOG_NODE), log_origin(gen.LOG_NODE))
    old = b64d(OUTPUTS["tree"]["roots"][7]["root"])
    verify_consistency(con["from"], con["to"], [b64d(p) for p in con["proof"]], old, new.root)
    assert api["GET /fed/v1/audit/checkpoint?from=0 (no checkpoint yet)"] == {"checkpoint": None, "proof": []}


@pytest.mark.parametrize("name", ["bundle", "bulletin_bundle"])
@pytest.mark.parametrize("batch", [True, False])
def test_bundles_verify(keys: KeyRing, fed: Federation, name: str, batch: bool) -> None:
    check = BundleCheck(keys=keys)
    lines = [line.encode("utf-8") for line in OUTPUTS[name]["lines"]]
    if batch:
        check.feed_lines(lines)
    else:
        for line in lines:
            check.feed_line(line)
    report = check.finish(quorum=2)
    assert report.complete == (name == "bundle")
    assert report.entries == (gen.WHOLE if name == "bundle" else 6)
    # The bundle's own roster, checked against the authority, gives the same verdict.
    anchored = BundleCheck(authority=signing_key("authority").verify_key)
    anchored.feed_lines(lines)
    assert anchored.finish(quorum=2).entries == report.entries


@pytest.fixture
async def exported(tmp_path: Path) -> AsyncIterator[list[str]]:
    """The vector's log written by a real store, signed by a real keeper at the vector's sizes, with
    the vector's cosignatures, then exported as `exchange audit export` saves it."""
    v1 = gen.load_v1()
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}")
    keeper = LogKeeper(gen.LOG_NODE, store, signing_key(gen.LOG_NODE), v1["outputs"]["roster"]["signed"])
    await keeper.start()
    try:
        entries = iter(INPUTS["entries"])
        for cp in OUTPUTS["checkpoints"]:
            while store.audit_size < cp["size"]:
                await store.audit(next(entries))
            signed = await keeper.checkpoint()
            assert signed is not None and signed.note == cp["note"]
            # Signed at the vector's time, as its cosignatures are dated (a log keeps none dated
            # before it signed the checkpoint, docs/audit.md 4).
            async with store.engine.begin() as conn:
                at = gen.SIGNED_AT[cp["size"]]
                await conn.execute(
                    sa.update(audit_checkpoints).where(audit_checkpoints.c.size == cp["size"]).values(at=at)
                )
            for c in cp["cosignatures"]:
                await keeper.add_cosignature(cp["size"], c["witness"], c["line"])
        # The log's side of the recorded pulls: the returned cosignatures are taken, and the
        # keeper's proofs are the recorded ones.
        fed = recorded_federation(v1["outputs"])
        witness = Witness(gen.LOG_NODE, store, signing_key(gen.LOG_NODE), fed, keeper, NoPeers(), list)
        for step in OUTPUTS["witness"]:
            if step["request"] == "POST /fed/v1/audit/cosignatures":
                await witness.store_cosignature(step["from"], json.loads(step["request_body"]))
            elif step["request"] == "GET /fed/v1/audit/checkpoint?from=13":
                proof = [b64e(p) for p in await keeper.consistency(13, gen.WHOLE)]
                assert proof == json.loads(step["response_body"])["proof"]
        inclusion = json.loads(OUTPUTS["api"]["GET /api/v1/audit/proof/inclusion?index=9&size=13"])
        assert [b64e(p) for p in await keeper.inclusion(9, 13)] == inclusion["proof"]
        chunks = [chunk async for chunk in LogEntries(keeper).export_lines()]
        partial = [chunk async for chunk in LogEntries(keeper).export_lines(OUTPUTS["bulletin_bundle"]["bulletin"])]
        yield [b"".join(chunks).decode("utf-8"), b"".join(partial).decode("utf-8")]
    finally:
        await keeper.close()
        await store.close()


class NoPeers:
    """A PeerTransport that no test here reaches: the steps are fed to the witness directly."""

    async def fetch(self, node: NodeId, path: str) -> Any:
        raise AssertionError(f"unexpected GET {path} to {node}")

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise AssertionError(f"unexpected POST {path} to {node}")


async def test_the_node_witness_takes_the_pushes_as_recorded(tmp_path: Path, fed: Federation) -> None:
    """ke-customs's witness service, given the recorded push bodies, answers as recorded (but for the
    cosignature's time, the clock's), and its cosignatures verify."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'witness.db'}")
    key = signing_key("ke-customs")
    keeper = LogKeeper("ke-customs", store, key)
    witness = Witness("ke-customs", store, key, fed, keeper, NoPeers(), list)
    try:
        pushes = [step for step in OUTPUTS["witness"] if step["request"] == "POST /fed/v1/audit/cosign"]
        assert len(pushes) == 3
        for step in pushes:
            answer = await witness.cosign(gen.LOG_NODE, json.loads(step["request_body"]))
            recorded = json.loads(step["response_body"])
            assert answer["status"] == recorded["status"]
            if answer["status"] == "stale":
                assert answer == recorded
                continue
            assert answer["status"] == "cosigned"
            cosigned = answer["cosignature"]
            text = parse_note(json.loads(step["request_body"])["checkpoint"]).text
            sig = parse_signature_line(cosigned.rstrip("\n"))
            verify_cosignature(text, sig, witness_name("ke-customs"), key.verify_key)
        seen = await witness.seen(gen.LOG_NODE)
        assert seen is not None and seen.size == gen.WHOLE
    finally:
        await store.close()


async def test_a_real_export_gives_the_vector_bundles(exported: list[str]) -> None:
    for text, name in zip(exported, ["bundle", "bulletin_bundle"], strict=True):
        lines = text.split("\n")
        assert lines.pop() == ""
        header, expected = json.loads(lines[0]), json.loads(OUTPUTS[name]["lines"][0])
        assert {**header, "exported_at": gen.EXPORTED_AT} == expected
        assert lines[1:] == OUTPUTS[name]["lines"][1:]


@pytest.mark.parametrize("negative", NEGATIVES, ids=[n["name"] for n in NEGATIVES])
def test_every_negative_is_refused_with_its_named_error(negative: dict[str, Any], keys: KeyRing) -> None:
    raised = gen.refuse(negative, keys, OUTPUTS["bundle"]["lines"])
    assert type(raised) is getattr(errors, negative["error"])
    assert raised.detail == negative["message"]


BUNDLE_NEGATIVES = [n for n in NEGATIVES if n["check"] == "bundle"]


@pytest.mark.parametrize("negative", BUNDLE_NEGATIVES, ids=[n["name"] for n in BUNDLE_NEGATIVES])
def test_bundle_negatives_fed_line_by_line_fail_the_same_way(negative: dict[str, Any], keys: KeyRing) -> None:
    raised = gen.refuse(negative, keys, OUTPUTS["bundle"]["lines"], batch=False)
    assert (type(raised).__name__, raised.detail) == (negative["error"], negative["message"])


def test_negatives_cover_what_the_issue_lists() -> None:
    names = {n["name"] for n in NEGATIVES}
    assert {
        "bundle-entry-changed",
        "bundle-leaf-hash-wrong",
        "inclusion-proof-hash-flipped",
        "consistency-proof-hash-flipped",
        "checkpoint-by-another-key",
        "cosignature-over-another-checkpoint",
        "bundle-gap",
    } <= names
    assert {n["check"] for n in NEGATIVES} == {
        "bundle",
        "checkpoint",
        "cosignature",
        "inclusion",
        "consistency",
        "witness",
    }
