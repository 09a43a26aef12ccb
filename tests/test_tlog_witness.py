"""The C2SP tlog-witness text protocol (exchange.audit.tlog_witness), both ways (issue 16, must-show 2:
the codec and the witness's rules; with a running node over TLS: tests/test_tlog_witness_e2e.py).

- A witness written in this test from the C2SP text alone (tests/conformance/kit: no `exchange`
  import) cosigns the checkpoints of nl-customs's log from tests/vectors/audit-v1.json, sent as
  add-checkpoint bodies by the project's codec; the project verifies its cosignatures.
- The project's side, as a witness, cosigns a foreign C2SP log (origin `log.example/test`, not an
  exchange log) whose requests are written in this test as plain text, and refuses each bad one with
  the status the specification gives.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest

from exchange.audit.checkpoint import Checkpoint, cosign, verify_cosignature
from exchange.audit.tlog_witness import (
    SIZE_CONTENT_TYPE,
    Refusal,
    add_checkpoint_body,
    cosignature_body,
    judge,
    open_request,
    parse_add_checkpoint,
    parse_cosignature_body,
    parse_size_body,
)
from exchange.crypto import SigningKey, VerifyKey, b64d
from exchange.errors import InvalidInput
from tests.conformance import kit
from tests.vectors.make_audit_vectors import FILE, WHOLE

VECTORS: dict[str, Any] = kit.load(FILE.name)["outputs"]
CHECKPOINTS = {c["size"]: c for c in VECTORS["checkpoints"]}
HASHES = [kit.b64url_decode(e["leaf_hash"]) for e in VECTORS["entries"]]
LOG_KEY = kit.b64url_decode(kit.load(FILE.name)["inputs"]["log"]["public_key"])


def std(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- a C2SP witness, from the specification's text ----------------------------------------------------


@dataclass
class TextWitness:
    """c2sp.org/tlog-witness "add-checkpoint", with c2sp.org/tlog-cosignature v1 (Ed25519)."""

    name: str
    logs: dict[str, bytes]  # origin -> Ed25519 public key; the key name is the origin
    seen: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key = kit.seed_key(f"{self.name}/ed25519")

    def add_checkpoint(self, body: bytes, now: int) -> tuple[int, bytes]:
        text = body.decode("utf-8")
        head, _, note = text.partition("\n\n")
        old_line, *proof_lines = head.split("\n")
        assert old_line.startswith("old ")
        old = int(old_line[4:])
        proof = [base64.b64decode(line) for line in proof_lines]
        note_text, sigs = kit.parse_note(note)
        origin, size, root = kit.parse_checkpoint(note_text)
        if origin not in self.logs:
            return 404, b""
        public = self.logs[origin]
        kid = kit.key_id(origin, kit.SIG_ED25519, public)
        good = [s for n, k, s in sigs if n == origin and k == kid]
        try:
            for sig in good or [b""]:
                kit.verify_ed25519(public, sig, note_text.encode())
        except kit.Refused:
            return 403, b""
        if old > size:
            return 400, b""
        latest, latest_root = self.seen.get(origin, (0, b""))
        if old != latest:
            return 409, f"{latest}\n".encode()
        if old == size and root != latest_root:
            return 409, b""
        if old:
            try:
                kit.verify_consistency(old, size, proof, latest_root, root)
            except kit.Refused:
                return 422, b""
        self.seen[origin] = (size, root)
        message = f"cosignature/v1\ntime {now}\n{note_text}".encode()
        raw = kit.key_id(self.name, kit.SIG_COSIGNATURE, kit.raw_public(self.key)) + now.to_bytes(8, "big")
        return 200, f"\u2014 {self.name} {std(raw + self.key.sign(message))}\n".encode()


def test_a_c2sp_witness_cosigns_this_projects_checkpoints() -> None:
    witness = TextWitness("witness.test/w1", {"exchange/audit/nl-customs": LOG_KEY})
    public = VerifyKey(kit.raw_public(witness.key))

    status, answer = witness.add_checkpoint(add_checkpoint_body(0, [], CHECKPOINTS[8]["note"]), 1741944440)
    assert status == 200
    (line,) = parse_cosignature_body(answer)
    assert verify_cosignature(CHECKPOINTS[8]["text"], line, "witness.test/w1", public) == 1741944440

    # The log does not know what the witness saw: it asks with 0, learns 8, proves from 8.
    status, answer = witness.add_checkpoint(add_checkpoint_body(0, [], CHECKPOINTS[WHOLE]["note"]), 1741950020)
    assert (status, parse_size_body(answer)) == (409, 8)
    proof = [b64d(p) for p in next(c for c in VECTORS["consistency"] if (c["from"], c["to"]) == (8, WHOLE))["proof"]]
    status, answer = witness.add_checkpoint(add_checkpoint_body(8, proof, CHECKPOINTS[WHOLE]["note"]), 1741950021)
    assert status == 200
    (line,) = parse_cosignature_body(answer)
    assert verify_cosignature(CHECKPOINTS[WHOLE]["text"], line, "witness.test/w1", public) == 1741950021

    # A checkpoint of 13 now is a rollback: the witness refuses it, whatever old size is given.
    for old in (WHOLE, 13, 0):
        body = add_checkpoint_body(old, [], CHECKPOINTS[13]["note"])
        assert witness.add_checkpoint(body, 1741950022)[0] in (400, 409)


# -- this project as a witness of a foreign C2SP log -------------------------------------------------

ORIGIN = "log.example/test"
FOREIGN = kit.seed_key("log.example/test/ed25519")
LEAVES = [kit.leaf(f"entry {i}".encode()) for i in range(20)]


def signed_note(size: int, key: Any = FOREIGN, leaves: list[bytes] = LEAVES) -> str:
    """A checkpoint of the foreign log, signed as C2SP signed-note says (written here, not by the project)."""
    text = f"{ORIGIN}\n{size}\n{std(kit.mth(leaves[:size]))}\n"
    raw = kit.key_id(ORIGIN, kit.SIG_ED25519, kit.raw_public(key)) + key.sign(text.encode())
    return f"{text}\n\u2014 {ORIGIN} {std(raw)}\n"


def request(old: int, size: int, **note: Any) -> bytes:
    proof = kit.proof(old, LEAVES[:size]) if old > 0 else []
    return ("".join(f"{line}\n" for line in [f"old {old}", *map(std, proof), ""]) + signed_note(size, **note)).encode()


class ProjectWitness:
    """The project's pure rules, with a dict standing in for the table of what it co-signed."""

    def __init__(self) -> None:
        self.key = SigningKey(hashlib.sha256(kit.SEED_PREFIX + b"nl-customs/ed25519").digest())
        self.logs = {ORIGIN: (ORIGIN, VerifyKey(kit.raw_public(FOREIGN)))}
        self.seen: dict[str, tuple[int, bytes]] = {}

    def add_checkpoint(self, body: bytes, now: int) -> Refusal | bytes:
        req = parse_add_checkpoint(body)
        cp = open_request(req, self.logs)
        if isinstance(cp, Refusal):
            return cp
        refusal = judge(req.old_size, req.proof, cp, self.seen.get(cp.origin))
        if refusal is not None:
            return refusal
        self.seen[cp.origin] = (cp.size, cp.root)
        return cosignature_body([cosign(req.note.text, "exchange/witness/nl-customs", self.key, now)])


