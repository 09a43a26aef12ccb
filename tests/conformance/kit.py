"""What a second implementation checks, written from the specifications alone (no `exchange` import).

Constants come from docs/protocol.md (2.1 base64url, 2.4 JCS, 5 signing inputs, 13 test keys) and
docs/audit.md (2 the tree, 3 checkpoints, 4 cosignatures, 6 bundles), which cite RFC 9162, RFC 8785,
RFC 8032, and C2SP signed-note, tlog-checkpoint and tlog-cosignature. Every check returns None or
raises `Refused`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VECTORS = Path(os.environ.get("EXCHANGE_VECTORS", Path(__file__).resolve().parents[1] / "vectors"))

SEED_PREFIX = b"exchange test vector "  # protocol.md 13: private key = SHA-256(prefix || label)
ORIGIN_PREFIX = "exchange/audit/"  # audit.md 3: the log's origin and key name
WITNESS_PREFIX = "exchange/witness/"  # audit.md 4: a witness's key name
SIG_ED25519, SIG_COSIGNATURE = 0x01, 0x04  # C2SP signed-note signature types
COSIGNATURE_HEADER = "cosignature/v1\n"
EM_DASH = "\u2014"
BUNDLE_FORMAT = "exchange-audit-bundle/v1"
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")


class Refused(Exception):
    """A check failed: the input is not what the specification allows."""


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text("utf-8"))


# -- encodings (protocol.md 2.1; C2SP uses standard padded base64) ----------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Refused(f"not base64url: {text!r}") from exc
    if b64url(raw) != text:
        raise Refused(f"not canonical unpadded base64url: {text!r}")
    return raw


def b64std_decode(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refused(f"not base64: {text!r}") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise Refused(f"not canonical base64: {text!r}")
    return raw


def jcs(value: Any) -> bytes:
    return rfc8785.dumps(value)


# -- keys and signatures (RFC 8032) ----------------------------------------------------------------


def seed_key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(SEED_PREFIX + label.encode()).digest())


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify_ed25519(public: bytes, signature: bytes, message: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError) as exc:
        raise Refused("Ed25519 signature does not verify") from exc


def roster_keys(signed: dict[str, Any]) -> dict[str, bytes]:
    """Node id -> Ed25519 public key of a v1 roster whose authority signature verifies (protocol.md 5, 6)."""
    authority = raw_public(seed_key("authority/ed25519"))
    message = b"exchange-v1/roster\n" + jcs(signed["roster"])
    verify_ed25519(authority, b64url_decode(signed["signature"]), message)
    return {n["id"]: b64url_decode(n["signing_key"]) for n in signed["roster"]["nodes"]}


# -- RFC 9162 section 2.1 -----------------------------------------------------------------------------


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """2.1.1, over leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """2.1.3.1 PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    return [*path(m, leaves[:k]), mth(leaves[k:])] if m < k else [*path(m - k, leaves[k:]), mth(leaves[:k])]


def proof(m: int, leaves: list[bytes], complete: bool = True) -> list[bytes]:
    """2.1.4.1 SUBPROOF(m, D[n], true)."""
    n = len(leaves)
    if m == n:
        return [] if complete else [mth(leaves)]
    k = split(n)
    if m <= k:
        return [*proof(m, leaves[:k], complete), mth(leaves[k:])]
    return [*proof(m - k, leaves[k:], False), mth(leaves[:k])]


def verify_inclusion(leaf_hash: bytes, index: int, size: int, hashes: list[bytes], root: bytes) -> None:
    """2.1.3.2."""
    if index >= size or any(len(h) != 32 for h in hashes):
        raise Refused("inclusion proof: bad index or hash")
    fn, sn, r = index, size - 1, leaf_hash
    for p in hashes:
        if sn == 0:
            raise Refused("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise Refused("inclusion proof does not lead to the root")


def verify_consistency(m: int, n: int, hashes: list[bytes], old: bytes, new: bytes) -> None:
    """2.1.4.2; a proof from size 0 is refused (audit.md 2)."""
    if not 0 < m <= n or any(len(h) != 32 for h in hashes):
        raise Refused("consistency proof: bad sizes or hash")
    if m == n:
        if hashes or old != new:
            raise Refused("equal sizes need an empty proof and equal roots")
        return
    if not hashes:
        raise Refused("empty consistency proof")
    seq = [old, *hashes] if m & (m - 1) == 0 else list(hashes)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = seq[0]
    for c in seq[1:]:
        if sn == 0:
            raise Refused("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old or sr != new:
        raise Refused("consistency proof does not lead to the roots")


# -- C2SP signed notes, checkpoints, cosignatures (audit.md 3, 4) -------------------------------------


def key_id(name: str, sig_type: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public).digest()[:4]


def parse_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """(text, [(key name, key id, signature)]): text ends in a newline, a blank line, signature lines."""
    if not note.endswith("\n") or "\n\n" not in note:
        raise Refused("not a signed note")
    at = note.rindex("\n\n")
    text, sigs = note[: at + 1], []
    for line in note[at + 2 : -1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH:
            raise Refused(f"bad signature line {line!r}")
        raw = b64std_decode(parts[2])
        sigs.append((parts[1], raw[:4], raw[4:]))
    return text, sigs


def parse_checkpoint(text: str) -> tuple[str, int, bytes]:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "" or not _DECIMAL.match(lines[1]):
        raise Refused("not a checkpoint text")
    root = b64std_decode(lines[2])
    if len(root) != 32:
        raise Refused("a root is 32 bytes")
    return lines[0], int(lines[1]), root


def open_checkpoint(note: str, node_id: str, public: bytes) -> tuple[int, bytes, str, list[tuple[str, bytes, bytes]]]:
    """The size and root of `node_id`'s checkpoint, its text and signature lines, if its log signed it."""
    text, sigs = parse_note(note)
    origin, size, root = parse_checkpoint(text)
    if origin != ORIGIN_PREFIX + node_id:
        raise Refused(f"checkpoint of another log: {origin}")
    kid = key_id(origin, SIG_ED25519, public)
    mine = [s for n, k, s in sigs if n == origin and k == kid]
    if not mine:
        raise Refused("no signature by the log's key")
    for sig in mine:
        verify_ed25519(public, sig, text.encode())
    return size, root, text, sigs


