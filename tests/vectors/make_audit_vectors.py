"""Build tests/vectors/audit-v1.json: audit entries, the log's tree and proofs, checkpoints,
cosignatures, a witness exchange, API answers, export bundles and negatives (docs/audit.md).

Run `python -m tests.vectors.make_audit_vectors` to write the file, or add `--check` to compare it
with what the code produces now. It reuses the roster and test keys of envelope-v1.json: the log
is nl-customs's, its witnesses ke-customs and gb-avsec; the `epoch.*` entries name the epoch and
grant of envelope-v2.json. Every input is fixed (times, cosignature
times, the ids of bulletins other than envelope-v1.json's, drawn from make_vectors' CounterRandom);
Ed25519 is deterministic, so the file reproduces byte for byte.

Every byte written here comes from the code that writes it in a node: an entry's bytes from the
store's `AuditBuffer`, notes from `exchange.audit.checkpoint`, the witness bodies from
`exchange.audit.witness`, the API answers from `exchange.service.audit.views` (as aiohttp's
`json_response` serialises them: `json.dumps` with its defaults), the bundle lines from
`exchange.audit.keeper` exactly as `LogEntries.export_lines` joins them.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

from exchange.audit import epoch_events as eev, events as ev
from exchange.audit.checkpoint import (
    COSIGNATURE_HEADER,
    Checkpoint,
    cosign,
    log_origin,
    open_checkpoint,
    sign_checkpoint,
    verify_cosignature,
    witness_name,
)
from exchange.audit.keeper import (
    StoredCheckpoint,
    entry_lines,
    evidence_records,
    header_record,
    record_line,
)
from exchange.audit.log import BundleCheck, KeyRing
from exchange.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Note,
    NoteSignature,
    key_id,
    parse_signature_line,
    sign_note,
)
from exchange.audit.witness import (
    Seen,
    Stale,
    cosign_request,
    cosignature_body,
    open_logs_checkpoint,
    split_detail,
    split_message,
    went_back,
)
from exchange.crypto import SigningKey, b64d, b64e, canonical_json, sha256, strict_loads
from exchange.errors import (
    AuditTampered,
    BadEntry,
    BadSignature,
    ExchangeError,
    InvalidInput,
    ProofError,
    SplitView,
)
from exchange.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from exchange.protocol.epoch import grant_digest, parse_grant
from exchange.service.audit.views import ConsistencyProof, InclusionProof, LatestForWitness
from exchange.service.outbox import transaction_id
from exchange.store.writer import AuditBuffer
from tests.vectors.make_vectors import (
    CHANNEL,
    RECEIPT,
    WARNING,
    CounterRandom,
    load,
    recorded_federation,
    render,
    signing_key,
)

HERE = Path(__file__).resolve().parent
FILE = HERE / "audit-v1.json"
V2_FILE = HERE / "envelope-v2.json"  # the epoch and grant of the `epoch.*` entries

LOG_NODE = "nl-customs"
WITNESSES = ("gb-avsec", "ke-customs")
IMPOSTOR = "impostor"  # a key in no roster: signs the "checkpoint by another key" negative
WHOLE = 46  # entries in the log
CHECKPOINT_SIZES = (1, 8, 13, WHOLE)  # one entry, a power of two, neither, the whole log
SIGNED_AT = {1: "2025-03-14T09:00:01.000Z", 8: "2025-03-14T09:27:00.000Z", 13: "2025-03-14T09:40:00.000Z"}
SIGNED_AT[WHOLE] = "2025-03-14T11:00:00.000Z"
# Who co-signed which checkpoint, and when (POSIX seconds): the story of `_witness_exchange`.
COSIGNED: list[tuple[int, str, int]] = [
    (8, "ke-customs", 1741944440),  # pushed at first contact: old_size 0, no proof
    (13, "gb-avsec", 1741945260),  # pulled at first contact (?from=0)
    (WHOLE, "ke-customs", 1741950020),  # pushed from 8 after a "stale" answer
    (WHOLE, "gb-avsec", 1741950080),  # pulled from 13
]
INCLUSIONS = [(0, 1), (0, 8), (7, 8), (5, 13), (12, 13)] + [(i, WHOLE) for i in range(WHOLE)]
CONSISTENCIES = [(1, 8), (8, 13), (13, WHOLE), (1, WHOLE), (8, WHOLE), (16, WHOLE), (32, WHOLE), (13, 13)]
EXPORTED_AT = "2025-03-14T11:05:00.000Z"
# A quote, a backslash and non-ASCII text take an entry out of the export's plain form.
FORGED_TITLE = 'Reason "forged" \\ é'


def _bulletin_ids(first: str) -> tuple[list[str], list[bytes]]:
    """envelope-v1.json's bulletin, then four more drawn from the counter (an entry needs only ids)."""
    rng = CounterRandom("audit/bulletin")
    return [first, *(rng(32).hex() for _ in range(4))], rng.drawn


