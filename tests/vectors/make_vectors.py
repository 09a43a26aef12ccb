"""Build the golden test vectors in tests/vectors/ from fixed, public, TEST-ONLY seeds.

Run `python -m tests.vectors.make_vectors` to write envelope-v1.json and receipt-v2.json, or add
`--check` to compare the files with what the code produces now. Every input is fixed: Ed25519, X25519 and
TLS keys come from SHA-256 of public labels, timestamps are constants, and the content key and
nonce come from a counter. HPKE encapsulation draws its ephemeral key inside `cryptography`, so
the wraps cannot be derived; when the file exists and its wraps still open to this content
key, they are kept, which makes a second run reproduce the file byte for byte.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from exchange import errors
from exchange.crypto import DecryptionKey, SigningKey, b64d, b64e, canonical_json, sha256, spki_pin
from exchange.crypto.content import BODY_AAD, key_commitment, open_content
from exchange.merkle import leaf_hash, node_hash
from exchange.model import Accept, Bulletin, ChannelEvent, Envelope, NodeId, Receipt, Roster, SignedRoster
from exchange.protocol.channel import ChannelState, apply_event, event_hash, sign_acceptance, sign_event
from exchange.protocol.envelope import (
    build_envelope,
    bulletin_id,
    envelope_bytes,
    open_envelope,
    parse_envelope,
    sign_envelope,
    verify_envelope,
    wrap_info,
)
from exchange.protocol.receipt import (
    BATCH_DOMAIN,
    make_receipt,
    make_receipts,
    parse_receipt,
    statement,
    tree_levels,
    verify_receipt,
)
from exchange.protocol.receipt_batches import batch_form, checked_batches, receipt_text
from exchange.protocol.roster import Federation, sign_roster
from exchange.protocol.signing import sign, signing_input
from exchange.service.outbox import transaction_id

HERE = Path(__file__).resolve().parent
ENVELOPE_FILE = HERE / "envelope-v1.json"
RECEIPTS_FILE = HERE / "receipt-v2.json"

SEED_PREFIX = b"exchange test vector "
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
NOT_BEFORE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2045, 1, 1, tzinfo=dt.UTC)

WARNING = (
    "TEST ONLY. Every private key here is SHA-256 of a public label "
    "(seed = SHA-256('exchange test vector ' || label)); never use these keys in a federation."
)

# The three nodes of the test federation, sorted by id as a roster lists them.
NODES: list[dict[str, str]] = [
    {"id": "gb-avsec", "name": "GB aviation security (test)", "country": "GB", "agency": "aviation-security"},
    {"id": "ke-customs", "name": "KE customs (test)", "country": "KE", "agency": "customs"},
    {"id": "nl-customs", "name": "NL customs (test)", "country": "NL", "agency": "customs"},
]
ROSTER_FIELDS: dict[str, Any] = {
    "v": 1,
    "federation": "exchange test vectors",
    "version": 1,
    "issued": "2025-03-01T12:00:00.000Z",
}
CHANNEL = {"channel": "cargo-fraud", "owner": "nl-customs"}
# The owner's log: create, then invite and accept each partner. An "accept" step is the
# invitee's signed acceptance of the invitation just before it, embedded by the owner.
CHANNEL_STEPS: list[dict[str, Any]] = [
    {
        "at": "2025-03-01T12:05:00.000Z",
        "change": {
            "type": "create",
            "title": "Air cargo fraud",
            "purpose": "Misdeclared air cargo between Europe and East Africa",
            "policy": {"agencies": ["customs", "aviation-security"]},
            "default_handling": {"tlp": "AMBER", "no_onward_sharing": False},
            "ends": None,
        },
    },
    {"at": "2025-03-01T12:06:00.000Z", "change": {"type": "invite", "node": "ke-customs", "rights": ["post", "read"]}},
    {"at": "2025-03-01T12:07:00.000Z", "accept": "ke-customs"},
    {"at": "2025-03-01T12:08:00.000Z", "change": {"type": "invite", "node": "gb-avsec", "rights": ["read"]}},
    {"at": "2025-03-01T12:09:00.000Z", "accept": "gb-avsec"},
]
# Non-ASCII text, a quote and a newline exercise the JCS string rules.
BULLETIN: dict[str, Any] = {
    "kind": "alert",
    "handling": {"tlp": "AMBER", "no_onward_sharing": True},
    "title": "Misdeclared lithium batteries, NBO → AMS",
    "body": 'Three air waybills declare "toys" (HS 9503); X-ray shows lithium-ion cells.\n'
    "Hold before release and call the NL duty officer.",
    "indicators": {
        "air_waybills": ["074-12345675"],
        "hs_codes": ["8507.60", "9503.00"],
        "airports": ["AMS", "NBO"],
        "flights": ["KQ1116"],
        "companies": ["Example Freight Ltd"],
        "risk_indicators": ["undeclared dangerous goods"],
    },
    "references": [],
    "language": "en",
    "expires": "2025-06-30",
}
POST: dict[str, Any] = {"author": "nl-customs", "seq": 1, "created": "2025-03-14T09:26:53.589Z"}
RECEIPT: dict[str, Any] = {"node": "ke-customs", "status": "received", "at": "2025-03-14T09:26:54.120Z"}
# receipt-v2.json: a batch of three bulletins received at once, and one opened alone. The first
# bulletin is the envelope's; the others are ids of labels (a receipt needs only the ids).
RECEIPT_BATCH: dict[str, Any] = {**RECEIPT, "extra_bulletin_labels": ["bulletin/1", "bulletin/2"]}
RECEIPT_SINGLE: dict[str, Any] = {"node": "ke-customs", "status": "opened", "at": "2025-03-14T10:02:11.457Z"}


def seed(label: str) -> bytes:
    """The fixed 32-byte seed of a test key: SHA-256 of a public label. TEST ONLY."""
    return sha256(SEED_PREFIX + label.encode("ascii"))


def endpoint(node_id: str) -> str:
    return f"https://{node_id}.exchange.test:8443"


def signing_key(label: str) -> SigningKey:
    return SigningKey(seed(f"{label}/ed25519"))


def decryption_key(label: str) -> DecryptionKey:
    return DecryptionKey(seed(f"{label}/x25519"))


def tls_cert(node_id: str) -> str:
    """A self-signed P-256 certificate, the same on every run: fixed key, serial, dates, RFC 6979 signature."""
    scalar = int.from_bytes(seed(f"{node_id}/tls-p256"), "big") % (P256_ORDER - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"exchange node {node_id} (TEST ONLY)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(seed(f"{node_id}/tls-serial")[:16], "big") | 1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{node_id}.exchange.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return cert.public_bytes(Encoding.PEM).decode("ascii")


class CounterRandom:
    """A deterministic stand-in for os.urandom: SHA-256 of a label and a counter, recorded."""

    def __init__(self, label: str = "rng") -> None:
        self.label = label
        self.drawn: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        block = seed(f"{self.label}/{len(self.drawn)}")
        if n > len(block):
            raise ValueError("CounterRandom gives at most 32 bytes per call")
        self.drawn.append(block[:n])
        return block[:n]


class ReplayRandom:
    """Hands back recorded random draws in order; fails if the code asks for anything else."""

    def __init__(self, draws: list[bytes]) -> None:
        self._draws = list(draws)

    def __call__(self, n: int) -> bytes:
        if not self._draws or len(self._draws[0]) != n:
            raise AssertionError(f"unexpected random draw of {n} bytes")
        return self._draws.pop(0)


def roster_entry(node: dict[str, str], cert_pem: str) -> dict[str, Any]:
    sk, dk = signing_key(node["id"]), decryption_key(node["id"])
    return {
        **node,
        "endpoint": endpoint(node["id"]),
        "signing_key": b64e(sk.verify_key.raw),
        "signing_kid": sk.kid,
        "encryption_key": b64e(dk.public.raw),
        "encryption_kid": dk.kid,
        "tls_cert": cert_pem,
        "tls_pin": spki_pin(cert_pem.encode("ascii")),
    }


def _old_certs(old: dict[str, Any] | None) -> dict[str, str]:
    if old is None:
        return {}
    return {n["id"]: n["tls_cert"] for n in old["inputs"]["nodes"]}


def _old_wraps(old: dict[str, Any] | None, bid: str, header: Any, ciphertext: bytes) -> list[str] | None:
    """The recorded wraps, if they belong to this very header and open for every recipient."""
    if old is None or old["outputs"]["bulletin_id"] != bid:
        return None
    wraps: list[str] = old["outputs"]["envelope"]["wraps"]
    if len(wraps) != len(header.recipients):
        return None
    for wrap, recipient in zip(wraps, header.recipients, strict=True):
        key = decryption_key(recipient.node)
        try:
            open_content(
                wrapped_key=b64d(wrap),
                info=wrap_info(bid, key.kid),
                reader=key,
                key_commitment_=b64d(header.key_commitment),
                nonce=b64d(header.nonce),
                ciphertext=ciphertext,
            )
        except errors.ExchangeError:
            return None
    return wraps


def channel_log(fed: Federation) -> list[ChannelEvent]:
    """The owner-signed log of CHANNEL_STEPS, each event chained to the one before."""
    owner = signing_key(CHANNEL["owner"])
    log: list[ChannelEvent] = []
    state: ChannelState | None = None
    for pos, step in enumerate(CHANNEL_STEPS):
        if "accept" in step:
            node = step["accept"]
            acceptance = sign_acceptance(CHANNEL["channel"], node, event_hash(log[-1]), signing_key(node))
            change: dict[str, Any] = {"type": "accept", "acceptance": acceptance.model_dump(mode="json")}
        else:
            change = step["change"]
        event = sign_event(
            **CHANNEL, pos=pos, prev=state.hash if state else None, at=step["at"], change=change, key=owner
        )
        state = apply_event(state, event, fed)
        log.append(event)
    return log


def replay(log: list[ChannelEvent], fed: Federation) -> ChannelState:
    """The channel state after the last event of `log`."""
    state: ChannelState | None = None
    for event in log:
        state = apply_event(state, event, fed)
    if state is None:
        raise ValueError("an empty channel log has no state")
    return state


def recorded_federation(outputs: dict[str, Any]) -> Federation:
    """The roster recorded in the vectors, verified against the authority's key."""
    signed = SignedRoster.model_validate(outputs["roster"]["signed"])
    return Federation.verify(signed, signing_key("authority").verify_key)