def verify_cosignature(text: str, name: str, key_id_: bytes, sig: bytes, public: bytes) -> int:
    """The timestamp of a valid cosignature/v1 by (name, public) of checkpoint text `text`."""
    if key_id_ != key_id(name, SIG_COSIGNATURE, public) or len(sig) != 72:
        raise Refused("not a cosignature/v1 by this witness")
    when = int.from_bytes(sig[:8], "big")
    verify_ed25519(public, sig[8:], f"{COSIGNATURE_HEADER}time {when}\n{text}".encode())
    return when


def cosigners(text: str, sigs: list[tuple[str, bytes, bytes]], witnesses: dict[str, bytes]) -> list[str]:
    """Witness key names whose cosignature verifies; a line of a known key that fails refuses the note."""
    found = []
    for name, kid, sig in sigs:
        public = witnesses.get(name)
        if public is not None and kid == key_id(name, SIG_COSIGNATURE, public):
            verify_cosignature(text, name, kid, sig, public)
            found.append(name)
    return found


# -- export bundles (audit.md 6, 7) ---------------------------------------------------------------------


def verify_bundle(lines: list[str], keys: dict[str, bytes], quorum: int = 0) -> int:
    """Check a JSON Lines export bundle; return how many entries it holds."""
    records = [json.loads(line) for line in lines]
    header = records[0]
    if header.get("type") != "header" or header.get("format") != BUNDLE_FORMAT:
        raise Refused("no header")
    if records[-1].get("type") != "end":
        raise Refused("truncated: no end record")
    log = header["node"]
    witnesses = {WITNESS_PREFIX + n: k for n, k in keys.items() if n != log}
    signed: dict[int, tuple[bytes, set[str]]] = {}
    body = records[1:-1]
    while body and body[0]["type"] == "checkpoint":
        size, root, text, sigs = open_checkpoint(body.pop(0)["note"], log, keys[log])
        if size in signed and signed[size][0] != root:
            raise Refused(f"two checkpoints of size {size} with different roots")
        if signed and size < max(signed):
            raise Refused("checkpoints out of order")
        signed.setdefault(size, (root, set()))[1].update(cosigners(text, sigs, witnesses))
    if not signed or len(signed[max(signed)][1]) < quorum:
        raise Refused("the latest checkpoint lacks the quorum")
    if header["complete"]:
        hashes = []
        for position, record in enumerate(body):
            entry = record["entry"].encode("utf-8")
            if record["type"] != "entry" or record["idx"] != position or json.loads(entry).get("idx") != position:
                raise Refused(f"entry {position} is missing or out of place")
            if b64url_decode(record["leaf_hash"]) != leaf(entry):
                raise Refused(f"entry {position} does not match its leaf hash")
            hashes.append(leaf(entry))
        for size, (root, _) in signed.items():
            if size > len(hashes) or mth(hashes[:size]) != root:
                raise Refused(f"the entries do not give checkpoint {size}'s root")
    else:
        if len(signed) > 1:
            raise Refused("a partial bundle with several checkpoints needs consistency records")
        for record in body:
            entry = record["entry"].encode("utf-8")
            if json.loads(entry).get("idx") != record["idx"] or record["size"] not in signed:
                raise Refused("an entry not proven in the bundle's checkpoint")
            proof_ = [b64url_decode(h) for h in record["proof"]]
            verify_inclusion(leaf(entry), record["idx"], record["size"], proof_, signed[record["size"]][0])
    if records[-1]["entries"] != len(body):
        raise Refused("the end record's count differs")
    return len(body)


def edited(base: list[str], edits: list[dict[str, Any]]) -> list[str]:
    """A negative's bundle: each edit replaces `delete` lines of `base` from line `at` by `insert`."""
    out = list(base)
    for edit in sorted(edits, key=lambda e: e["at"], reverse=True):
        out[edit["at"] : edit["at"] + edit["delete"]] = edit["insert"]
    return out