def entries(v1: dict[str, Any]) -> tuple[list[ev.AuditEntry], list[bytes]]:
    """One entry of every kind (some twice, to show optional members), as nl-customs's writers
    hand them to the store (without `idx`), and the random draws behind the extra bulletin ids."""
    out = v1["outputs"]
    roster = out["roster"]["signed"]
    me = next(n for n in roster["roster"]["nodes"] if n["id"] == LOG_NODE)
    ids, drawn = _bulletin_ids(out["bulletin_id"])
    bid, other, relayed, refused, fanned = ids
    log = out["channel_log"]
    channel = CHANNEL["channel"]
    created = log[0]["signed"]["change"]
    owner = CHANNEL["owner"]

    def changed(i: int, at: str, change: dict[str, Any]) -> ev.ChannelChanged:
        return {
            "event": ev.CHANNEL_CHANGED,
            "at": at,
            "channel": channel,
            "pos": i,
            "hash": log[i]["hash_hex"],
            "owner": owner,
            "change": change,
        }

    made: list[ev.AuditEntry] = [
        {
            "event": ev.NODE_STARTED,
            "at": "2025-03-14T09:00:00.000Z",
            "roster_version": 1,
            "roster_sha256": sha256(canonical_json(roster)).hex(),
            "authority_kid": roster["roster"]["authority_kid"],
            "signing_kid": me["signing_kid"],
            "encryption_kid": me["encryption_kid"],
            "tls_pin": me["tls_pin"],
        },
        {
            "event": ev.USER_CREATED,
            "at": "2025-03-14T09:01:00.000Z",
            "user": "alice",
            "role": "officer",
            "actor": "admin",
        },
        {"event": ev.USER_TOKEN_ROTATED, "at": "2025-03-14T09:01:10.000Z", "user": "alice", "actor": "admin"},
        {"event": ev.USER_PASSWORD_SET, "at": "2025-03-14T09:01:20.000Z", "user": "alice", "actor": "alice"},
        changed(0, "2025-03-14T09:02:00.000Z", created),
        changed(1, "2025-03-14T09:02:00.001Z", log[1]["signed"]["change"]),
        changed(2, "2025-03-14T09:02:00.002Z", {"type": "accept", "node": "ke-customs"}),
        {
            "event": ev.USER_ASSIGNED,
            "at": "2025-03-14T09:03:00.000Z",
            "user": "alice",
            "channel": channel,
            "actor": "admin",
        },
        {"event": ev.CONSOLE_SIGNED_IN, "at": "2025-03-14T09:20:00.000Z", "user": "alice", "address": "192.0.2.10"},
        {
            "event": ev.BULLETIN_POSTED,
            "at": "2025-03-14T09:26:53.590Z",
            "bulletin": bid,
            "channel": channel,
            "author": LOG_NODE,
            "seq": 1,
            "state": 4,
            "user": "alice",
            "recipients": ["gb-avsec", "ke-customs", "nl-customs"],
            "tlp": "AMBER",
        },
        {
            "event": ev.BULLETIN_SENT,
            "at": "2025-03-14T09:26:53.700Z",
            "bulletin": bid,
            "to": "ke-customs",
            "txn": transaction_id([f"envelope:{bid}"]),  # as the outbox names a batch of this one envelope
        },
        {
            "event": ev.BULLETIN_DELIVERED,
            "at": "2025-03-14T09:26:54.200Z",
            "bulletin": bid,
            "to": "ke-customs",
            "receipt_at": RECEIPT["at"],
        },
        {
            "event": ev.SEND_REFUSED,
            "at": "2025-03-14T09:27:30.000Z",
            "kind": "envelope",
            "ref": refused,
            "to": "gb-avsec",
            "reason": "InvalidEnvelope: the recipients are not the readers of the cited state",
        },
        {
            "event": ev.BULLETIN_OPENED_BY,
            "at": "2025-03-14T10:02:11.500Z",
            "bulletin": bid,
            "to": "ke-customs",
            "receipt_at": "2025-03-14T10:02:11.457Z",
        },
        {
            "event": ev.BULLETIN_RECEIVED,
            "at": "2025-03-14T10:10:00.000Z",
            "bulletin": other,
            "channel": channel,
            "author": "ke-customs",
            "seq": 1,
            "from": "ke-customs",
        },
        {
            "event": ev.BULLETIN_RECEIVED,
            "at": "2025-03-14T10:11:00.000Z",
            "bulletin": relayed,
            "channel": channel,
            "author": "ke-customs",
            "seq": 2,
            "from": "gb-avsec",
            "relayed": True,
        },
        {
            "event": ev.BULLETIN_OPENED,
            "at": "2025-03-14T10:12:00.000Z",
            "bulletin": other,
            "channel": channel,
            "user": "alice",
        },
        {
            "event": ev.BULLETIN_UNVERIFIED,
            "at": "2025-03-14T10:13:00.000Z",
            "bulletin": relayed,
            "user": "alice",
            "problem": "its stored TLP ('CLEAR') differs from the signed header's ('AMBER'): the TLP was changed",
        },
        {
            "event": ev.REQUEST_REJECTED,
            "at": "2025-03-14T10:14:00.000Z",
            "method": "POST",
            "path": "/fed/v1/envelopes",
            "status": 422,
            "reason": "InvalidEnvelope",
            "peer": "gb-avsec",
            "address": "198.51.100.7",
        },
        {
            "event": ev.REQUEST_REJECTED,
            "at": "2025-03-14T10:15:00.000Z",
            "method": "GET",
            "path": "/api/v1/bulletins/zz",
            "status": 403,
            "reason": FORGED_TITLE,
            "user": "bob",
            "address": "192.0.2.11",
        },
        {
            "event": ev.REQUESTS_REFUSED,
            "at": "2025-03-14T10:16:00.000Z",
            "address": "2001:db8:1:2::/64",
            "since": "2025-03-14T10:15:00.000Z",
            "count": 41,
            "reasons": {"401 Unauthorized": 40, "408 header timeout": 1},
            "sample": "GET /api/v1/bulletins",
        },
        {
            "event": ev.USER_UNASSIGNED,
            "at": "2025-03-14T10:17:00.000Z",
            "user": "alice",
            "channel": channel,
            "actor": "admin",
        },
        {"event": ev.CONSOLE_SIGNIN_FAILED, "at": "2025-03-14T10:18:00.000Z", "address": "192.0.2.12", "user": "alice"},
        {
            "event": ev.CONSOLE_SIGNIN_FAILED,
            "at": "2025-03-14T10:18:01.000Z",
            "address": "192.0.2.12",
            "unknown_user": True,
        },
        {
            "event": ev.CONSOLE_SIGNIN_THROTTLED,
            "at": "2025-03-14T10:18:02.000Z",
            "limit": "address",
            "address": "192.0.2.12",
        },
        {"event": ev.CONSOLE_SIGNED_OUT, "at": "2025-03-14T10:19:00.000Z", "user": "alice", "address": "192.0.2.10"},
        {
            "event": ev.AUDIT_SPLIT_VIEW,
            "at": "2025-03-14T10:20:00.000Z",
            "node": "gb-avsec",
            "seen_size": 40,
            "seen_root": b64e(sha256(b"seen")),
            "shown_size": 40,
            "shown_root": b64e(sha256(b"shown")),
            "detail": "sizes are equal but the roots differ",
        },
        {"event": ev.AUDIT_TRACE, "at": "2025-03-14T10:21:00.000Z", "bulletin": bid, "user": "carol"},
        {"event": ev.AUDIT_TRACE_SERVED, "at": "2025-03-14T10:22:00.000Z", "bulletin": bid, "peer": "ke-customs"},
        {
            "event": ev.TAXII_READ,
            "at": "2025-03-14T10:23:00.000Z",
            "user": "alice",
            "channel": channel,
            "resource": "objects",
            "objects": 12,
        },
        {
            "event": ev.ROSTER_INSTALLED,
            "at": "2025-03-14T10:24:00.000Z",
            "version": 2,
            "hash": sha256(b"roster v2").hex(),
            "held": 1,
            "versions": 1,
            "expires": "2026-03-01T00:00:00.000Z",
            "source": "import",
        },
        {
            "event": ev.ROSTER_REFUSED,
            "at": "2025-03-14T10:25:00.000Z",
            "error": "RosterEquivocation",
            "held": 2,
            "offered": 2,
            "source": "import",
            "detail": "version 2 with another hash, signed by its authority",
            "held_hash": sha256(b"roster v2").hex(),
            "offered_hash": sha256(b"roster v2'").hex(),
            "suppressed": 3,
        },
        {
            "event": ev.WEBHOOK_CHANGED,
            "at": "2025-03-14T10:26:00.000Z",
            "user": "admin",
            "webhook": 1,
            "channel": channel,
            "url": "https://alerts.example.org/exchange",
            "change": "registered",
        },
        {
            "event": ev.WEBHOOK_FAILING,
            "at": "2025-03-14T10:27:00.000Z",
            "webhook": 1,
            "channel": channel,
            "error": "HTTP 503",
        },
        {
            "event": ev.WEBHOOK_DELIVERED,
            "at": "2025-03-14T10:28:00.000Z",
            "webhook": 1,
            "channel": channel,
            "count": 2,
            "through": 57,
        },
        *_epoch_entries(),
        # This release's form: one entry per bulletin for the recipients of one group commit (the
        # bulletin's posting is left out here; the one-recipient kinds above stay valid).
        {
            "event": ev.BULLETIN_SENT_TO,
            "at": "2025-03-14T10:40:00.100Z",
            "bulletin": fanned,
            "to": {
                "gb-avsec": transaction_id([f"envelope:{fanned}"]),
                "ke-customs": transaction_id([f"envelope:{fanned}"]),
            },
        },
        {
            "event": ev.BULLETIN_DELIVERED_TO,
            "at": "2025-03-14T10:40:00.900Z",
            "bulletin": fanned,
            "to": {"gb-avsec": "2025-03-14T10:40:00.612Z", "ke-customs": "2025-03-14T10:40:00.587Z"},
        },
        ev.catchup_refused(
            "2025-03-14T10:45:00.000Z",
            "ke-customs",
            channel,
            [(other, "DecryptionFailed", "the wrapped key for this node does not open")],
        ),
        {"event": ev.USER_DISABLED, "at": "2025-03-14T10:50:00.000Z", "user": "alice", "actor": "cli"},
        {"event": ev.USER_ENABLED, "at": "2025-03-14T10:55:00.000Z", "user": "alice", "actor": "cli"},
        {"event": ev.NODE_STOPPED, "at": "2025-03-14T11:00:00.000Z"},
    ]
    return made, drawn