def recorded_state(fed: Federation, outputs: dict[str, Any]) -> ChannelState:
    """The channel state after the channel log recorded in the vectors."""
    current = None
    for logged in outputs["channel_log"]:
        current = apply_event(current, ChannelEvent.model_validate(logged["signed"]), fed)
    assert current is not None
    return current


def _logged(event: ChannelEvent) -> dict[str, Any]:
    out: dict[str, Any] = {
        "signing_input": _text(signing_input("channel-event", event.model_dump(mode="json", exclude={"signature"}))),
        "signed": event.model_dump(mode="json"),
        "hash_hex": event_hash(event),
    }
    if isinstance(event.change, Accept):
        body = event.change.acceptance.model_dump(mode="json", exclude={"signature"})
        out["acceptance_signing_input"] = _text(signing_input("channel-accept", body))
    return out


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def _negatives(env: Envelope, content_key: bytes) -> list[dict[str, Any]]:
    """Altered envelopes and the exact error a receiver must raise for each (checked by the tests)."""
    good = env.model_dump(mode="json")
    out: list[dict[str, Any]] = []

    def add(name: str, description: str, wire: bytes, error: type[errors.ExchangeError]) -> None:
        out.append({"name": name, "description": description, "envelope_jcs": _text(wire), "error": error.__name__})

    sig = bytearray(b64d(env.signature))
    sig[0] ^= 0x01
    add(
        "signature-bit-flipped",
        "one bit of the Ed25519 signature flipped",
        canonical_json({**good, "signature": b64e(bytes(sig))}),
        errors.BadSignature,
    )
    swapped = copy.deepcopy(good)
    swapped["wraps"][0], swapped["wraps"][1] = swapped["wraps"][1], swapped["wraps"][0]
    add(
        "wraps-swapped",
        "two wrapped keys swapped: the signature covers the wraps",
        canonical_json(swapped),
        errors.BadSignature,
    )
    tlp = copy.deepcopy(good)
    tlp["header"]["handling"]["tlp"] = "GREEN"
    add(
        "handling-relabelled", "TLP lowered from AMBER to GREEN after signing", canonical_json(tlp), errors.BadSignature
    )
    ct = bytearray(b64d(env.ciphertext))
    ct[-1] ^= 0x01
    add(
        "ciphertext-altered",
        "one ciphertext bit flipped: the signature still verifies, the hash does not",
        canonical_json({**good, "ciphertext": b64e(bytes(ct))}),
        errors.InvalidEnvelope,
    )
    # A recipient knows the content key: it could encrypt altered content under the same key
    # and nonce, so the key commitment still matches, fix the hash and keep the wraps. Only the
    # author's signature stops it, which is why receivers verify the signature first.
    forged_payload = canonical_json({**Bulletin.model_validate(BULLETIN).payload(), "title": "Nothing to report"})
    forged_ct = AESGCM(content_key).encrypt(b64d(env.header.nonce), forged_payload, BODY_AAD)
    forged = copy.deepcopy(good)
    forged["header"]["ciphertext_sha256"] = b64e(sha256(forged_ct))
    forged["ciphertext"] = b64e(forged_ct)
    add(
        "recipient-reencrypted",
        "a recipient re-encrypted altered content under the same content key",
        canonical_json(forged),
        errors.BadSignature,
    )
    noncanon = b64d(env.signature)
    add(
        "signature-non-canonical-base64",
        "the signature's last base64url character has a padding bit set",
        canonical_json({**good, "signature": _set_padding_bit(b64e(noncanon))}),
        errors.InvalidEnvelope,
    )
    wire = envelope_bytes(env)
    add(
        "duplicate-key",
        'a second "v" member in the header',
        wire.replace(b'"v":1}', b'"v":1,"v":1}', 1),
        errors.InvalidEnvelope,
    )
    add(
        "float",
        "seq written as 1.0: floats are refused",
        wire.replace(b'"seq":1,', b'"seq":1.0,', 1),
        errors.InvalidEnvelope,
    )
    add(
        "unknown-field",
        "an extra top-level member",
        canonical_json({**good, "relay": "ke-customs"}),
        errors.InvalidEnvelope,
    )
    return out


