"""The audit log's pure parts (signed notes, checkpoints, cosignatures, proofs, log and bundle
verification, chain of custody) and its API: proofs, filters, roles and export on real nodes."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import random
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import exchange.cli.audit as cli_audit
from exchange.audit import events as ev, quorum as policy
from exchange.audit.checkpoint import (
    C2SP_MARK,
    Checkpoint,
    cosign,
    cosignatures,
    log_origin,
    open_checkpoint,
    sign_checkpoint,
    witness_name,
)
from exchange.audit.log import FORMAT, BundleCheck, KeyRing, LogReport, LogVerifier
from exchange.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    b64std_decode,
    key_id,
    parse_note,
    sign_note,
    verify_note,
)
from exchange.audit.trace import GAP, NONE, OK, Evidence, assemble, chain_of_custody, check_evidence
from exchange.audit.tree import TreeLevels, consistency_path, inclusion_path
from exchange.cli.audit import verify_node
from exchange.cli.client import Target
from exchange.cli.lines import MAX_LINE, READ_SIZE, read_lines
from exchange.crypto import (
    DecryptionKey,
    SigningKey,
    VerifyKey,
    b64d,
    b64e,
    canonical_json,
    generate_tls_identity,
    spki_pin,
)
from exchange.errors import AuditTampered, BadEntry, BadSignature, ExchangeError, InvalidInput
from exchange.keystore import read_file
from exchange.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from exchange.model import Roster
from exchange.protocol.roster import sign_roster
from exchange.store import AuditBuffer, audit_log
from tests.conftest import MakeFederation, eventually
from tests.test_architecture import SHELL_ONLY, imports_of

NODE, WITNESS, RELAYER = "nl-customs", "ke-customs", "de-customs"
LOG_KEY, WITNESS_KEY = SigningKey.generate(), SigningKey.generate()
KEYS = KeyRing({NODE: LOG_KEY.verify_key, WITNESS: WITNESS_KEY.verify_key})
BID = "ab" * 32


# -- known answers from other implementations -------------------------------------------------

# golang.org/x/mod/sumdb/note, note_test.go: the PeterNeumann key and signed note.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="


def _vkey(vkey: str) -> tuple[str, str, int, bytes]:
    name, kid, encoded = vkey.split("+", 2)
    raw = base64.b64decode(encoded)
    return name, kid, raw[0], raw[1:]


def test_go_sumdb_note_vector_verifies_and_signs_byte_for_byte() -> None:
    name, kid, sig_type, public = _vkey(GO_VKEY)
    assert sig_type == SIG_ED25519 and key_id(name, sig_type, public).hex() == kid
    note = parse_note(f"{GO_TEXT}\n\u2014 {name} {GO_SIG}\n")
    verify_note(note, name, VerifyKey(public))
    seed = base64.b64decode(GO_SKEY.split("+", 4)[-1])[1:]
    assert sign_note(GO_TEXT, name, SigningKey(seed)) == note.signatures[0]


@pytest.mark.parametrize(
    "vkey",
    [
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",  # transparency-dev/formats, type 0x01
        "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",  # same, type 0x04 (cosignature/v1)
    ],
)
def test_key_ids_match_transparency_dev_vectors(vkey: str) -> None:
    name, kid, sig_type, public = _vkey(vkey)
    assert sig_type in (SIG_ED25519, SIG_COSIGNATURE_V1)
    assert key_id(name, sig_type, public).hex() == kid


def test_cosignature_layout_matches_transparency_dev_timestamp_vector() -> None:
    """transparency-dev/formats TestCoSigV1Timestamp: key ID, then a big-endian u64 time, then 64 bytes."""
    raw = b64std_decode(
        "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA=="
    )
    assert len(raw) == 4 + 8 + 64 and struct.unpack(">Q", raw[4:12]) == (1727964367,)
    ours = cosign("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", "w", WITNESS_KEY, 1727964367)
    assert len(ours.key_id + ours.signature) == len(raw) and ours.signature[:8] == raw[4:12]


# -- checkpoints and cosignatures ------------------------------------------------------------


def _checkpoint(size: int = 1284, root: bytes = b"\x07" * 32) -> Checkpoint:
    return Checkpoint(log_origin(NODE), size, root)


def test_checkpoint_round_trip() -> None:
    cp = _checkpoint()
    text = sign_checkpoint(cp, LOG_KEY).render()
    assert text.startswith(f"exchange/audit/{NODE}\n1284\n{base64.b64encode(cp.root).decode()}\n\n\u2014 ")
    opened, note = open_checkpoint(text, LOG_KEY.verify_key, log_origin(NODE))
    assert opened == cp and note.render() == text
    cosigned = note.with_signatures(cosign(note.text, witness_name(WITNESS), WITNESS_KEY, 1_700_000_000))
    again = parse_note(cosigned.render())
    assert open_checkpoint(again, LOG_KEY.verify_key)[0] == cp
    assert cosignatures(again, {witness_name(WITNESS): WITNESS_KEY.verify_key}) == {
        witness_name(WITNESS): 1_700_000_000
    }
    assert cosignatures(again, {}) == {}  # lines of unknown keys are ignored


def test_every_flipped_byte_of_a_checkpoint_fails() -> None:
    data = sign_checkpoint(_checkpoint(), LOG_KEY).render().encode()
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        with pytest.raises(ExchangeError):
            open_checkpoint(parse_note(bytes(flipped)), LOG_KEY.verify_key, log_origin(NODE))


def test_every_flipped_byte_of_a_cosignature_fails_or_is_not_a_cosignature_any_more() -> None:
    note = sign_checkpoint(_checkpoint(), LOG_KEY)
    data = note.with_signatures(cosign(note.text, witness_name(WITNESS), WITNESS_KEY, 1_700_000_000)).render()
    raw = data.encode()
    offset = len(data[: data.rindex("\u2014")].encode())  # from the cosignature line on
    witnesses = {witness_name(WITNESS): WITNESS_KEY.verify_key}
    for i in range(offset, len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        try:
            found = cosignatures(parse_note(bytes(flipped)), witnesses)
        except ExchangeError:
            continue
        assert found == {}, f"byte {i} flipped still verifies"


def test_a_checkpoint_signed_by_another_key_or_for_another_log_is_refused() -> None:
    text = sign_checkpoint(_checkpoint(), WITNESS_KEY).render()
    with pytest.raises(BadSignature):
        open_checkpoint(text, LOG_KEY.verify_key)
    with pytest.raises(InvalidInput):
        open_checkpoint(sign_checkpoint(_checkpoint(), LOG_KEY).render(), LOG_KEY.verify_key, log_origin(WITNESS))


@pytest.mark.parametrize(
    "text",
    [
        "exchange/audit/x\n0012\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",  # leading zeros
        "exchange/audit/x\n12\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc\n",  # unpadded base64
        "exchange/audit/x\n12\nBwcH\n",  # root is not 32 bytes
        "exchange/audit/x\n12\n",  # no root
        "exchange/audit/x\n99999999999999999999\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
        "exchange audit/x\n12\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",  # space in origin
    ],
)
def test_malformed_checkpoint_texts_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        Checkpoint.parse(text)


@pytest.mark.parametrize(
    "data",
    [
        "text\n\u2014 k AAAAAAAA\n",  # no blank line
        "text\n\n",  # no signature
        "text\n\n\u2014 k AAAA\n",  # signature shorter than a key ID and a byte
        "te\x07xt\n\n\u2014 k AAAAAAAA\n",  # a control character
        "text\n\n\u2014 a+b AAAAAAAA\n",  # a plus in the key name
        "text\n\n- k AAAAAAAA\n",  # not an em dash
        "text\n\n\u2014 k AAAAAAAA",  # no final newline
    ],
)
def test_malformed_notes_are_refused(data: str) -> None:
    with pytest.raises(InvalidInput):
        parse_note(data)


# -- proofs from stored subtree levels -----------------------------------------------------------


def test_tree_levels_give_the_same_roots_and_proofs_as_exchange_merkle() -> None:
    rng = random.Random(5)
    leaves = [leaf_hash(rng.randbytes(8)) for _ in range(70)]
    tree = TreeLevels()
    for leaf in leaves:
        tree.append(leaf)
    for size in range(1, 71):
        root = root_from_leaf_hashes(leaves[:size])
        assert tree.root_at(size) == root
        for i in range(size):
            proof = inclusion_path(i, size, tree.root)
            assert proof == inclusion_proof(leaves[:size], i)
            verify_inclusion(leaves[i], i, size, proof, root)
        for old in range(1, size + 1):
            proof = consistency_path(old, size, tree.root)
            assert proof == consistency_proof(leaves[:size], old)
            verify_consistency(old, size, proof, tree.root_at(old), root)


# -- verifying a log ------------------------------------------------------------------------------

Row = tuple[int, bytes, bytes]  # idx, entry, stored leaf hash


def make_log(n: int) -> list[Row]:
    buffer = AuditBuffer(0)
    for i in range(n):
        # No "channel": these logs test hashes and proofs, not the entries' kinds.
        buffer.add(
            {"event": "bulletin.opened", "at": f"2026-01-01T00:00:{i % 60:02d}.000Z", "bulletin": BID, "user": f"u{i}"}  # type: ignore[typeddict-item]
        )
    return [(r["idx"], r["entry"], r["leaf_hash"]) for r in buffer.rows]


def checkpoint_note(rows: list[Row], size: int, key: SigningKey = LOG_KEY, witnessed: bool = True) -> str:
    note = sign_checkpoint(Checkpoint(log_origin(NODE), size, root_from_leaf_hashes([r[2] for r in rows[:size]])), key)
    if witnessed:
        note = note.with_signatures(cosign(note.text, witness_name(WITNESS), WITNESS_KEY, 1_700_000_000))
    return note.render()


def verify_rows(rows: list[Row], notes: list[str], *, quorum: int = 0) -> Any:
    verifier = LogVerifier(NODE, KEYS)
    for note in notes:
        verifier.checkpoint(note)
    for idx, entry, leaf in rows:
        verifier.entry(idx, entry, leaf)
    return verifier.finish(complete=True, quorum=quorum)


def rewritten(body: dict[str, Any]) -> tuple[bytes, bytes]:
    data = canonical_json(body)
    return data, leaf_hash(data)


LOG = make_log(40)
NOTES = [checkpoint_note(LOG, 16), checkpoint_note(LOG, 40)]


def test_an_untouched_log_verifies_with_its_checkpoints_and_cosignatures() -> None:
    report = verify_rows(LOG, NOTES, quorum=1)
    assert report.entries == 40 and report.tail == 0
    assert [c.size for c in report.checkpoints] == [16, 40] and report.latest.witnesses == (WITNESS,)
    assert verify_rows([*LOG, *make_log(41)[40:]], NOTES).tail == 1


def _tampered(kind: str) -> list[Row]:
    rows = list(LOG)
    k = 20
    if kind == "change":
        rows[k] = (k, rows[k][1].replace(b'"u20"', b'"u99"'), rows[k][2])
    elif kind == "delete":
        del rows[k]
    elif kind == "reorder":
        rows[k], rows[k + 5] = (k, rows[k + 5][1], rows[k + 5][2]), (k + 5, rows[k][1], rows[k][2])
    elif kind == "insert":
        forged, leaf = rewritten({"idx": k, "event": "bulletin.opened", "at": "2026-01-01T00:00:00.000Z", "user": "x"})
        rows = [*rows[:k], (k, forged, leaf), *((i + 1, e, h) for i, e, h in rows[k:])]
    elif kind == "delete-last":
        rows.pop()
    return rows


@pytest.mark.parametrize("kind", ["change", "delete", "reorder", "insert", "delete-last"])
def test_one_tampered_row_is_named(kind: str) -> None:
    with pytest.raises(BadEntry) as caught:
        verify_rows(_tampered(kind), NOTES)
    assert caught.value.index == (39 if kind == "delete-last" else 20), caught.value.detail
    assert caught.value.detail.startswith(f"entry {caught.value.index}:")


def test_a_consistent_rewrite_is_caught_by_the_checkpoint_and_located_between_checkpoints() -> None:
    """With the leaf hash and every index rewritten too, only the signed root tells; the first bad
    entry is then known to lie after the last checkpoint that still matches."""
    rows = list(LOG)
    body = json.loads(rows[20][1])
    data, leaf = rewritten({**body, "user": "someone-else"})
    rows[20] = (20, data, leaf)
    with pytest.raises(BadEntry) as caught:
        verify_rows(rows, NOTES)
    assert caught.value.index == 16 and "checkpoint 40" in caught.value.detail


def test_checkpoint_problems_are_tampering() -> None:
    other = make_log(40)
    other[3] = (3, *rewritten({**json.loads(other[3][1]), "user": "z"}))
    with pytest.raises(AuditTampered, match="split view"):
        verify_rows(LOG, [checkpoint_note(LOG, 40), checkpoint_note(other, 40)])
    with pytest.raises(AuditTampered, match="not validly signed"):
        verify_rows(LOG, [checkpoint_note(LOG, 40, key=WITNESS_KEY)])
    good = NOTES[1]
    at = len(good) - 8  # inside the cosignature's Ed25519 signature, not its key ID
    broken = good[:at] + ("A" if good[at] != "A" else "B") + good[at + 1 :]
    with pytest.raises(AuditTampered, match="cosignature"):
        verify_rows(LOG, [broken])
    with pytest.raises(AuditTampered, match="quorum"):
        verify_rows(LOG, [checkpoint_note(LOG, 40, witnessed=False)], quorum=1)


def test_proven_entries_and_consistency_proofs() -> None:
    leaves = [r[2] for r in LOG]
    verifier = LogVerifier(NODE, KEYS)
    verifier.checkpoint(NOTES[0])
    verifier.checkpoint(NOTES[1])
    verifier.consistency(16, 40, consistency_proof(leaves, 16))
    for i in (3, 17, 39):
        verifier.proven_entry(i, LOG[i][1], 40, inclusion_proof(leaves, i))
    assert verifier.finish(complete=False).entries == 3
    with pytest.raises(BadEntry):
        verifier.proven_entry(5, LOG[5][1], 40, inclusion_proof(leaves, 6))
    with pytest.raises(AuditTampered):
        verifier.consistency(16, 40, consistency_proof(leaves, 15))
    lonely = LogVerifier(NODE, KEYS)
    lonely.checkpoint(NOTES[0])
    lonely.checkpoint(NOTES[1])
    with pytest.raises(AuditTampered, match="no consistency proof"):
        lonely.finish(complete=False)


# -- export bundles -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roster() -> tuple[Any, SigningKey]:
    authority = SigningKey.generate()
    nodes = []
    for node, key in ((NODE, LOG_KEY), (WITNESS, WITNESS_KEY)):
        _, cert = generate_tls_identity(node, dt.datetime.now(dt.UTC))
        dec = DecryptionKey.generate()
        nodes.append(
            {
                "id": node,
                "name": node,
                "country": "NL",
                "agency": "customs",
                "endpoint": "https://127.0.0.1:1",
                "signing_key": b64e(key.verify_key.raw),
                "signing_kid": key.kid,
                "encryption_key": b64e(dec.public.raw),
                "encryption_kid": dec.kid,
                "tls_cert": cert.decode(),
                "tls_pin": spki_pin(cert),
            }
        )
    body = {"v": 1, "federation": "t", "version": 1, "issued": "2026-01-01T00:00:00.000Z"}
    signed = sign_roster(Roster.model_validate({**body, "authority_kid": authority.kid, "nodes": nodes}), authority)
    return signed.model_dump(mode="json"), authority


def bundle_lines(signed_roster: Any, rows: list[Row] = LOG, notes: list[str] = NOTES) -> list[str]:
    header = {"type": "header", "format": FORMAT, "node": NODE, "origin": log_origin(NODE), "complete": True}
    lines = [{**header, "size": len(rows), "exported_at": "2026-01-01T00:00:00.000Z", "roster": signed_roster}]
    lines += [{"type": "checkpoint", "note": n} for n in notes]
    lines += [{"type": "entry", "idx": i, "entry": e.decode(), "leaf_hash": b64e(h)} for i, e, h in rows]
    lines += [{"type": "end", "entries": len(rows)}]
    return [json.dumps(x) for x in lines]


def test_an_export_bundle_verifies_offline_against_the_authority(roster: tuple[Any, SigningKey]) -> None:
    signed, authority = roster
    check = BundleCheck(authority=authority.verify_key)
    for line in bundle_lines(signed):
        check.feed_line(line)
    report = check.finish(quorum=1)
    assert report.entries == 40 and not report.warnings

    unanchored = BundleCheck()
    for line in bundle_lines(signed):
        unanchored.feed_line(line)
    assert unanchored.finish().warnings

    stranger = BundleCheck(authority=SigningKey.generate().verify_key)
    with pytest.raises(AuditTampered, match="roster"):
        stranger.feed_line(bundle_lines(signed)[0])


def test_a_bundle_that_is_truncated_or_tampered_fails(roster: tuple[Any, SigningKey]) -> None:
    signed, authority = roster
    check = BundleCheck(authority=authority.verify_key)
    for line in bundle_lines(signed)[:-5]:
        check.feed_line(line)
    with pytest.raises(InvalidInput, match="truncated"):
        check.finish()
    check = BundleCheck(authority=authority.verify_key)
    with pytest.raises(BadEntry) as caught:
        for line in bundle_lines(signed, _tampered("reorder")):
            check.feed_line(line)
        check.finish()
    assert caught.value.index == 20


# -- chain of custody ---------------------------------------------------------------------------


def test_chain_of_custody_shows_each_step_and_a_missing_receipt_as_a_gap() -> None:
    at = "2026-01-01T10:00:00.000Z"
    author = Evidence(
        NODE,
        (
            {
                "idx": 1,
                "event": "bulletin.posted",
                "at": at,
                "bulletin": BID,
                "user": "officer",
                "seq": 1,
                "recipients": [NODE, WITNESS, "gb-avsec"],
            },
            {"idx": 2, "event": "bulletin.delivered", "at": at, "bulletin": BID, "to": WITNESS, "receipt_at": at},
        ),
    )
    ke = Evidence(
        WITNESS,
        (
            {"idx": 7, "event": "bulletin.received", "at": at, "bulletin": BID, "from": NODE},
            {"idx": 8, "event": "bulletin.opened", "at": at, "bulletin": BID, "user": "officer"},
        ),
    )
    gb = Evidence("gb-avsec", ({"idx": 3, "event": "bulletin.received", "at": at, "bulletin": BID, "from": NODE},))
    trace = chain_of_custody(BID, "c2a", NODE, [NODE, WITNESS, "gb-avsec"], [author, ke, gb])
    assert trace.posted.status == OK
    ke_leg, gb_leg = trace.legs
    assert [s.status for s in ke_leg.steps] == [OK, OK, OK, OK]
    assert [s.status for s in gb_leg.steps] == [OK, OK, GAP, NONE]
    assert [(s.kind, s.node) for s in trace.gaps] == [("receipt", NODE)]
    silent = chain_of_custody(BID, "c2a", NODE, [NODE, WITNESS], [author, Evidence(WITNESS, error="unreachable")])
    assert [s.kind for s in silent.gaps] == ["received"] and "unreachable" in silent.gaps[0].detail


def test_one_entry_naming_several_recipients_proves_each_ones_step_and_no_other() -> None:
    """This release writes one 'bulletin.sent_to' and one 'bulletin.delivered_to' per bulletin for
    the recipients of a group commit; a log may still hold the one-recipient kinds before them.
    Each recipient's leg is proven by the entry that names it, and by no entry that does not."""
    at, later = "2026-01-01T10:00:00.000Z", "2026-01-01T10:00:01.000Z"
    readers = [WITNESS, "gb-avsec", "fr-customs", "us-cbp"]
    two = {"gb-avsec": "t1", "fr-customs": "t2"}
    author = Evidence(
        NODE,
        (
            {"idx": 1, "event": "bulletin.posted", "at": at, "bulletin": BID, "user": "o", "seq": 1, "recipients": []},
            {"idx": 2, "event": "bulletin.sent", "at": at, "bulletin": BID, "to": WITNESS, "txn": "t0"},
            {"idx": 3, "event": "bulletin.sent_to", "at": at, "bulletin": BID, "to": two},
            {"idx": 4, "event": "bulletin.delivered", "at": later, "bulletin": BID, "to": WITNESS, "receipt_at": at},
            {"idx": 5, "event": "bulletin.delivered_to", "at": later, "bulletin": BID, "to": {"gb-avsec": later}},
        ),
    )
    got = {"idx": 9, "event": "bulletin.received", "at": at, "bulletin": BID, "from": NODE}
    received = [Evidence(r, (got,)) for r in readers]
    trace = chain_of_custody(BID, "c2a", NODE, [NODE, *readers], [author, *received])
    legs = {leg.recipient: leg for leg in trace.legs}
    assert [s.status for s in legs[WITNESS].steps][:3] == [OK, OK, OK]
    assert [s.status for s in legs["gb-avsec"].steps][:3] == [OK, OK, OK]
    assert legs["gb-avsec"].step("sent").idx == 3 and legs["gb-avsec"].step("receipt").idx == 5
    assert legs["gb-avsec"].step("receipt").detail == f"gb-avsec's signed receipt of {later} held"
    assert [s.status for s in legs["fr-customs"].steps][:3] == [OK, OK, GAP]  # sent, never receipted
    assert [s.status for s in legs["us-cbp"].steps][:3] == [GAP, OK, GAP]  # named by no entry
    assert ev.sent_to(author.entries[2]) == two
    assert ev.delivered_to(author.entries[3]) == {WITNESS: at} and ev.delivered_to(author.entries[1]) == {}