def _epoch_entries() -> list[ev.AuditEntry]:
    """Envelope v2 (docs/protocol.md 15): as owner of the channel, epoch 1 and the history grant of
    envelope-v2.json; as a member of another channel (owned by ke-customs, whose epochs are not in
    those vectors: their hashes are drawn from labels), a key taken by wrap and one by grant, and
    that owner's second record of epoch 1 found there."""
    v2 = strict_loads(V2_FILE.read_text("utf-8"))["outputs"]
    epoch = next(e for e in v2["epochs"] if e["record"]["n"] == 1)
    record, grant = epoch["record"], parse_grant(v2["grant"]["signed"])
    other, owner = "c2c-east-africa", "ke-customs"
    return [
        {
            "event": eev.EPOCH_MADE,
            "at": "2025-03-14T10:29:00.000Z",
            "channel": record["channel"],
            "n": record["n"],
            "hash": epoch["hash_hex"],
            "state": record["state"]["pos"],
            "readers": [w["node"] for w in record["wraps"]],
        },
        {
            "event": eev.EPOCH_GRANTED,
            "at": "2025-03-14T10:30:00.000Z",
            "channel": grant.channel,
            "node": grant.node,
            "state": grant.state.pos,
            "hash": grant_digest(grant),
            "epochs": [e.n for e in grant.epochs],
        },
        {
            "event": eev.EPOCH_KEY_TAKEN,
            "at": "2025-03-14T10:31:00.000Z",
            "channel": other,
            "n": 1,
            "hash": sha256(f"epoch 1 of {other}".encode()).hex(),
            "owner": owner,
        },
        {
            "event": eev.EPOCH_GRANT_TAKEN,
            "at": "2025-03-14T10:32:00.000Z",
            "channel": other,
            "owner": owner,
            "state": 3,
            "hash": sha256(f"grant of {other} to {LOG_NODE}".encode()).hex(),
            "epochs": [0],
        },
        eev.equivocation(
            "2025-03-14T10:33:00.000Z",
            other,
            1,
            owner,
            sha256(f"epoch 1 of {other}".encode()).hex(),
            sha256(f"a second epoch 1 of {other}".encode()).hex(),
        ),
    ]


def _key(label: str) -> dict[str, Any]:
    sk = signing_key(label)
    return {
        "ed25519_seed_label": f"{label}/ed25519",
        "ed25519_private": b64e(sk.private_bytes()),
        "public_key": b64e(sk.verify_key.raw),
    }


