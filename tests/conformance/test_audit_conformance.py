"""audit-v1.json checked from the specifications alone: docs/audit.md and docs/protocol.md, with
hashlib, Ed25519 from `cryptography`, JCS from `rfc8785` and the RFC 9162 code of `kit` (no
`exchange` import). Run it against another implementation's files with
`EXCHANGE_VECTORS=<dir> pytest tests/conformance`.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tests.conformance.kit import (
    ORIGIN_PREFIX,
    SIG_COSIGNATURE,
    SIG_ED25519,
    WITNESS_PREFIX,
    Refused,
    b64url,
    b64url_decode,
    cosigners,
    edited,
    jcs,
    key_id,
    leaf,
    load,
    mth,
    open_checkpoint,
    parse_note,
    path,
    proof,
    raw_public,
    roster_keys,
    seed_key,
    verify_bundle,
    verify_consistency,
    verify_cosignature,
    verify_inclusion,
)

V: dict[str, Any] = load("audit-v1.json")
INPUTS, OUTPUTS = V["inputs"], V["outputs"]
LOG = INPUTS["log"]["node"]
KEYS = roster_keys(load("envelope-v1.json")["outputs"]["roster"]["signed"])
WITNESS_KEYS = {WITNESS_PREFIX + n: k for n, k in KEYS.items() if n != LOG}
TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$")
HASHES = [b64url_decode(e["leaf_hash"]) for e in OUTPUTS["entries"]]
ROOTS = {r["size"]: b64url_decode(r["root"]) for r in OUTPUTS["tree"]["roots"]}


def hashes(items: list[str]) -> list[bytes]:
    return [b64url_decode(h) for h in items]


def test_keys_come_from_their_labels_and_match_the_roster() -> None:
    for part in [INPUTS["log"], *INPUTS["witnesses"]]:
        public = raw_public(seed_key(part["ed25519_seed_label"]))
        assert b64url(public) == part["public_key"] == b64url(KEYS[part["ed25519_seed_label"].split("/")[0]])
    assert INPUTS["log"]["origin"] == ORIGIN_PREFIX + LOG


def test_entries_are_jcs_with_their_index_and_hash_to_their_leaves() -> None:
    assert len(INPUTS["entries"]) == len(OUTPUTS["entries"])
    for idx, (given, out) in enumerate(zip(INPUTS["entries"], OUTPUTS["entries"], strict=True)):
        assert jcs({**given, "idx": idx}).decode("utf-8") == out["jcs"]
        assert out["idx"] == idx and out["event"] == given["event"]
        assert b64url(leaf(out["jcs"].encode("utf-8"))) == out["leaf_hash"]
        assert TIMESTAMP.match(given["at"])
    assert len({e["event"] for e in INPUTS["entries"]}) >= 28  # every kind of docs/audit.md's table


def test_tree_roots_inclusion_and_consistency_proofs() -> None:
    assert b64url_decode(OUTPUTS["tree"]["empty_root"]) == mth([])
    for size, root in ROOTS.items():
        assert mth(HASHES[:size]) == root
    for case in OUTPUTS["inclusion"]:
        i, n = case["index"], case["size"]
        assert [b64url(h) for h in path(i, HASHES[:n])] == case["proof"]
        verify_inclusion(HASHES[i], i, n, hashes(case["proof"]), ROOTS[n])
    for case in OUTPUTS["consistency"]:
        m, n = case["from"], case["to"]
        assert [b64url(h) for h in proof(m, HASHES[:n])] == case["proof"]
        verify_consistency(m, n, hashes(case["proof"]), ROOTS[m], ROOTS[n])


def test_checkpoints_and_cosignatures_are_reproduced_byte_for_byte() -> None:
    log_key = seed_key(INPUTS["log"]["ed25519_seed_label"])
    origin = ORIGIN_PREFIX + LOG
    for cp in OUTPUTS["checkpoints"]:
        root = b64url_decode(cp["root"])
        assert root == ROOTS[cp["size"]]
        text = f"{origin}\n{cp['size']}\n{base64.b64encode(root).decode()}\n"
        assert text == cp["text"]
        kid = key_id(origin, SIG_ED25519, raw_public(log_key))
        line = f"\u2014 {origin} {base64.b64encode(kid + log_key.sign(text.encode())).decode()}\n"
        assert (kid.hex(), line) == (cp["key_id_hex"], cp["signature_line"])
        assert cp["note"] == text + "\n" + line
        lines = ""
        for c in cp["cosignatures"]:
            key = seed_key(f"{c['witness']}/ed25519")
            name = WITNESS_PREFIX + c["witness"]
            message = f"cosignature/v1\ntime {c['time']}\n{text}"
            body = (
                key_id(name, SIG_COSIGNATURE, raw_public(key))
                + c["time"].to_bytes(8, "big")
                + key.sign(message.encode())
            )
            assert c["line"] == f"\u2014 {name} {base64.b64encode(body).decode()}\n"
            assert c["signed_message"] == message
            lines += c["line"]
        assert cp["full_note"] == cp["note"] + lines
        size, _, _, sigs = open_checkpoint(cp["full_note"], LOG, KEYS[LOG])
        assert size == cp["size"]
        assert sorted(cosigners(text, sigs, WITNESS_KEYS)) == sorted(c["key_name"] for c in cp["cosignatures"])


def _checkpoint_text(size: int) -> str:
    return str(next(c["text"] for c in OUTPUTS["checkpoints"] if c["size"] == size))


def test_witness_exchange() -> None:
    """Requests are JCS; answers verify: cosignature lines, stale sizes, pulled checkpoints and proofs."""
    for step in OUTPUTS["witness"]:
        answer = json.loads(step["response_body"])
        request: Any = None if step["request_body"] is None else json.loads(step["request_body"])
        if request is not None:
            assert jcs(request).decode("utf-8") == step["request_body"]
        if step["request"] == "POST /fed/v1/audit/cosign":
            assert set(request) == {"checkpoint", "old_size", "proof"}
            size, root, text, _ = open_checkpoint(request["checkpoint"], LOG, KEYS[LOG])
            if request["old_size"]:
                old = request["old_size"]
                verify_consistency(old, size, hashes(request["proof"]), ROOTS[old], root)
            else:
                assert request["proof"] == []
            if answer["status"] == "cosigned":
                name, kid, sig = parse_note("x\n\n" + answer["cosignature"])[1][0]
                assert name == WITNESS_PREFIX + step["to"]
                verify_cosignature(text, name, kid, sig, KEYS[step["to"]])
            else:
                assert answer == {"status": "stale", "size": answer["size"]}
        elif step["request"].startswith("GET /fed/v1/audit/checkpoint?from="):
            old = int(step["request"].rsplit("=", 1)[1])
            size, root, _, _ = open_checkpoint(answer["checkpoint"], LOG, KEYS[LOG])
            if 0 < old < size:
                verify_consistency(old, size, hashes(answer["proof"]), ROOTS[old], root)
            else:
                assert answer["proof"] == []
        else:
            assert step["request"] == "POST /fed/v1/audit/cosignatures" and answer == {"stored": True}
            name, kid, sig = parse_note("x\n\n" + request["cosignature"])[1][0]
            assert name == WITNESS_PREFIX + step["from"]
            verify_cosignature(_checkpoint_text(request["size"]), name, kid, sig, KEYS[step["from"]])


def test_api_answers() -> None:
    api = {route.split(" ")[1].split("?")[0]: json.loads(body) for route, body in OUTPUTS["api"].items()}
    inc = api["/api/v1/audit/proof/inclusion"]
    size, root, _, _ = open_checkpoint(inc["checkpoint"], LOG, KEYS[LOG])
    assert size == inc["size"] and b64url_decode(inc["leaf_hash"]) == leaf(inc["entry"].encode())
    verify_inclusion(leaf(inc["entry"].encode()), inc["index"], size, hashes(inc["proof"]), root)
    con = api["/api/v1/audit/proof/consistency"]
    size, root, _, _ = open_checkpoint(con["checkpoint"], LOG, KEYS[LOG])
    verify_consistency(con["from"], size, hashes(con["proof"]), ROOTS[con["from"]], root)
    latest = api["/api/v1/audit/checkpoint"]
    size, root, _, _ = open_checkpoint(latest["note"], LOG, KEYS[LOG])
    assert (latest["size"], latest["root"]) == (size, b64url(root))
    evidence = next(v for k, v in api.items() if k.startswith("/fed/v1/audit/bulletins/"))
    size, root, _, _ = open_checkpoint(evidence["checkpoint"], LOG, KEYS[LOG])
    for item in evidence["entries"]:
        verify_inclusion(leaf(item["entry"].encode()), item["idx"], size, hashes(item["proof"]), root)


@pytest.mark.parametrize("name", ["bundle", "bulletin_bundle"])
def test_bundles_verify(name: str) -> None:
    assert verify_bundle(OUTPUTS[name]["lines"], KEYS, quorum=2) == len(OUTPUTS[name]["lines"]) - 2 - (
        4 if name == "bundle" else 1
    )


def refuse(negative: dict[str, Any]) -> None:
    """Raise Refused if this implementation refuses the negative (it must)."""
    given, check = negative["input"], negative["check"]
    if check == "bundle":
        verify_bundle(edited(OUTPUTS["bundle"]["lines"], given["edits"]), KEYS)
    elif check == "checkpoint":
        open_checkpoint(given["note"], LOG, KEYS[LOG])
    elif check == "cosignature":
        name, kid, sig = parse_note("x\n\n" + given["line"])[1][0]
        if name != WITNESS_PREFIX + given["witness"]:
            raise Refused("another witness's line")
        verify_cosignature(given["text"], name, kid, sig, KEYS[given["witness"]])
    elif check == "inclusion":
        leaf_hash, root = b64url_decode(given["leaf_hash"]), b64url_decode(given["root"])
        verify_inclusion(leaf_hash, given["index"], given["size"], hashes(given["proof"]), root)
    elif check == "consistency":
        old, new = b64url_decode(given["old_root"]), b64url_decode(given["new_root"])
        verify_consistency(given["from"], given["to"], hashes(given["proof"]), old, new)
    elif check == "witness":  # docs/audit.md 4: a witness co-signs only what extends what it saw
        size, root, _, _ = open_checkpoint(given["checkpoint"], LOG, KEYS[LOG])
        seen = given["seen"]
        if size < seen["size"]:
            raise Refused("a rollback")
        assert given["old_size"] == seen["size"], "not a split view: the answer is stale"
        verify_consistency(seen["size"], size, hashes(given["proof"]), b64url_decode(seen["root"]), root)


@pytest.mark.parametrize("negative", OUTPUTS["negatives"], ids=[n["name"] for n in OUTPUTS["negatives"]])
def test_every_negative_is_refused(negative: dict[str, Any]) -> None:
    with pytest.raises(Refused):
        refuse(negative)