def _set_padding_bit(text: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) | 1]


def build(old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole vector, reusing `old`'s certificates and wraps where they are still valid."""
    authority = signing_key("authority")
    certs = _old_certs(old)
    nodes = []
    for node in NODES:
        fresh = tls_cert(node["id"])
        kept = certs.get(node["id"])
        pem = kept if kept and spki_pin(kept.encode("ascii")) == spki_pin(fresh.encode("ascii")) else fresh
        nodes.append({**node, "endpoint": endpoint(node["id"]), "tls_cert": pem})
    entries = [roster_entry({k: n[k] for k in ("id", "name", "country", "agency")}, n["tls_cert"]) for n in nodes]
    roster = Roster.model_validate({**ROSTER_FIELDS, "authority_kid": authority.kid, "nodes": entries})
    signed_roster = sign_roster(roster, authority)
    fed = Federation.verify(signed_roster, authority.verify_key)

    log = channel_log(fed)
    state = replay(log, fed)

    author = NodeId(POST["author"])
    key = signing_key(author)
    bulletin = Bulletin.model_validate(BULLETIN)
    rng = CounterRandom()
    readers = [(n, fed.encryption_key(n)) for n in state.readers]
    fresh_env = build_envelope(
        bulletin,
        state=state,
        author=author,
        key=key,
        seq=POST["seq"],
        readers=readers,
        created=POST["created"],
        rng=rng,
    )
    header = fresh_env.header
    bid = bulletin_id(header)
    ciphertext = b64d(fresh_env.ciphertext)
    wraps = _old_wraps(old, bid, header, ciphertext) or fresh_env.wraps
    env = sign_envelope(header, wraps, ciphertext, key)

    # The vector must pass every receiver rule before it is written.
    keys = {n["id"]: decryption_key(n["id"]) for n in NODES}
    wire = envelope_bytes(env)
    assert verify_envelope(parse_envelope(wire), fed, state) == bid
    for r in header.recipients:
        assert open_envelope(env, bid, NodeId(r.node), keys[r.node]) == bulletin

    content_key, nonce = rng.drawn
    receipt = make_receipt(bid, NodeId(RECEIPT["node"]), RECEIPT["status"], RECEIPT["at"], signing_key(RECEIPT["node"]))
    verify_receipt(receipt, fed)
    signed_body = {"header": header.model_dump(mode="json"), "wraps": list(wraps)}
    receipt_body = receipt.model_dump(mode="json", exclude={"signature"})

    return {
        "description": "Golden vectors for exchange-v1 (docs/protocol.md): roster, channel log, envelope, "
        "receipt and federation transaction, built from fixed seeds by tests/vectors/make_vectors.py.",
        "warning": WARNING,
        "encoding": "Byte strings are unpadded base64url unless the name ends in _hex. Members named *_jcs or "
        "*signing_input are byte strings given as their UTF-8 text.",
        "inputs": {
            "test_keys": {
                label: {
                    "ed25519_seed_label": f"{label}/ed25519",
                    "ed25519_private": b64e(signing_key(label).private_bytes()),
                    **(
                        {}
                        if label == "authority"
                        else {
                            "x25519_seed_label": f"{label}/x25519",
                            "x25519_private": b64e(decryption_key(label).private_bytes()),
                            "tls_p256_seed_label": f"{label}/tls-p256",
                        }
                    ),
                }
                for label in ["authority", *(n["id"] for n in NODES)]
            },
            "nodes": nodes,
            "roster": ROSTER_FIELDS,
            "channel": {**CHANNEL, "steps": CHANNEL_STEPS},
            "bulletin": BULLETIN,
            "post": POST,
            "rng": {
                "how": "draw i is the first n bytes of SHA-256('exchange test vector rng/' || decimal i)",
                "draws": [b64e(content_key), b64e(nonce)],
            },
            "receipt": RECEIPT,
        },
        "outputs": {
            "authority": {"public_key": b64e(authority.verify_key.raw), "kid": authority.kid},
            "roster": {
                "signing_input": _text(signing_input("roster", roster.model_dump(mode="json"))),
                "signed": signed_roster.model_dump(mode="json"),
            },
            "channel_log": [_logged(event) for event in log],
            "content": {
                "payload_jcs": _text(canonical_json(bulletin.payload())),
                "content_key": b64e(content_key),
                "nonce": b64e(nonce),
                "aad": _text(BODY_AAD),
                "key_commitment": b64e(key_commitment(content_key)),
                "ciphertext": b64e(ciphertext),
                "ciphertext_sha256": b64e(sha256(ciphertext)),
            },
            "header_jcs": _text(canonical_json(header.model_dump(mode="json"))),
            "bulletin_id": bid,
            "wraps": [
                {
                    "node": r.node,
                    "kid": r.kid,
                    "info_hex": wrap_info(bid, r.kid).hex(),
                    "enc": b64e(b64d(w)[:32]),
                    "sealed_key": b64e(b64d(w)[32:]),
                }
                for r, w in zip(header.recipients, wraps, strict=True)
            ],
            "envelope_signing_input": _text(signing_input("envelope", signed_body)),
            "envelope": env.model_dump(mode="json"),
            "envelope_jcs": _text(wire),
            "receipt": {
                "signing_input": _text(signing_input("receipt", receipt_body)),
                "signed": receipt.model_dump(mode="json"),
            },
            "transaction": transaction_example(log[-1], env, receipt),
            "negatives": _negatives(env, content_key),
        },
    }


def transaction_example(event: ChannelEvent, env: Envelope, receipt: Receipt) -> dict[str, Any]:
    """What nl-customs would POST to ke-customs carrying the last channel event and the envelope, and the answer."""
    txn = transaction_id([f"event:{event.channel}:{event.pos}", f"envelope:{receipt.bulletin}"])
    return {
        "request": {"txn": txn, "events": [event.model_dump(mode="json")], "envelopes": [env.model_dump(mode="json")]},
        "response": {"txn": txn, "receipts": [receipt.model_dump(mode="json")]},
    }


def _batch(bids: list[str], given: dict[str, Any]) -> dict[str, Any]:
    """One signed batch statement over `bids` and the receipt of each, with every step shown."""
    receipts = make_receipts(bids, NodeId(given["node"]), given["status"], given["at"], signing_key(given["node"]))
    levels = tree_levels([leaf_hash(bytes.fromhex(b)) for b in bids])
    body = statement(receipts[0])
    return {
        "bulletins": bids,
        "leaf_hashes": [b64e(h) for h in levels[0]],
        "levels": [[b64e(h) for h in level] for level in levels],
        "root": b64e(levels[-1][0]),
        "statement": body,
        "statement_signing_input": _text(signing_input(BATCH_DOMAIN, body)),
        "signature": receipts[0].signature,
        "receipts": [
            {"signed": r.model_dump(mode="json"), "jcs": _text(canonical_json(r.model_dump(mode="json")))}
            for r in receipts
        ],
    }


def _receipt_negatives(batch: dict[str, Any], v1: dict[str, Any], bids: list[str]) -> list[dict[str, Any]]:
    """Altered receipts and the exact error a verifier must raise for each (section 10)."""
    good = [r["signed"] for r in batch["receipts"]]
    out: list[dict[str, Any]] = []

    def add(name: str, description: str, receipt: dict[str, Any], error: type[errors.ExchangeError]) -> None:
        out.append({"name": name, "description": description, "receipt": receipt, "error": error.__name__})

    def flipped(text: str) -> str:
        raw = bytearray(b64d(text))
        raw[0] ^= 0x01
        return b64e(bytes(raw))

    first, last = good[0], good[-1]
    add(
        "proof-hash-altered",
        "one bit of the first proof hash flipped",
        {**first, "proof": [flipped(first["proof"][0]), *first["proof"][1:]]},
        errors.ProofError,
    )
    add("index-changed", "index 1 given for the leaf at index 0", {**first, "index": 1}, errors.ProofError)
    add(
        "size-changed-path-breaks",
        "size 4 for the last leaf of a batch of 3: the path no longer fits the tree",
        {**last, "size": 4},
        errors.ProofError,
    )
    add(
        "size-changed-path-holds",
        "size 4 for the first leaf of a batch of 3: the path leads to the same root, but the signed size differs",
        {**first, "size": 4},
        errors.BadSignature,
    )
    add(
        "root-replaced",
        "the root replaced by the first leaf hash",
        {**first, "root": batch["leaf_hashes"][0]},
        errors.ProofError,
    )
    other = leaf_hash(seed("bulletin/3"))
    add(
        "root-and-proof-forged",
        "a batch of 2 made up around the leaf: its proof and root agree, but the signature is over the real root",
        {
            **first,
            "size": 2,
            "proof": [b64e(other)],
            "root": b64e(node_hash(leaf_hash(bytes.fromhex(bids[0])), other)),
        },
        errors.BadSignature,
    )
    add(
        "bulletin-swapped",
        "the first receipt made to name the second bulletin",
        {**first, "bulletin": bids[1]},
        errors.ProofError,
    )
    add(
        "proof-too-long",
        "one hash too many on the path",
        {**last, "proof": [*last["proof"], batch["leaf_hashes"][0]]},
        errors.ProofError,
    )
    add(
        "proof-hash-short",
        "a proof hash of 31 bytes",
        {**first, "proof": [b64e(b64d(first["proof"][0])[:31]), *first["proof"][1:]]},
        errors.ProofError,
    )
    add(
        "root-non-canonical-base64",
        "the root's last base64url character has a padding bit set",
        {**first, "root": _set_padding_bit(first["root"])},
        errors.ProofError,
    )
    v1_domain = sign("receipt", batch["statement"], signing_key(first["node"]))
    add(
        "v2-signed-under-v1-domain",
        'the batch statement signed under the domain "receipt" instead of "receipt-batch"',
        {**first, "signature": v1_domain},
        errors.BadSignature,
    )
    add(
        "signer-not-roster-key",
        "the signer kid of another node",
        {**first, "signer": signing_key("nl-customs").kid},
        errors.InvalidEnvelope,
    )
    add("node-unknown", "a node the roster does not list", {**first, "node": "xx-nobody"}, errors.UnknownPeer)
    add(
        "v2-without-proof",
        "a v2 receipt without its proof",
        {k: v for k, v in first.items() if k != "proof"},
        errors.InvalidInput,
    )
    add("index-not-below-size", "index 3 in a batch of 3", {**last, "index": 3}, errors.InvalidInput)
    add(
        "v1-with-batch-members",
        "a v1 receipt that carries a size",
        {**v1, "size": 1},
        errors.InvalidInput,
    )
    add(
        "v1-version-true",
        'a v1 receipt whose "v" is true: a JSON boolean, not the integer 1 (2.5: no coercion)',
        {**v1, "v": True},
        errors.InvalidInput,
    )
    return out


def build_receipts(envelope_vector: dict[str, Any]) -> dict[str, Any]:
    """The receipt vectors: v1 alone, a v2 batch of 3, a v2 batch of 1, and negatives."""
    fed = recorded_federation(envelope_vector["outputs"])
    bid = envelope_vector["outputs"]["bulletin_id"]
    bids = [bid, *(seed(label).hex() for label in RECEIPT_BATCH["extra_bulletin_labels"])]
    v1 = make_receipt(bid, NodeId(RECEIPT["node"]), RECEIPT["status"], RECEIPT["at"], signing_key(RECEIPT["node"]))
    batch = _batch(bids, RECEIPT_BATCH)
    single = _batch([bid], RECEIPT_SINGLE)
    for receipt in [v1.model_dump(mode="json"), *(r["signed"] for b in (batch, single) for r in b["receipts"])]:
        verify_receipt(parse_receipt(receipt), fed)
    signer = signing_key(RECEIPT["node"])
    return {
        "description": "Golden vectors for exchange-v1 receipts (docs/protocol.md, section 10): a v1 receipt, "
        "a v2 batch of three and a v2 batch of one, each receipt provable alone, and altered receipts. "
        "Built by tests/vectors/make_vectors.py; the roster is the one in envelope-v1.json.",
        "warning": WARNING,
        "encoding": "Byte strings are unpadded base64url. Members named *jcs or *signing_input are byte strings "
        "given as their UTF-8 text. A leaf is SHA-256(0x00 || the 32 bytes of the bulletin id); an interior "
        "node SHA-256(0x01 || left || right) (RFC 9162).",
        "inputs": {
            "roster": "envelope-v1.json, outputs.roster.signed",
            "signer": {
                "node": RECEIPT["node"],
                "ed25519_seed_label": f"{RECEIPT['node']}/ed25519",
                "ed25519_private": b64e(signer.private_bytes()),
                "public_key": b64e(signer.verify_key.raw),
                "kid": signer.kid,
            },
            "v1": {**RECEIPT, "bulletin": bid},
            "batch": {
                **{k: RECEIPT_BATCH[k] for k in ("node", "status", "at")},
                "bulletins": bids,
                "how": "the first is envelope-v1.json's bulletin_id; the others are "
                "hex(SHA-256('exchange test vector ' || label)) for the labels "
                + " and ".join(RECEIPT_BATCH["extra_bulletin_labels"]),
            },
            "single": {**RECEIPT_SINGLE, "bulletins": [bid]},
        },
        "outputs": {
            "v1": {
                "signing_input": _text(signing_input("receipt", v1.model_dump(mode="json", exclude={"signature"}))),
                "signed": v1.model_dump(mode="json"),
            },
            "batch": batch,
            "single": single,
            "negatives": _receipt_negatives(batch, v1.model_dump(mode="json"), bids),
            "batch_form": _batch_form(batch, fed),
        },
    }


def _batch_form(batch: dict[str, Any], fed: Federation) -> dict[str, Any]:
    """The batch's three receipts as the batch form answers a push of its bulletins (10.4), the
    receipts the author makes of it, and altered batches with the error each must raise."""
    full, batches = batch_form([parse_receipt(r["signed"]) for r in batch["receipts"]])
    assert not full and len(batches) == 1
    good, sent, dest = batches[0], set(batch["bulletins"]), RECEIPT_BATCH["node"]
    made = checked_batches(batches, dest, sent, fed)
    assert [receipt_text(made[b]) for b in batch["bulletins"]] == [r["jcs"] for r in batch["receipts"]]
    st = good["statement"]
    other = seed("bulletin/3").hex()
    negatives: list[dict[str, Any]] = []

    def add(name: str, description: str, altered: Any, error: type[errors.ExchangeError]) -> None:
        try:
            checked_batches([altered], dest, sent, fed)
        except error:
            negatives.append({"name": name, "description": description, "batch": altered, "error": error.__name__})
            return
        raise AssertionError(f"{name}: not refused with {error.__name__}")

    b0, b1, b2 = good["bulletins"]
    add(
        "extra-member", "a member beside statement, signature and bulletins", {**good, "proof": []}, errors.InvalidInput
    )
    add(
        "statement-member-missing",
        "the statement without root",
        {**good, "statement": {k: v for k, v in st.items() if k != "root"}},
        errors.InvalidInput,
    )
    add("v-true", "the statement's v is true", {**good, "statement": {**st, "v": True}}, errors.InvalidInput)
    add("bulletin-twice", "one bulletin id twice", {**good, "bulletins": [b0, b1, b1]}, errors.InvalidInput)
    add(
        "bulletin-uppercase",
        "a bulletin id in capitals",
        {**good, "bulletins": [b0.upper(), b1, b2]},
        errors.InvalidInput,
    )
    add(
        "bulletin-not-sent",
        "a bulletin that was not in the push",
        {**good, "bulletins": [b0, b1, other]},
        errors.InvalidEnvelope,
    )
    add(
        "status-opened",
        "the statement's status is opened",
        {**good, "statement": {**st, "status": "opened"}},
        errors.InvalidEnvelope,
    )
    add(
        "node-other",
        "the statement names another node than the one pushed to",
        {**good, "statement": {**st, "node": "gb-avsec"}},
        errors.InvalidEnvelope,
    )
    add(
        "bulletins-reordered", "the first two bulletins swapped", {**good, "bulletins": [b1, b0, b2]}, errors.ProofError
    )
    add(
        "bulletin-left-out",
        "the last bulletin left out (size still 3)",
        {**good, "bulletins": [b0, b1]},
        errors.ProofError,
    )
    add("size-four", "size 4 for three bulletins", {**good, "statement": {**st, "size": 4}}, errors.ProofError)
    flipped = bytearray(b64d(good["signature"]))
    flipped[0] ^= 0x01
    add(
        "signature-altered",
        "one bit of the signature flipped",
        {**good, "signature": b64e(bytes(flipped))},
        errors.BadSignature,
    )
    add(
        "at-altered",
        "the statement's time changed",
        {**good, "statement": {**st, "at": "2025-03-14T09:26:55.120Z"}},
        errors.BadSignature,
    )
    return {
        "how": "the answer to a push of the batch's three bulletins to its node, with the request header "
        "'Exchange-Receipt-Form: batches' (docs/protocol.md 10.4); the author makes outputs.batch.receipts "
        "of it, byte for byte (their jcs). Each negative is one altered batch in such an answer, pushed "
        "the same three bulletins, with the error the author must raise.",
        "answer": {"txn": "vector", "receipts": [], "batches": batches},
        "negatives": negatives,
    }


def render(vector: dict[str, Any]) -> str:
    return json.dumps(vector, indent=2, ensure_ascii=False) + "\n"


def load(path: Path = ENVELOPE_FILE) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def main(argv: list[str]) -> int:
    envelope = build(load())
    files = {ENVELOPE_FILE: render(envelope), RECEIPTS_FILE: render(build_receipts(envelope))}
    if "--check" in argv:
        stale = [path for path, text in files.items() if not path.exists() or path.read_text("utf-8") != text]
        for path in stale:
            print(f"{path} is out of date; run python -m tests.vectors.make_vectors", file=sys.stderr)
        if not stale:
            print("the vectors are up to date")
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text, "utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