def _cosignature(text: str, witness: str, timestamp: int) -> dict[str, Any]:
    key = signing_key(witness)
    line = cosign(text, witness_name(witness), key, timestamp)
    return {
        "witness": witness,
        "key_name": witness_name(witness),
        "key_id_hex": key_id(witness_name(witness), SIG_COSIGNATURE_V1, key.verify_key.raw).hex(),
        "time": timestamp,
        "signed_message": f"{COSIGNATURE_HEADER}time {timestamp}\n{text}",
        "line": line.line(),
    }


def _stored(size: int, root: bytes, key: SigningKey) -> StoredCheckpoint:
    """Checkpoint `size` as the node stores it, with every cosignature it got (by witness name order)."""
    note = sign_checkpoint(Checkpoint(log_origin(LOG_NODE), size, root), key).render()
    text = Checkpoint(log_origin(LOG_NODE), size, root).text()
    lines = sorted((w, cosign(text, witness_name(w), signing_key(w), t).line()) for s, w, t in COSIGNED if s == size)
    return StoredCheckpoint(size, root, note, SIGNED_AT[size], tuple(lines))


def _checkpoint(stored: StoredCheckpoint) -> dict[str, Any]:
    key = signing_key(LOG_NODE)
    text = Checkpoint(log_origin(LOG_NODE), stored.size, stored.root).text()
    sig = sign_note(text, log_origin(LOG_NODE), key)
    return {
        "size": stored.size,
        "root": b64e(stored.root),
        "text": text,
        "key_name": log_origin(LOG_NODE),
        "key_id_hex": key_id(log_origin(LOG_NODE), SIG_ED25519, key.verify_key.raw).hex(),
        "signature_line": sig.line(),
        "note": stored.note,
        "cosignatures": [
            _cosignature(text, w, t) for s, w, t in sorted(COSIGNED, key=lambda c: c[1]) if s == stored.size
        ],
        "full_note": stored.full_note(),
    }


def _as_sent(body: Any) -> str:
    """A JSON answer as the node's routes send it (aiohttp's json_response: json.dumps, defaults)."""
    return json.dumps(body)


def _bundle_lines(
    node: str, roster: Any, cps: list[StoredCheckpoint], rows: list[tuple[int, bytes, bytes]]
) -> list[str]:
    """A full export, as `LogEntries.export_lines` writes it, split into lines (no newlines)."""
    header = header_record(node, log_origin(node), roster, at=EXPORTED_AT, complete=True, size=len(rows))
    data = json.dumps(header, separators=(",", ":")).encode() + b"\n"
    data += b"".join(record_line({"type": "checkpoint", "note": cp.full_note()}) + b"\n" for cp in cps)
    data += entry_lines(rows)
    data += record_line({"type": "end", "entries": len(rows)}) + b"\n"
    return data.decode("utf-8").split("\n")[:-1]


def build(v1: dict[str, Any]) -> dict[str, Any]:
    """The whole vector, from envelope-v1.json's roster and fixed inputs."""
    roster = v1["outputs"]["roster"]["signed"]
    made, drawn = entries(v1)
    buffer = AuditBuffer(next_idx=0)
    for entry in made:
        buffer.add(entry)
    rows = [(r["idx"], r["entry"], r["leaf_hash"]) for r in buffer.rows]
    leaves = [leaf for _, _, leaf in rows]
    assert len(leaves) == CHECKPOINT_SIZES[-1]
    key = signing_key(LOG_NODE)
    stored = [_stored(size, root_from_leaf_hashes(leaves[:size]), key) for size in CHECKPOINT_SIZES]
    by_size = {cp.size: cp for cp in stored}
    bid = v1["outputs"]["bulletin_id"]

    return {
        "description": "Golden vectors for the exchange audit log (docs/audit.md): entries of every kind with "
        "their canonical bytes and leaf hashes, the RFC 9162 tree with inclusion and consistency proofs, C2SP "
        "signed-note checkpoints and tlog-cosignature/v1 cosignatures, a witness exchange, the audit API's "
        "answers, export bundles and negatives. Built by tests/vectors/make_audit_vectors.py; the roster is "
        "the one in envelope-v1.json.",
        "warning": WARNING,
        "encoding": "Hashes and proofs are unpadded base64url (docs/protocol.md 2.1), except inside signed "
        "notes, which use standard padded base64 (C2SP). Members named *_hex are hex. Entries (`jcs`), note "
        "texts, notes, lines and bodies are byte strings given as their UTF-8 text. A JSON Lines file is its "
        "`lines` joined with a newline (0x0A), with a final newline.",
        "inputs": {
            "roster": "envelope-v1.json, outputs.roster.signed",
            "log": {"node": LOG_NODE, "origin": log_origin(LOG_NODE), **_key(LOG_NODE)},
            "witnesses": [{"node": w, "key_name": witness_name(w), **_key(w)} for w in WITNESSES],
            "impostor": {"note": "a key in no roster", **_key(IMPOSTOR)},
            "rng": {
                "how": "draw i is SHA-256('exchange test vector audit/bulletin/' || decimal i), i from 0: the ids "
                "of the bulletins other than envelope-v1.json's bulletin_id",
                "draws_hex": [d.hex() for d in drawn],
            },
            "entries": made,
            "checkpoint_sizes": list(CHECKPOINT_SIZES),
            "signed_at": {str(k): v for k, v in SIGNED_AT.items()},
            "cosigned": [{"size": s, "witness": w, "time": t} for s, w, t in COSIGNED],
            "exported_at": EXPORTED_AT,
        },
        "outputs": {
            "entries": [
                {"idx": i, "event": made[i]["event"], "jcs": e.decode("utf-8"), "leaf_hash": b64e(h)}
                for i, e, h in rows
            ],
            "tree": {
                "empty_root": b64e(EMPTY_ROOT),
                "roots": [
                    {"size": n, "root": b64e(root_from_leaf_hashes(leaves[:n]))} for n in range(1, len(leaves) + 1)
                ],
            },
            "inclusion": [
                {
                    "index": i,
                    "size": n,
                    "leaf_hash": b64e(leaves[i]),
                    "proof": [b64e(p) for p in inclusion_proof(leaves[:n], i)],
                    "root": b64e(root_from_leaf_hashes(leaves[:n])),
                }
                for i, n in INCLUSIONS
            ],
            "consistency": [
                {
                    "from": m,
                    "to": n,
                    "proof": [b64e(p) for p in consistency_proof(leaves[:n], m)],
                    "old_root": b64e(root_from_leaf_hashes(leaves[:m])),
                    "new_root": b64e(root_from_leaf_hashes(leaves[:n])),
                }
                for m, n in CONSISTENCIES
            ],
            "checkpoints": [_checkpoint(cp) for cp in stored],
            "api": {
                "GET /api/v1/audit/checkpoint": _as_sent(by_size[WHOLE].view()),
                "GET /api/v1/audit/proof/inclusion?index=9&size=13": _as_sent(
                    InclusionProof(9, 13, rows[9][1], leaves[9], inclusion_proof(leaves[:13], 9), by_size[13]).to_json()
                ),
                f"GET /api/v1/audit/proof/consistency?from=8&to={WHOLE}": _as_sent(
                    ConsistencyProof(8, WHOLE, consistency_proof(leaves, 8), by_size[WHOLE]).to_json()
                ),
                "GET /fed/v1/audit/checkpoint?from=13": _as_sent(
                    LatestForWitness(by_size[WHOLE], consistency_proof(leaves, 13)).to_json()
                ),
                "GET /fed/v1/audit/checkpoint?from=0 (no checkpoint yet)": _as_sent(
                    LatestForWitness(None, []).to_json()
                ),
                f"GET /fed/v1/audit/bulletins/{bid}": _as_sent(_evidence(bid, rows, by_size[WHOLE])),
            },
            "witness": _witness_exchange(by_size, leaves),
            "bundle": {"lines": _bundle_lines(LOG_NODE, roster, stored, rows)},
            "bulletin_bundle": {"bulletin": bid, "lines": _bulletin_bundle(bid, roster, rows, by_size[WHOLE])},
            "negatives": _negatives(roster, rows, stored),
        },
    }