def verify_answer(answer: Refusal | bytes, size: int, witness: ProjectWitness, now: int) -> None:
    assert isinstance(answer, bytes), answer
    note_text = signed_note(size).split("\n\n")[0] + "\n"
    name, kid, sig = kit.parse_note("x\n\n" + answer.decode())[1][0]
    assert name == "exchange/witness/nl-customs"
    assert kit.verify_cosignature(note_text, name, kid, sig, witness.key.verify_key.raw) == now


def test_this_project_cosigns_a_c2sp_log() -> None:
    witness = ProjectWitness()
    verify_answer(witness.add_checkpoint(request(0, 5), 100), 5, witness, 100)
    stale = witness.add_checkpoint(request(0, 12), 101)
    assert isinstance(stale, Refusal) and (stale.status, stale.body, stale.content_type) == (
        409,
        b"5\n",
        SIZE_CONTENT_TYPE,
    )
    verify_answer(witness.add_checkpoint(request(5, 12), 102), 12, witness, 102)
    verify_answer(witness.add_checkpoint(request(12, 12), 103), 12, witness, 103)  # the same again
    verify_answer(witness.add_checkpoint(request(12, 16), 104), 16, witness, 104)  # a power of two


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(lambda: request(0, 16).replace(b"old 0\n", b"old 20\n", 1), 400, id="old-size-beyond-checkpoint"),
        pytest.param(lambda: request(12, 20), 409, id="old-size-not-the-latest"),
        pytest.param(lambda: request(16, 20).replace(b"old 16\n", b"old 16\n" + std(bytes(32)).encode() + b"\n"), 422,
                     id="bad-consistency-proof"),
        pytest.param(lambda: request(16, 16, leaves=[kit.leaf(b"fork"), *LEAVES[1:]]), 409, id="same-size-other-root"),
        pytest.param(lambda: request(16, 20, key=kit.seed_key("someone else")), 403, id="signed-by-another-key"),
        pytest.param(lambda: request(16, 20).replace(ORIGIN.encode(), b"log.example/other"), 404, id="unknown-origin"),
    ],
)  # fmt: skip
def test_the_project_witness_refuses_with_the_specified_status(body: Any, status: int) -> None:
    witness = ProjectWitness()
    for old, size in ((0, 12), (12, 16)):
        assert isinstance(witness.add_checkpoint(request(old, size), 1), bytes)
    answer = witness.add_checkpoint(body(), 2)
    assert isinstance(answer, Refusal) and answer.status == status, answer
    assert witness.seen[ORIGIN][0] == 16  # nothing moved


@pytest.mark.parametrize(
    "body",
    [
        b"old 012\n\n" + signed_note(12).encode(),  # leading zero
        b"old 12\n" + signed_note(12).encode(),  # no empty line before the checkpoint
        b"old 12\n" + b"".join(std(bytes(32)).encode() + b"\n" for _ in range(64)) + b"\n" + signed_note(12).encode(),
        b"old 12\n" + std(bytes(31)).encode() + b"\n\n" + signed_note(12).encode(),  # a 31-byte hash
        b"old 12\nAAAA\n\n" + signed_note(12).encode(),
        b"old -1\n\n" + signed_note(12).encode(),
    ],
    ids=["leading-zero", "no-empty-line", "64-proof-lines", "short-hash", "not-a-hash", "negative"],
)
def test_malformed_requests_are_refused(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_add_checkpoint(body)


def test_bodies_round_trip() -> None:
    proof = kit.proof(5, LEAVES[:12])
    body = add_checkpoint_body(5, proof, signed_note(12))
    assert body == request(5, 12)
    parsed = parse_add_checkpoint(body)
    assert (parsed.old_size, parsed.proof, parsed.note.render()) == (5, proof, signed_note(12))
    assert Checkpoint.parse(parsed.note.text).size == 12
    with pytest.raises(InvalidInput):
        parse_size_body(b"05\n")
