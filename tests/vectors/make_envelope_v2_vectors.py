"""Build tests/vectors/envelope-v2.json: epoch records, v2 envelopes and a history grant (docs/protocol.md, 15).

Run `python -m tests.vectors.make_envelope_v2_vectors` to write the file, or add `--check` to compare
it with what the code produces now. It reuses the roster, channel log and test keys of
envelope-v1.json, adds a `grant-history` event for gb-avsec and a hybrid (ML-KEM-768 + X25519)
key for ke-customs. Epoch keys and salts come from a counter; Ed25519 is deterministic. HPKE
draws its own randomness inside `cryptography`, so wraps cannot be derived: when the file exists
and its wraps still open to the same epoch keys, they are kept, and a second run reproduces the
file byte for byte.

The story: epoch 0 is made at position 2 (readers ke-customs and nl-customs), bulletin A is sent
under it; gb-avsec joins at position 4, epoch 1 is made for the three readers, and gb-avsec is
granted the history at position 5 (bulletin B cites it); the grant wraps epoch 0 for gb-avsec.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from exchange import errors
from exchange.crypto import EpochKey, HybridDecryptionKey, b64d, b64e, canonical_json, sha256
from exchange.crypto.epoch import BULLETIN_AAD, WrapKey, bulletin_info, unwrap_epoch_key
from exchange.model import Bulletin, ChannelEvent, NodeId
from exchange.protocol.channel import ChannelState, apply_event, sign_event
from exchange.protocol.envelope_v2 import (
    build_envelope_v2,
    bulletin_id_v2,
    envelope_v2_bytes,
    sign_envelope_v2,
    signed_input_v2,
)
from exchange.protocol.epoch import (
    EPOCH_DOMAIN,
    GRANT_DOMAIN,
    WrapKeyId,
    epoch_hash,
    epoch_wrap_info,
    grant_wrap_info,
    make_epoch,
    make_grant,
    roster_wrap_keys,
    sign_epoch,
    sign_grant,
)
from exchange.protocol.epoch_model import EnvelopeV2, EpochRecord, HistoryGrant
from exchange.protocol.roster import Federation
from exchange.protocol.signing import signing_input
from tests.vectors.make_vectors import (
    BULLETIN,
    CHANNEL,
    WARNING,
    CounterRandom,
    decryption_key,
    load,
    recorded_federation,
    render,
    seed,
    signing_key,
)

HERE = Path(__file__).resolve().parent
FILE = HERE / "envelope-v2.json"

HYBRID = {"ke-customs": "ke-customs/xwing"}  # node -> seed label of its hybrid key
GRANT_EVENT: dict[str, Any] = {
    "at": "2025-03-01T12:10:00.000Z",
    "change": {"type": "grant-history", "node": "gb-avsec"},
}
EPOCHS: list[dict[str, Any]] = [
    {"n": 0, "state_pos": 2, "created": "2025-03-01T12:07:30.000Z"},
    {"n": 1, "state_pos": 4, "created": "2025-03-01T12:09:30.000Z"},
]
BULLETIN_A: dict[str, Any] = {
    "kind": "threat-bulletin",
    "handling": {"tlp": "GREEN", "no_onward_sharing": False},
    "title": "Courier route NBO → AMS under watch",
    "body": "Sent before gb-avsec joined: it reads this only through a history grant.",
}
POSTS: list[dict[str, Any]] = [
    {"bulletin": BULLETIN_A, "author": "nl-customs", "seq": 1, "created": "2025-03-02T08:00:00.000Z", "state_pos": 2},
    {"bulletin": BULLETIN, "author": "nl-customs", "seq": 2, "created": "2025-03-14T09:26:53.589Z", "state_pos": 5},
]
GRANT: dict[str, Any] = {"node": "gb-avsec", "state_pos": 5, "created": "2025-03-01T12:10:30.000Z", "epochs": [0]}


def hybrid_key(node: str) -> HybridDecryptionKey:
    return HybridDecryptionKey(seed(HYBRID[node]))


def unwrap_key(node: str) -> Any:
    return hybrid_key(node) if node in HYBRID else decryption_key(node)


def wrap_keys(fed: Federation) -> dict[str, WrapKey]:
    """Each node's wrap key: its hybrid key where it has one, else its X25519 roster key."""
    return {n: hybrid_key(n).public if n in HYBRID else fed.encryption_key(n) for n in fed.node_ids}


def wrap_key_ids(fed: Federation) -> dict[str, WrapKeyId]:
    return roster_wrap_keys(fed, {n: WrapKeyId.of(hybrid_key(n).public) for n in HYBRID})