def _evidence(bid: str, rows: list[tuple[int, bytes, bytes]], cp: StoredCheckpoint) -> dict[str, Any]:
    """`LogEntries.evidence`: this log's entries about `bid` (its `bulletin`, or the `ref` of a
    refused send), each with its inclusion proof in checkpoint `cp`."""
    leaves = [h for _, _, h in rows]
    found = [(i, e) for i, e, _ in rows if bid in (json.loads(e).get("bulletin"), json.loads(e).get("ref"))]
    return {
        "node": LOG_NODE,
        "checkpoint": cp.full_note(),
        "size": cp.size,
        "entries": [
            {"idx": i, "entry": e.decode("utf-8"), "proof": [b64e(p) for p in inclusion_proof(leaves[: cp.size], i)]}
            for i, e in found
            if i < cp.size
        ],
    }


def _bulletin_bundle(bid: str, roster: Any, rows: list[tuple[int, bytes, bytes]], cp: StoredCheckpoint) -> list[str]:
    """`exchange audit export --bulletin`, as `LogEntries.export_lines` writes it."""
    ev_json: Any = _evidence(bid, rows, cp)
    header = header_record(
        LOG_NODE, log_origin(LOG_NODE), roster, at=EXPORTED_AT, complete=False, size=cp.size, bulletin=bid
    )
    data = json.dumps(header, separators=(",", ":")).encode() + b"\n"
    data += b"".join(record_line(r) + b"\n" for r in evidence_records(ev_json))
    return data.decode("utf-8").split("\n")[:-1]


# -- the witness exchange -------------------------------------------------------------------------


def _at_the_time(cp: StoredCheckpoint, before: int) -> StoredCheckpoint:
    """Checkpoint `cp` with only the cosignatures made before POSIX time `before`."""
    kept = tuple((w, line) for (w, line) in cp.cosignatures if _time_of(cp.size, w) < before)
    return StoredCheckpoint(cp.size, cp.root, cp.note, cp.at, kept)


def _time_of(size: int, witness: str) -> int:
    return next(t for s, w, t in COSIGNED if (s, w) == (size, witness))


def _step(name: str, sender: str, receiver: str, route: str, request: bytes | None, answer: Any) -> dict[str, Any]:
    return {
        "step": name,
        "from": sender,
        "to": receiver,
        "request": route,
        "request_body": None if request is None else request.decode("utf-8"),
        "status": 200,
        "response_body": _as_sent(answer),
    }


def _witness_exchange(by_size: dict[int, StoredCheckpoint], leaves: list[bytes]) -> list[dict[str, Any]]:
    """nl-customs's log witnessed by ke-customs (pushes) and gb-avsec (pulls), in order."""

    def line(size: int, witness: str) -> str:
        cp = by_size[size]
        text = Checkpoint(log_origin(LOG_NODE), size, cp.root).text()
        return cosign(text, witness_name(witness), signing_key(witness), _time_of(size, witness)).line()

    def proof(old: int, new: int) -> list[bytes]:
        return consistency_proof(leaves[:new], old)

    cp13_then = _at_the_time(by_size[13], _time_of(13, "gb-avsec"))
    whole_then = _at_the_time(by_size[WHOLE], _time_of(WHOLE, "gb-avsec"))
    push, pull, back = "POST /fed/v1/audit/cosign", "GET /fed/v1/audit/checkpoint", "POST /fed/v1/audit/cosignatures"
    return [
        _step(
            "push at first contact: old_size 0, no proof; the witness trusts it (TOFU) and co-signs",
            LOG_NODE,
            "ke-customs",
            push,
            cosign_request(by_size[8].note, 0, []),
            {"status": "cosigned", "cosignature": line(8, "ke-customs")},
        ),
        _step(
            "push from a size the witness did not see: it answers with the size it saw",
            LOG_NODE,
            "ke-customs",
            push,
            cosign_request(by_size[WHOLE].note, 0, []),
            {"status": "stale", "size": 8},
        ),
        _step(
            f"push again with a consistency proof from 8 to {WHOLE}",
            LOG_NODE,
            "ke-customs",
            push,
            cosign_request(by_size[WHOLE].note, 8, proof(8, WHOLE)),
            {"status": "cosigned", "cosignature": line(WHOLE, "ke-customs")},
        ),
        _step(
            "pull at first contact (the log's latest was 13)",
            "gb-avsec",
            LOG_NODE,
            f"{pull}?from=0",
            None,
            LatestForWitness(cp13_then, []).to_json(),
        ),
        _step(
            "the pulling witness returns its cosignature",
            "gb-avsec",
            LOG_NODE,
            back,
            cosignature_body(13, line(13, "gb-avsec")),
            {"stored": True},
        ),
        _step(
            f"pull from 13 (the log's latest is now {WHOLE}, co-signed by ke-customs already)",
            "gb-avsec",
            LOG_NODE,
            f"{pull}?from=13",
            None,
            LatestForWitness(whole_then, proof(13, WHOLE)).to_json(),
        ),
        _step(
            "the pulling witness returns its cosignature",
            "gb-avsec",
            LOG_NODE,
            back,
            cosignature_body(WHOLE, line(WHOLE, "gb-avsec")),
            {"stored": True},
        ),
    ]