def test_evidence_must_be_proven_in_a_checkpoint_of_the_node_that_sends_it() -> None:
    rows = make_log(5)
    leaves = [r[2] for r in rows]
    good: dict[str, Any] = {
        "node": NODE,
        "checkpoint": checkpoint_note(rows, 5),
        "entries": [{"idx": 2, "entry": rows[2][1].decode(), "proof": [b64e(p) for p in inclusion_proof(leaves, 2)]}],
    }
    assert check_evidence(good, BID, KEYS).entries[0]["user"] == "u2"
    with pytest.raises(AuditTampered):
        check_evidence({**good, "node": WITNESS}, BID, KEYS)  # another node's log key
    bad = {**good, "entries": [{**good["entries"][0], "idx": 3}]}
    with pytest.raises(AuditTampered):
        check_evidence(bad, BID, KEYS)
    with pytest.raises(AuditTampered, match="not about"):
        check_evidence(good, "cd" * 32, KEYS)


def test_the_pure_audit_modules_do_no_io_and_no_hazmat() -> None:
    pure = [
        "exchange.audit.note",
        "exchange.audit.checkpoint",
        "exchange.audit.tree",
        "exchange.audit.log",
        "exchange.audit.trace",
    ]
    for module in pure:
        bad = sorted(i for i in imports_of(module) if i.split(".")[0] in SHELL_ONLY or i.startswith(SHELL_ONLY))
        assert bad == [], module
        assert not any("cryptography" in i for i in imports_of(module)), module