def states(fed: Federation, v1: dict[str, Any]) -> tuple[list[ChannelState], ChannelEvent]:
    """The states at every position of v1's log, plus the grant-history event at position 5."""
    out: list[ChannelState] = []
    current: ChannelState | None = None
    for logged in v1["outputs"]["channel_log"]:
        current = apply_event(current, ChannelEvent.model_validate(logged["signed"]), fed)
        out.append(current)
    assert current is not None
    event = sign_event(
        channel=CHANNEL["channel"],
        owner=CHANNEL["owner"],
        pos=current.pos + 1,
        prev=current.hash,
        at=GRANT_EVENT["at"],
        change=GRANT_EVENT["change"],
        key=signing_key(CHANNEL["owner"]),
    )
    out.append(apply_event(current, event, fed))
    return out, event


def _opens(wraps: list[dict[str, Any]], info: list[bytes], nodes: list[str], key: EpochKey) -> bool:
    try:
        return all(
            unwrap_epoch_key(b64d(w["wrap"]), i, unwrap_key(n), key.commitment).secret_bytes() == key.secret_bytes()
            for w, i, n in zip(wraps, info, nodes, strict=True)
        )
    except errors.ExchangeError:
        return False


def _epoch(
    state: ChannelState, spec: dict[str, Any], prev: EpochRecord | None, fed: Federation, rng: CounterRandom, old: Any
) -> tuple[EpochRecord, EpochKey]:
    """make_epoch, then the recorded wraps instead of its fresh ones if they open to the same key."""
    fresh, key = make_epoch(
        state,
        n=spec["n"],
        prev=prev,
        keys=wrap_keys(fed),
        owner_key=signing_key(state.owner),
        created=spec["created"],
        rng=rng,
    )
    body = fresh.model_dump(mode="json", exclude={"signer", "signature"})
    info = [epoch_wrap_info(state.channel, fresh.n, state.hash, w.node, w.kid) for w in fresh.wraps]
    kept: list[dict[str, Any]] = old["outputs"]["epochs"][spec["n"]]["record"]["wraps"] if old else []
    same = [(w["node"], w["kid"], w["suite"]) for w in kept] == [(w.node, w.kid, w.suite) for w in fresh.wraps]
    if same and _opens(kept, info, fresh.readers, key):
        body["wraps"] = kept
    return sign_epoch(body, signing_key(state.owner)), key


def _logged_epoch(record: EpochRecord, key: EpochKey) -> dict[str, Any]:
    body = record.model_dump(mode="json", exclude={"signature"})
    return {
        "epoch_key": b64e(key.secret_bytes()),
        "commitment": b64e(key.commitment),
        "wrap_info_hex": [
            epoch_wrap_info(record.channel, record.n, record.state.hash, w.node, w.kid).hex() for w in record.wraps
        ],
        "signing_input": signing_input(EPOCH_DOMAIN, body).decode("utf-8"),
        "record": record.model_dump(mode="json"),
        "jcs": canonical_json(record.model_dump(mode="json")).decode("utf-8"),
        "hash_hex": epoch_hash(record),
    }


def _logged_bulletin(env: EnvelopeV2, key: EpochKey, bulletin: Bulletin) -> dict[str, Any]:
    h = env.header
    info = bulletin_info(bytes.fromhex(h.epoch.hash), h.author, h.seq)
    okm = key.bulletin_okm(b64d(h.salt), info)
    ciphertext = b64d(env.ciphertext)
    return {
        "salt": h.salt,
        "info_hex": info.hex(),
        "okm": b64e(okm),
        "bulletin_key": b64e(okm[:32]),
        "nonce": b64e(okm[32:]),
        "payload_jcs": bulletin.payload_bytes.decode("utf-8"),
        "aad": BULLETIN_AAD.decode("ascii"),
        "ciphertext": env.ciphertext,
        "ciphertext_sha256": b64e(sha256(ciphertext)),
        "header_jcs": h.canonical.decode("utf-8"),
        "bulletin_id": bulletin_id_v2(h),
        "envelope_signing_input": signed_input_v2(h).decode("utf-8"),
        "envelope": env.model_dump(mode="json"),
        "envelope_jcs": envelope_v2_bytes(env).decode("utf-8"),
    }


def _grant(state: ChannelState, granted: list[tuple[EpochRecord, EpochKey]], fed: Federation, old: Any) -> HistoryGrant:
    node = GRANT["node"]
    fresh = make_grant(
        state,
        node=node,
        key=wrap_keys(fed)[node],
        epochs=granted,
        owner_key=signing_key(state.owner),
        created=GRANT["created"],
    )
    body = fresh.model_dump(mode="json", exclude={"signer", "signature"})
    kept = old["outputs"]["grant"]["signed"]["epochs"] if old else None
    if kept and [(e["n"], e["hash"]) for e in kept] == [(e.n, e.hash) for e in fresh.epochs]:
        info = [grant_wrap_info(state.channel, e.n, e.hash, node, fresh.kid) for e in fresh.epochs]
        if all(_opens([e], [i], [node], k) for e, i, (_, k) in zip(kept, info, granted, strict=True)):
            body["epochs"] = kept
    return sign_grant(body, signing_key(state.owner))