# -- negatives --------------------------------------------------------------------------------------


def edited(base: list[str], edits: list[dict[str, Any]]) -> list[str]:
    """A bundle's lines after `edits`: each removes `delete` lines of `base` from line `at` (0-based)
    and puts the `insert` lines there. Edits do not overlap and their `at` refer to `base`."""
    out = list(base)
    for edit in sorted(edits, key=lambda e: e["at"], reverse=True):
        out[edit["at"] : edit["at"] + edit["delete"]] = edit["insert"]
    return out


def _as_edits(base: list[str], lines: list[str]) -> list[dict[str, Any]]:
    ops = difflib.SequenceMatcher(a=base, b=lines, autojunk=False).get_opcodes()
    edits = [{"at": i1, "delete": i2 - i1, "insert": lines[j1:j2]} for tag, i1, i2, j1, j2 in ops if tag != "equal"]
    assert edited(base, edits) == lines
    return edits


def refuse(negative: dict[str, Any], keys: KeyRing, bundle: list[str], *, batch: bool = True) -> ExchangeError:
    """Run the project's verifier over one negative; return the error it raised (AssertionError if none).

    A bundle negative is `bundle` (the vector's full export) with its edits. `batch`: it is fed with
    `BundleCheck.feed_lines` (runs of entries at a time), else line by line.
    """
    kind, given = negative["check"], negative["input"]
    try:
        if kind == "bundle":
            check = BundleCheck(keys=keys)
            lines = [item.encode("utf-8") for item in edited(bundle, given["edits"])]
            if batch:
                check.feed_lines(lines)
            else:
                for item in lines:
                    check.feed_line(item)
            check.finish()
        elif kind == "checkpoint":
            open_checkpoint(given["note"], keys.log_key(LOG_NODE), log_origin(LOG_NODE))
        elif kind == "cosignature":
            sig = parse_signature_line(given["line"].rstrip("\n"))
            witness = given["witness"]
            verify_cosignature(given["text"], sig, witness_name(witness), keys.log_key(witness))
        elif kind == "inclusion":
            verify_inclusion(
                b64d(given["leaf_hash"]), given["index"], given["size"], _raw(given["proof"]), b64d(given["root"])
            )
        elif kind == "consistency":
            verify_consistency(
                given["from"], given["to"], _raw(given["proof"]), b64d(given["old_root"]), b64d(given["new_root"])
            )
        elif kind == "witness":
            seen = Seen(given["seen"]["size"], b64d(given["seen"]["root"]), given["seen"]["note"], "")
            cp, _ = open_logs_checkpoint(LOG_NODE, given["checkpoint"], keys.log_key(LOG_NODE))
            verdict: Stale | str | None
            # A pull's answer is the log's latest: smaller than what was seen, it went back. A push
            # is judged by split_detail (a smaller one pushed is only late).
            if given.get("pulled"):
                verdict = went_back(seen, cp)
            else:
                verdict = split_detail(seen, cp, given["old_size"], _raw(given["proof"]))
            if isinstance(verdict, str):
                raise SplitView(split_message(LOG_NODE, seen, cp, verdict))
        else:
            raise AssertionError(f"unknown check {kind!r}")
    except ExchangeError as exc:
        return exc
    raise AssertionError(f"negative {negative['name']!r} was accepted")


def _raw(hashes: list[str]) -> list[bytes]:
    return [b64d(h) for h in hashes]


def _replace_line(lines: list[str], old: str, new: str) -> list[str]:
    assert lines.count(old) == 1
    return [new if item == old else item for item in lines]


def _edit_entry(line: str, old: str, new: str) -> str:
    """An entry record's line with its entry's text edited, its stored leaf hash left as it was."""
    record = json.loads(line)
    assert record["entry"].count(old) == 1
    record["entry"] = record["entry"].replace(old, new)
    return record_line(record).decode("utf-8")


def _flip(text: str, at: int = 0) -> str:
    raw = bytearray(b64d(text))
    raw[at] ^= 0x01
    return b64e(bytes(raw))


def _entry_line(lines: list[str], idx: int) -> str:
    return next(item for item in lines if item.startswith(f'{{"type":"entry","idx":{idx},'))


def _forked(rows: list[tuple[int, bytes, bytes]], idx: int, old: bytes, new: bytes) -> list[tuple[int, bytes, bytes]]:
    """The log with entry `idx` rewritten and its leaf hash recomputed (a careful forger)."""
    out = list(rows)
    i, entry, _ = out[idx]
    assert entry.count(old) == 1
    changed = entry.replace(old, new)
    out[idx] = (i, changed, leaf_hash(changed))
    return out