# -- the API on a real node -------------------------------------------------------------------------

BULLETIN = {
    "kind": "alert",
    "handling": {"tlp": "AMBER", "no_onward_sharing": False},
    "title": "Zebra-striped consignment",
    "body": "Secret body text 7f3a",
}


async def test_proofs_filters_roles_and_export_through_the_api(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    status, first, _ = await nl.api("POST", "/api/v1/audit/checkpoint?witness=false", user="auditor")
    assert status == 200, first
    status, posted, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body=BULLETIN)
    assert status == 201
    bid = posted["id"]

    async def delivered() -> bool:
        query = f"event=bulletin.delivered_to&bulletin={bid}"
        _, page, _ = await nl.api("GET", f"/api/v1/audit/log?{query}", user="auditor")
        return len(page["entries"]) == 1

    await eventually(delivered, what="ke's receipt at nl")
    status, cp, _ = await nl.api("POST", "/api/v1/audit/checkpoint", user="auditor")
    assert status == 200 and cp["witnessing"] == {"ke-customs": "cosigned"} and cp["witnesses"] == ["ke-customs"]
    checkpoint, _ = open_checkpoint(cp["note"], nl.service.fed.verify_key("nl-customs"), log_origin("nl-customs"))

    # Inclusion of every entry, and consistency with the first checkpoint, checked here.
    for index in range(cp["size"]):
        status, got, _ = await nl.api("GET", f"/api/v1/audit/proof/inclusion?index={index}", user="auditor")
        assert status == 200
        entry = got["entry"].encode()
        assert json.loads(entry)["idx"] == index
        verify_inclusion(leaf_hash(entry), index, checkpoint.size, [b64d(p) for p in got["proof"]], checkpoint.root)
    status, got, _ = await nl.api("GET", f"/api/v1/audit/proof/consistency?from={first['size']}", user="auditor")
    assert status == 200
    verify_consistency(first["size"], cp["size"], [b64d(p) for p in got["proof"]], b64d(first["root"]), checkpoint.root)

    # Filters and paging.
    async def entries(query: str) -> list[dict[str, Any]]:
        status, page, _ = await nl.api("GET", f"/api/v1/audit/log?{query}", user="auditor")
        assert status == 200, page
        return list(page["entries"])

    chain = ["bulletin.posted", "bulletin.sent_to", "bulletin.delivered_to"]
    assert [e["event"] for e in await entries(f"bulletin={bid}")] == chain
    assert {e["event"] for e in await entries("event=bulletin.*")} == set(chain)
    assert all(e["event"] == "channel.changed" for e in await entries("channel=c2c&event=channel.changed"))
    # A recipient named as a key of a many-recipient entry's `to` is matched by `peer`, and a kind
    # ending in '*' takes both the one-recipient and the many-recipient kind.
    assert [e["event"] for e in await entries("peer=ke-customs&event=bulletin.delivered*")] == ["bulletin.delivered_to"]
    assert await entries("peer=gb-avsec&event=bulletin.delivered*") == []
    assert await entries("since=2999-01-01") == [] and await entries("until=2000-01-01") == []
    everything = await entries("limit=1000")
    pages, after = [], -1
    while after is not None:
        _, page, _ = await nl.api("GET", f"/api/v1/audit/log?limit=3&after={after}", user="auditor")
        pages += page["entries"]
        after = page["next"]
    assert pages == everything and [e["idx"] for e in pages] == list(range(len(pages)))

    # Auditors only; and malformed filters are refused.
    for user in ("officer", "admin"):
        status, problem, ctype = await nl.api("GET", "/api/v1/audit/log", user=user)
        assert status == 403 and ctype == "application/problem+json", problem
    status, _, _ = await nl.api("GET", "/api/v1/audit/log?since=yesterday", user="auditor")
    assert status == 422

    # A full export verifies, and no entry carries bulletin plaintext.
    target = Target(nl.config.endpoint, nl.tokens["auditor"], read_file(nl.config.keys_dir / "tls.crt").decode())
    report = await verify_node(target, KeyRing.from_federation(nl.service.fed), quorum=1)
    assert report.entries >= cp["size"] and report.latest_witnessed is not None
    for member in (nl, ke):
        async with member.service.store.read() as conn:
            raw = b"".join((await conn.execute(sa.select(audit_log.c.entry))).scalars())
        # The title and the body's words; not its "7f3a" alone, which a hex id may hold by chance.
        assert b"Zebra" not in raw and b"Secret body text" not in raw