def _negatives(
    env: EnvelopeV2, epochs: list[EpochRecord], grant: HistoryGrant, all_states: list[ChannelState], fed: Federation
) -> list[dict[str, Any]]:
    """Altered envelopes, epoch records and grants, each with the exact error a receiver must raise."""
    out: list[dict[str, Any]] = []
    author = signing_key(env.header.author)
    owner = signing_key(CHANNEL["owner"])
    good_env = env.model_dump(mode="json")
    ciphertext = b64d(env.ciphertext)

    def add(kind: str, name: str, obj: dict[str, Any], error: type[errors.ExchangeError], **context: int) -> None:
        out.append({"kind": kind, "name": name, "object": obj, "context": context, "error": error.__name__})

    def resigned(header: dict[str, Any], key: Any = author) -> dict[str, Any]:
        h = EnvelopeV2.model_validate({**good_env, "header": header}).header
        return sign_envelope_v2(h, ciphertext, key).model_dump(mode="json")

    at = {"state_pos": env.header.state.pos, "epoch_n": env.header.epoch.n}
    seq = copy.deepcopy(good_env)
    seq["header"]["seq"] = 3
    add("envelope", "seq-changed-after-signing", seq, errors.BadSignature, **at)
    add(
        "envelope",
        "signed-with-another-key",
        resigned(good_env["header"], signing_key("ke-customs")),
        errors.BadSignature,
        **at,
    )
    other_hash = copy.deepcopy(good_env)
    other_hash["header"]["epoch"]["hash"] = "00" * 32
    add("envelope", "epoch-hash-changed", other_hash, errors.InvalidEnvelope, **at)
    old_epoch = {**good_env["header"], "epoch": {"n": 0, "hash": epoch_hash(epochs[0])}}
    add("envelope", "earlier-epoch-without-gb-avsec", resigned(old_epoch), errors.StaleEpoch, state_pos=5, epoch_n=0)
    early_state = {**good_env["header"], "state": {"owner": "nl-customs", "pos": 2, "hash": all_states[2].hash}}
    add("envelope", "state-before-the-epoch", resigned(early_state), errors.StaleEpoch, state_pos=2, epoch_n=1)
    ct = bytearray(ciphertext)
    ct[0] ^= 1
    add("envelope", "ciphertext-altered", {**good_env, "ciphertext": b64e(bytes(ct))}, errors.InvalidEnvelope, **at)
    by_gb = {**good_env["header"], "author": "gb-avsec", "signer": signing_key("gb-avsec").kid}
    add("envelope", "author-without-post", resigned(by_gb, signing_key("gb-avsec")), errors.InvalidEnvelope, **at)

    e1 = epochs[1].model_dump(mode="json", exclude={"signer", "signature"})
    at1 = {"state_pos": epochs[1].state.pos, "prev_n": 0}
    dropped = {**e1, "wraps": [w for w in e1["wraps"] if w["node"] != "gb-avsec"]}
    add("epoch", "reader-left-out", sign_epoch(dropped, owner).model_dump(mode="json"), errors.EpochInvalid, **at1)
    ke = fed.encryption_key("ke-customs")
    downgraded = copy.deepcopy(e1)
    for w in downgraded["wraps"]:
        if w["node"] == "ke-customs":
            w.update(kid=ke.kid, suite="x25519-hkdfsha256-aes256gcm", wrap=b64e(bytes(80)))
    add(
        "epoch",
        "hybrid-reader-downgraded",
        sign_epoch(downgraded, owner).model_dump(mode="json"),
        errors.EpochInvalid,
        **at1,
    )
    renumbered = {**epochs[1].model_dump(mode="json"), "n": 2}
    add("epoch", "renumbered-after-signing", renumbered, errors.BadSignature, **at1)
    add(
        "epoch",
        "prev-broken",
        sign_epoch({**e1, "prev": "00" * 32}, owner).model_dump(mode="json"),
        errors.EpochInvalid,
        **at1,
    )
    by_ke = sign_epoch(e1, signing_key("ke-customs")).model_dump(mode="json")
    add("epoch", "signed-by-a-member", by_ke, errors.EpochInvalid, **at1)

    g = grant.model_dump(mode="json", exclude={"signer", "signature"})
    at_g = {"state_pos": grant.state.pos}
    before = {**g, "state": {"owner": "nl-customs", "pos": 4, "hash": all_states[4].hash}}
    add(
        "grant",
        "before-grant-history",
        sign_grant(before, owner).model_dump(mode="json"),
        errors.EpochInvalid,
        state_pos=4,
    )
    to_ke = {**g, "node": "ke-customs"}
    add("grant", "grantee-not-granted", sign_grant(to_ke, owner).model_dump(mode="json"), errors.EpochInvalid, **at_g)
    unknown = {**g, "epochs": [{**g["epochs"][0], "hash": "00" * 32}]}
    add("grant", "unknown-epoch", sign_grant(unknown, owner).model_dump(mode="json"), errors.EpochInvalid, **at_g)
    relabelled = {**grant.model_dump(mode="json"), "node": "ke-customs"}
    add("grant", "grantee-changed-after-signing", relabelled, errors.BadSignature, **at_g)
    return out