def _negatives(roster: Any, rows: list[tuple[int, bytes, bytes]], cps: list[StoredCheckpoint]) -> list[dict[str, Any]]:
    """Altered logs, bundles, proofs, notes and pushes, each with the error a verifier must raise."""
    out: list[dict[str, Any]] = []
    keys = KeyRing.from_federation(recorded_federation(load_v1()["outputs"]))
    log_key, origin = signing_key(LOG_NODE), log_origin(LOG_NODE)
    by_size = {cp.size: cp for cp in cps}
    lines = _bundle_lines(LOG_NODE, roster, cps, rows)
    leaves = [h for _, _, h in rows]

    def add(name: str, description: str, check: str, given: dict[str, Any], error: type[ExchangeError]) -> None:
        if check == "bundle":
            given = {"edits": _as_edits(lines, given["lines"])}
        negative = {"name": name, "description": description, "check": check, "input": given}
        raised = refuse(negative, keys, lines)
        assert type(raised) is error, (name, raised)
        out.append({**negative, "error": error.__name__, "message": raised.detail})

    # Bundles (exchange audit verify --bundle): the message names the first bad entry.
    seven = _entry_line(lines, 7)
    add(
        "bundle-entry-changed",
        "entry 7's text changed (alice -> mallory), its stored leaf hash left as it was",
        "bundle",
        {"lines": _replace_line(lines, seven, _edit_entry(seven, '"user":"alice"', '"user":"mallory"'))},
        BadEntry,
    )
    ten, eleven = _entry_line(lines, 10), _entry_line(lines, 11)
    wrong = ten[: ten.index('"leaf_hash":')] + eleven[eleven.index('"leaf_hash":') :]
    add(
        "bundle-leaf-hash-wrong",
        "entry 10 carries entry 11's leaf hash",
        "bundle",
        {"lines": _replace_line(lines, ten, wrong)},
        BadEntry,
    )
    forged = _forked(rows, 10, b'"to":"ke-customs"', b'"to":"gb-avsec"')
    add(
        "bundle-entry-and-leaf-hash-rewritten",
        "entry 10 rewritten with its leaf hash recomputed: only checkpoint 13's signed root tells",
        "bundle",
        {"lines": _bundle_lines(LOG_NODE, roster, cps, forged)},
        BadEntry,
    )
    add(
        "bundle-gap",
        "entry 5's line removed (and the end record's count made to match)",
        "bundle",
        {
            "lines": [
                *(item for item in lines[:-1] if item != _entry_line(lines, 5)),
                f'{{"type":"end","entries":{WHOLE - 1}}}',
            ]
        },
        BadEntry,
    )
    tail = _bundle_lines(LOG_NODE, roster, cps, rows[:30])
    add(
        "bundle-tail-deleted",
        f"entries 30 to {WHOLE - 1} deleted; checkpoint {WHOLE} still signs them",
        "bundle",
        {"lines": tail},
        BadEntry,
    )
    add("bundle-truncated", "the end record is missing", "bundle", {"lines": lines[:-1]}, InvalidInput)
    cp13_line = record_line({"type": "checkpoint", "note": by_size[13].full_note()}).decode()
    impostor = sign_checkpoint(Checkpoint(origin, 13, by_size[13].root), signing_key(IMPOSTOR)).render()
    add(
        "bundle-checkpoint-by-another-key",
        "checkpoint 13 signed by a key the roster does not list for nl-customs",
        "bundle",
        {"lines": _replace_line(lines, cp13_line, record_line({"type": "checkpoint", "note": impostor}).decode())},
        AuditTampered,
    )
    moved = by_size[13].full_note() + dict(by_size[8].cosignatures)["ke-customs"]
    add(
        "bundle-cosignature-moved",
        "ke-customs's cosignature of checkpoint 8 appended to checkpoint 13",
        "bundle",
        {"lines": _replace_line(lines, cp13_line, record_line({"type": "checkpoint", "note": moved}).decode())},
        AuditTampered,
    )
    fork_root = root_from_leaf_hashes([h for _, _, h in _forked(rows, 3, b'"actor":"alice"', b'"actor":"admin"')][:13])
    fork13 = sign_checkpoint(Checkpoint(origin, 13, fork_root), log_key).render()
    split = [
        *lines[: lines.index(cp13_line) + 1],
        record_line({"type": "checkpoint", "note": fork13}).decode(),
        *lines[lines.index(cp13_line) + 1 :],
    ]
    add(
        "bundle-split-view",
        "a second checkpoint of size 13, signed by the log, with another root",
        "bundle",
        {"lines": split},
        AuditTampered,
    )

    # Checkpoints: the log's signature (origin exchange/audit/nl-customs, its roster key).
    text13 = Checkpoint(origin, 13, by_size[13].root).text()
    add(
        "checkpoint-by-another-key",
        "checkpoint 13 signed under the log's name by a key in no roster",
        "checkpoint",
        {"note": note_of(text13, sign_note(text13, origin, signing_key(IMPOSTOR)))},
        BadSignature,
    )
    good = sign_note(text13, origin, log_key)
    flipped = NoteSignature(good.name, good.key_id, bytes([good.signature[0] ^ 1]) + good.signature[1:])
    add(
        "checkpoint-signature-flipped",
        "one bit of the log's signature flipped",
        "checkpoint",
        {"note": note_of(text13, flipped)},
        BadSignature,
    )
    grown = text13.replace("\n13\n", "\n14\n")
    add(
        "checkpoint-size-changed",
        "the size changed from 13 to 14 after signing",
        "checkpoint",
        {"note": note_of(grown, good)},
        BadSignature,
    )
    zero = text13.replace("\n13\n", "\n013\n")
    add(
        "checkpoint-size-leading-zero",
        "the size written 013 (and signed so)",
        "checkpoint",
        {"note": note_of(zero, sign_note(zero, origin, log_key))},
        InvalidInput,
    )
    root_b64 = text13.split("\n")[2]
    loose = text13.replace(root_b64, _std_padding_bit(root_b64))
    add(
        "checkpoint-root-non-canonical-base64",
        "the root's last base64 character has an unused bit set (signed so)",
        "checkpoint",
        {"note": note_of(loose, sign_note(loose, origin, log_key))},
        InvalidInput,
    )
    theirs = Checkpoint(log_origin("ke-customs"), 13, by_size[13].root).text()
    add(
        "checkpoint-of-another-log",
        "a checkpoint of ke-customs's log, signed by ke-customs, shown as nl-customs's",
        "checkpoint",
        {"note": note_of(theirs, sign_note(theirs, log_origin("ke-customs"), signing_key("ke-customs")))},
        InvalidInput,
    )

    # Cosignatures (tlog-cosignature/v1 by exchange/witness/<node>).
    line8 = dict(by_size[8].cosignatures)["ke-customs"]
    add(
        "cosignature-over-another-checkpoint",
        "ke-customs's cosignature of checkpoint 8 checked against checkpoint 13",
        "cosignature",
        {"text": text13, "witness": "ke-customs", "line": line8},
        BadSignature,
    )
    text8 = Checkpoint(origin, 8, by_size[8].root).text()
    sig8 = parse_signature_line(line8.rstrip("\n"))
    later = NoteSignature(
        sig8.name, sig8.key_id, (_time_of(8, "ke-customs") + 1).to_bytes(8, "big") + sig8.signature[8:]
    )
    add(
        "cosignature-time-changed",
        "the cosignature's timestamp moved one second later",
        "cosignature",
        {"text": text8, "witness": "ke-customs", "line": later.line()},
        BadSignature,
    )
    plain = sign_note(text8, witness_name("ke-customs"), signing_key("ke-customs"))
    add(
        "cosignature-of-wrong-type",
        "a plain note signature (type 0x01) by the witness, not a cosignature/v1 (0x04)",
        "cosignature",
        {"text": text8, "witness": "ke-customs", "line": plain.line()},
        BadSignature,
    )

    # Proofs (RFC 9162 2.1.3.2 and 2.1.4.2).
    p = [b64e(h) for h in inclusion_proof(leaves[:13], 5)]
    inc = {"leaf_hash": b64e(leaves[5]), "index": 5, "size": 13, "proof": p, "root": b64e(by_size[13].root)}
    add(
        "inclusion-proof-hash-flipped",
        "one bit of the first proof hash flipped",
        "inclusion",
        {**inc, "proof": [_flip(p[0]), *p[1:]]},
        ProofError,
    )
    add("inclusion-proof-too-short", "the last proof hash left out", "inclusion", {**inc, "proof": p[:-1]}, ProofError)
    add("inclusion-proof-too-long", "one hash too many", "inclusion", {**inc, "proof": [*p, p[0]]}, ProofError)
    add("inclusion-wrong-index", "the proof of entry 5 given for index 4", "inclusion", {**inc, "index": 4}, ProofError)
    add(
        "inclusion-wrong-leaf",
        "entry 6's leaf hash with entry 5's proof",
        "inclusion",
        {**inc, "leaf_hash": b64e(leaves[6])},
        ProofError,
    )
    q = [b64e(h) for h in consistency_proof(leaves[:WHOLE], 8)]
    con = {"from": 8, "to": WHOLE, "proof": q, "old_root": b64e(by_size[8].root), "new_root": b64e(by_size[WHOLE].root)}
    add(
        "consistency-proof-hash-flipped",
        "one bit of the last proof hash flipped",
        "consistency",
        {**con, "proof": [*q[:-1], _flip(q[-1])]},
        ProofError,
    )
    add(
        "consistency-from-empty-tree",
        "a proof from size 0: an empty tree proves nothing",
        "consistency",
        {**con, "from": 0, "proof": [], "old_root": b64e(EMPTY_ROOT)},
        ProofError,
    )
    add(
        "consistency-other-sizes",
        f"the proof from 8 to {WHOLE} given as one from 13 to {WHOLE}",
        "consistency",
        {**con, "from": 13, "old_root": b64e(by_size[13].root)},
        ProofError,
    )
    add(
        "consistency-equal-sizes-other-root",
        "size 13 to 13 with the forked root",
        "consistency",
        {"from": 13, "to": 13, "proof": [], "old_root": b64e(by_size[13].root), "new_root": b64e(fork_root)},
        ProofError,
    )

    # A witness's verdict on a push: a split view, recorded and refused (409 problem+json on the route).
    def seen(size: int) -> dict[str, Any]:
        return {"size": size, "root": b64e(by_size[size].root), "note": by_size[size].note}

    fork_leaves = [h for _, _, h in _forked(rows, 3, b'"actor":"alice"', b'"actor":"admin"')]
    add(
        "witness-inconsistent-push",
        "entry 3 rewritten: checkpoint 13 of that history, proven from 8 with its "
        "own tree, does not extend the checkpoint 8 the witness co-signed",
        "witness",
        {
            "seen": seen(8),
            "checkpoint": fork13,
            "old_size": 8,
            "proof": [b64e(h) for h in consistency_proof(fork_leaves[:13], 8)],
        },
        SplitView,
    )
    add(
        "witness-same-size-other-root",
        "a checkpoint of the size the witness co-signed, with another root",
        "witness",
        {"seen": seen(13), "checkpoint": fork13, "old_size": 13, "proof": []},
        SplitView,
    )
    add(
        "witness-rollback",
        f"a pull answered with checkpoint 13, the log's latest, after the witness co-signed {WHOLE} "
        "(pushed, it would only be late: stale)",
        "witness",
        {"seen": seen(WHOLE), "checkpoint": by_size[13].note, "old_size": WHOLE, "proof": [], "pulled": True},
        SplitView,
    )
    return out


def _std_padding_bit(text: str) -> str:
    """Standard base64 of 32 bytes ends in one '=' after a character with two unused bits: set one."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert text.endswith("=") and not text.endswith("==")
    return text[:-2] + alphabet[alphabet.index(text[-2]) | 1] + "="


def note_of(text: str, *signatures: NoteSignature) -> str:
    """A rendered note: text, blank line, signature lines."""
    return Note(text, signatures).render()


def load_v1() -> dict[str, Any]:
    """envelope-v1.json, whose roster and keys these vectors use."""
    v1 = load()
    assert v1 is not None, "envelope-v1.json is missing: run python -m tests.vectors.make_vectors first"
    return v1


def main(argv: list[str]) -> int:
    text = render(build(load_v1()))
    if "--check" in argv:
        if not FILE.exists() or FILE.read_text("utf-8") != text:
            print(f"{FILE} is out of date; run python -m tests.vectors.make_audit_vectors", file=sys.stderr)
            return 1
        print("the vectors are up to date")
        return 0
    FILE.write_text(text, "utf-8")
    print(f"wrote {FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