def test_offline_verification_loads_neither_the_server_nor_the_database(
    roster: tuple[Any, SigningKey], tmp_path: Path
) -> None:
    """`exchange audit verify --bundle` needs only the pure verifier: no aiohttp server, no SQL."""
    signed, authority = roster
    bundle, key = tmp_path / "log.json", tmp_path / "authority.pub"
    bundle.write_text("\n".join(bundle_lines(signed)) + "\n")
    key.write_text(b64e(authority.verify_key.raw) + "\n")
    heavy = ("aiohttp.web", "sqlalchemy", "jinja2", "exchange.store", "exchange.service", "exchange.app")
    code = (
        "import sys\n"
        "from exchange.cli.main import main\n"
        "sys.argv = ['exchange', 'audit', 'verify', '--bundle', sys.argv[1], '--authority', sys.argv[2]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
        f"print('LOADED', [m for m in {heavy!r} if m in sys.modules], 'EXIT', code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(bundle), str(key)], capture_output=True, text=True)
    assert "LOADED [] EXIT 0" in proc.stdout, proc.stdout + proc.stderr


# -- the live node's identity ------------------------------------------------------------------


def other_nodes_bundle() -> list[bytes]:
    """A genuine, valid export of WITNESS's log (e.g. one the hostile node fetched or kept)."""
    rows = make_log(10)
    note = sign_checkpoint(
        Checkpoint(log_origin(WITNESS), 10, root_from_leaf_hashes([r[2] for r in rows])), WITNESS_KEY
    )
    header = {
        "type": "header",
        "format": FORMAT,
        "node": WITNESS,
        "origin": log_origin(WITNESS),
        "complete": True,
        "size": 10,
        "exported_at": "2026-01-01T00:00:00.000Z",
        "filter": None,
        "roster": None,
    }
    lines: list[Any] = [header, {"type": "checkpoint", "note": note.render()}]
    lines += [{"type": "entry", "idx": i, "entry": e.decode(), "leaf_hash": b64e(h)} for i, e, h in rows]
    lines += [{"type": "end", "entries": 10}]
    return [json.dumps(x).encode() for x in lines]


async def test_the_live_node_must_export_its_own_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit verify --node X.toml` took whatever log the node sent and said OK for it (found by a
    read-only review): a node with a tampered log could pass by serving another node's genuine one."""

    async def no_call(*_: Any, **__: Any) -> dict[str, Any]:
        return {}

    async def stream(_target: Target, _path: str) -> AsyncIterator[list[bytes]]:
        yield other_nodes_bundle()

    monkeypatch.setattr(cli_audit, "call", no_call)
    monkeypatch.setattr(cli_audit, "stream_lines", stream)
    target = Target("https://nl-customs.example:1", "token", "cert")  # the node file of NODE
    with pytest.raises(AuditTampered, match=f"served the audit log of '{WITNESS}', not of {NODE}"):
        await cli_audit.verify_node(target, KEYS, node=NODE)
    report = await cli_audit.verify_node(target, KEYS)  # the bundle itself is a genuine, valid log
    assert report.node == WITNESS


# -- a C2SP witness named like a roster node ------------------------------------------------------

OUTSIDER = SigningKey.generate()  # a C2SP witness outside the roster, of the log's choosing


def namesake_verified(keys: KeyRing, with_roster_witness: bool) -> LogReport:
    """A log of 8 entries whose checkpoint a C2SP key named exactly like the roster node WITNESS
    co-signed (and, with `with_roster_witness`, WITNESS itself)."""
    rows = make_log(8)
    note = sign_checkpoint(Checkpoint(log_origin(NODE), 8, root_from_leaf_hashes([r[2] for r in rows])), LOG_KEY)
    sigs = [cosign(note.text, WITNESS, OUTSIDER, 1_700_000_000)]  # key name: the bare node id
    if with_roster_witness:
        sigs.append(cosign(note.text, witness_name(WITNESS), WITNESS_KEY, 1_700_000_000))
    verifier = LogVerifier(NODE, keys)
    verifier.checkpoint(note.with_signatures(*sigs).render())
    for idx, entry, leaf in rows:
        verifier.entry(idx, entry, leaf)
    return verifier.finish(complete=True)


def test_a_c2sp_witness_named_like_a_roster_node_is_not_that_nodes_cosignature() -> None:
    """It counted as that node's, for the quorum policy and twice beside it (found by a read-only
    review): a log could meet `--quorum` with a witness of its own choosing."""
    keys = KeyRing({NODE: LOG_KEY.verify_key, WITNESS: WITNESS_KEY.verify_key}, {WITNESS: OUTSIDER.verify_key})
    alone = namesake_verified(keys, with_roster_witness=False)
    assert alone.latest is not None and alone.latest.witnesses == (C2SP_MARK + WITNESS,)
    votes = policy.apply(alone, keys, 1, 0).quorum
    assert votes is not None and WITNESS not in votes.counted
    both = namesake_verified(keys, with_roster_witness=True)
    assert both.latest is not None and both.latest.witnesses == (C2SP_MARK + WITNESS, WITNESS)


def test_a_recipient_cannot_prove_from_its_own_log_that_the_author_holds_its_receipt() -> None:
    """WITNESS withholds its receipt from NODE but writes, in its own log, a 'bulletin.delivered_to'
    naming itself: the trace showed the author holding it (found by a read-only review). Only a log
    that holds the receipt, the author's or a relayer's, proves it; the relayer WITNESS received it
    from still does, and is shown as the one holding it."""
    bid, at = "ab" * 32, "2026-12-01T00:00:00.000Z"
    posted = {
        "event": "bulletin.posted",
        "at": at,
        "bulletin": bid,
        "user": "o",
        "seq": 1,
        "recipients": [NODE, WITNESS],
    }
    author = Evidence(
        NODE,
        ({"idx": 1, **posted}, {"idx": 2, "event": "bulletin.sent_to", "at": at, "bulletin": bid, "to": {WITNESS: at}}),
    )
    claim = {"idx": 8, "event": "bulletin.delivered_to", "at": at, "bulletin": bid, "to": {WITNESS: at}}
    recipient = Evidence(
        WITNESS, ({"idx": 7, "event": "bulletin.received", "at": at, "bulletin": bid, "from": NODE}, claim)
    )
    receipt = chain_of_custody(bid, "c", NODE, [NODE, WITNESS], [author, recipient]).legs[0].step("receipt")
    assert (receipt.node, receipt.status) == (NODE, GAP), receipt
    relayed = Evidence(WITNESS, ({"idx": 7, "event": "bulletin.received", "at": at, "bulletin": bid, "from": RELAYER},))
    relayer = Evidence(RELAYER, (claim,))
    receipt = chain_of_custody(bid, "c", NODE, [NODE, WITNESS], [author, relayed, relayer]).legs[0].step("receipt")
    assert (receipt.node, receipt.status) == (RELAYER, OK), receipt


def test_another_recipient_cannot_vouch_for_a_receipt_withheld_from_the_author() -> None:
    """A third recipient, which got the bulletin from the author and relayed nothing to WITNESS,
    wrote into its own log that it holds WITNESS's receipt: the trace counted it, shown as held by
    the author (found by a read-only review). Only the author and the node WITNESS names as the
    one it received the bulletin from may hold it."""
    bid, at = "ab" * 32, "2026-12-01T00:00:00.000Z"
    posted = {"event": "bulletin.posted", "at": at, "bulletin": bid, "user": "o", "seq": 1}
    author = Evidence(NODE, ({"idx": 1, **posted, "recipients": [NODE, WITNESS, RELAYER]},))
    received = {"event": "bulletin.received", "at": at, "bulletin": bid, "from": NODE}
    recipient = Evidence(WITNESS, ({"idx": 3, **received},))
    claim = {"idx": 8, "event": "bulletin.delivered_to", "at": at, "bulletin": bid, "to": {WITNESS: at}}
    colluder = Evidence(RELAYER, ({"idx": 7, **received}, claim))
    trace = chain_of_custody(bid, "c", NODE, [NODE, WITNESS, RELAYER], [author, recipient, colluder])
    receipt = next(leg for leg in trace.legs if leg.recipient == WITNESS).step("receipt")
    assert (receipt.node, receipt.status) == (NODE, GAP), receipt


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ("[" * 100_000, "a bundle line is nested deeper than 128 levels"),  # past Python's stack, once
        ('{"type":"entry","idx":40,"entry":"\\ud800","leaf_hash":"x"}', "entry 40 is not text"),  # lone surrogate
        (json.dumps({"type": "entry", "idx": 40, "entry": "[" * 100_000}), "entry 40: is nested deeper than 128"),
    ],
    ids=["deep-line", "lone-surrogate", "deep-entry"],
)
def test_a_hostile_bundle_line_is_refused_not_a_crash(roster: tuple[Any, SigningKey], extra: str, refused: str) -> None:
    """Each ended `exchange audit verify` in a traceback (found by a read-only review); now each is
    refused as what it is, which the CLI prints as one line."""
    signed, authority = roster
    lines = bundle_lines(signed)
    check = BundleCheck(authority=authority.verify_key)
    with pytest.raises((InvalidInput, AuditTampered), match=refused):
        check.feed_lines([line.encode() for line in [*lines[:-1], extra, lines[-1]]])


def test_a_bundle_line_without_end_is_refused_not_held() -> None:
    """A file or node sending bytes without a newline made the verifier hold, and copy at each
    read, a line without end (found by a read-only review): refused past MAX_LINE."""
    endless = io.BytesIO(b"x" * (MAX_LINE + 2 * READ_SIZE))
    with pytest.raises(InvalidInput, match="longer than 64 MiB"):
        for _ in read_lines(endless):
            pass
    assert endless.tell() <= MAX_LINE + 2 * READ_SIZE
    whole = list(read_lines(io.BytesIO(b"a\n" + b"y" * (3 * READ_SIZE) + b"\nb")))
    assert [line for lines in whole for line in lines] == [b"a", b"y" * (3 * READ_SIZE), b"b"]


def _good_evidence(entry_at: Any = None) -> dict[str, Any]:
    """NODE's evidence of entry 2 of a log of 5, signed and proven (its `at` replaced if given)."""
    rows = make_log(5)
    if entry_at is not None:
        body = json.loads(rows[2][1])
        data = canonical_json({**body, "at": entry_at})
        rows[2] = (2, data, leaf_hash(data))
    leaves = [r[2] for r in rows]
    entry = {"idx": 2, "entry": rows[2][1].decode(), "proof": [b64e(p) for p in inclusion_proof(leaves, 2)]}
    return {"node": NODE, "checkpoint": checkpoint_note(rows, 5), "entries": [entry]}


TRACE_HEADER = {"channel": "c", "author": NODE, "recipients": [NODE, WITNESS]}


@pytest.mark.parametrize(
    "answer",
    [
        {"bulletin": BID, "header": {"channel": "c"}, "evidence": []},
        {"bulletin": BID, "header": {**TRACE_HEADER, "recipients": 5}, "evidence": []},
    ],
    ids=["header-without-author", "recipients-not-list"],
)
def test_a_trace_answer_that_is_not_one_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="not a trace answer"):
        assemble(answer, KEYS)


@pytest.mark.parametrize(
    "evidence",
    [
        "not an object",
        {**_good_evidence(), "entries": [{"idx": 2, "entry": "\ud800", "proof": []}]},
        {**_good_evidence(), "entries": [{"idx": 2, "entry": "[" * 100_000, "proof": []}]},
        _good_evidence(entry_at=5),
    ],
    ids=["not-an-object", "lone-surrogate", "deep-entry", "signed-entry-with-a-number-for-its-time"],
)
def test_hostile_evidence_in_a_trace_is_shown_invalid_not_a_crash(evidence: Any) -> None:
    """Each crashed `exchange audit trace`, or the console's trace page (500), found by a read-only
    review: a peer named by the bulletin needs only to sign its own checkpoint to send them."""
    trace = assemble({"bulletin": BID, "header": TRACE_HEADER, "evidence": [evidence]}, KEYS)
    assert trace.invalid
    assert not assemble({"bulletin": BID, "header": TRACE_HEADER, "evidence": [_good_evidence()]}, KEYS).invalid