def build(old: dict[str, Any] | None, v1: dict[str, Any]) -> dict[str, Any]:
    fed = recorded_federation(v1["outputs"])
    all_states, event = states(fed, v1)
    rng = CounterRandom("rng-v2")
    epochs: list[EpochRecord] = []
    keys: list[EpochKey] = []
    envelopes: list[dict[str, Any]] = []
    ids = wrap_key_ids(fed)
    for spec in EPOCHS:
        record, key = _epoch(all_states[spec["state_pos"]], spec, epochs[-1] if epochs else None, fed, rng, old)
        epochs.append(record)
        keys.append(key)
        post = POSTS[spec["n"]]
        bulletin = Bulletin.model_validate(post["bulletin"])
        env = build_envelope_v2(
            bulletin,
            state=all_states[post["state_pos"]],
            epoch=record,
            epoch_key=key,
            author=NodeId(post["author"]),
            key=signing_key(post["author"]),
            seq=post["seq"],
            created=post["created"],
            rng=rng,
        )
        envelopes.append(_logged_bulletin(env, key, bulletin))
    grant = _grant(all_states[GRANT["state_pos"]], [(epochs[n], keys[n]) for n in GRANT["epochs"]], fed, old)
    last = EnvelopeV2.model_validate(envelopes[-1]["envelope"])
    return {
        "description": "Golden vectors for envelope v2 (docs/protocol.md, 15): channel epoch records, v2 envelopes "
        "and a history grant, built from fixed seeds by tests/vectors/make_envelope_v2_vectors.py.",
        "warning": WARNING,
        "encoding": "As envelope-v1.json: byte strings are unpadded base64url unless the name ends in _hex; "
        "*_jcs and *signing_input members are byte strings given as their UTF-8 text.",
        "inputs": {
            "roster_and_channel": "envelope-v1.json: outputs.roster.signed and outputs.channel_log, then grant_event",
            "hybrid_keys": {
                n: {
                    "seed_label": label,
                    "seed": b64e(hybrid_key(n).private_bytes()),
                    "public_key": b64e(hybrid_key(n).public.raw),
                    "kid": hybrid_key(n).kid,
                }
                for n, label in HYBRID.items()
            },
            "wrap_keys": {n: {"suite": k.suite, "kid": k.kid} for n, k in ids.items()},
            "grant_event": GRANT_EVENT,
            "epochs": EPOCHS,
            "posts": POSTS,
            "grant": GRANT,
            "rng": {
                "how": "draw i is the first n bytes of SHA-256('exchange test vector rng-v2/' || decimal i); "
                "the draws are epoch key 0, salt of bulletin A, epoch key 1, salt of bulletin B",
                "draws": [b64e(d) for d in rng.drawn],
            },
        },
        "outputs": {
            "grant_event": {
                "signed": event.model_dump(mode="json"),
                "hash_hex": all_states[-1].hash,
            },
            "epochs": [_logged_epoch(r, k) for r, k in zip(epochs, keys, strict=True)],
            "bulletins": envelopes,
            "grant": {
                "wrap_info_hex": [
                    grant_wrap_info(grant.channel, e.n, e.hash, grant.node, grant.kid).hex() for e in grant.epochs
                ],
                "signing_input": signing_input(
                    GRANT_DOMAIN, grant.model_dump(mode="json", exclude={"signature"})
                ).decode("utf-8"),
                "signed": grant.model_dump(mode="json"),
                "jcs": canonical_json(grant.model_dump(mode="json")).decode("utf-8"),
            },
            "negatives": _negatives(last, epochs, grant, all_states, fed),
        },
    }


def main(argv: list[str]) -> int:
    v1 = load()
    assert v1 is not None, "envelope-v1.json is missing: run python -m tests.vectors.make_vectors first"
    text = render(build(load(FILE), v1))
    if "--check" in argv:
        if not FILE.exists() or FILE.read_text("utf-8") != text:
            print(f"{FILE} is out of date; run python -m tests.vectors.make_envelope_v2_vectors", file=sys.stderr)
            return 1
        print("the vectors are up to date")
        return 0
    FILE.write_text(text, "utf-8")
    print(f"wrote {FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
