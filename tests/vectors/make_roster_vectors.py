"""Build tests/vectors/roster-v2.json: a roster v2 chain and its refusals (docs/protocol.md, 6a).

Run `python -m tests.vectors.make_roster_vectors` to write the file, or add `--check` to compare it
with what the code produces now. Keys come from SHA-256 of public labels (make_vectors.seed), the
times are constants and Ed25519 signs deterministically, so every byte is reproducible. The chain:

- version 1: the v1 test roster of envelope-v1.json, converted (the migration path), with a 2-of-3
  authority (WCO Secretariat, ICAO, RILO Asia/Pacific); signed by the v1 authority key too;
- version 2: za-customs joins; ke-customs rotates its signing and encryption keys (the old ones
  retiring); signed by ICAO and RILO A/P;
- version 3: the authority rotates (RILO A/P out, RILO West and Central Africa in, still 2 of 3);
  ke-customs' old signing key is marked compromised after version 1, its old encryption key
  verify-only; gb-avsec is revoked. Signed by RILO A/P (old only), WCO (both) and RILO WCA (new only).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from exchange import errors
from exchange.crypto import b64e, spki_pin
from exchange.model import Roster, RosterNode, SignedRoster
from exchange.protocol.roster import Federation, sign_roster
from exchange.protocol.roster2_model import (
    KEY_USES,
    Authority,
    NodeKey,
    RosterNodeV2,
    RosterSignature,
    RosterV2,
    SignedRosterV2,
    parse_timestamp,
)
from exchange.protocol.rosterchain import (
    TrustedRoster,
    accept_chain,
    combine,
    key_entry,
    parse_roster_v2,
    roster_hash,
    roster_signing_input,
    sign_roster_v2,
    valid_signers,
)
from exchange.protocol.rostermigration import accept_migration, authority, from_v1, node_from_v1, propose
from exchange.protocol.signing import sign
from tests.vectors.make_vectors import (
    NODES,
    ROSTER_FIELDS,
    WARNING,
    decryption_key,
    endpoint,
    render,
    roster_entry,
    signing_key,
    tls_cert,
)

HERE = Path(__file__).resolve().parent
ROSTER_FILE = HERE / "roster-v2.json"

HOLDERS = {  # label -> holder name
    "wco-secretariat": "WCO Secretariat (test)",
    "icao": "ICAO (test)",
    "rilo-ap": "RILO Asia/Pacific (test)",
    "rilo-wca": "RILO West and Central Africa (test)",
}
V1_AUTHORITY = "authority"  # the label of envelope-v1.json's authority key
OUTSIDER = "outsider"  # a key no authority lists
NEWCOMER = {"id": "za-customs", "name": "ZA customs (test)", "country": "ZA", "agency": "customs"}
ROTATED = "ke-customs/2"  # the label of ke-customs' keys from version 2
TIMES = {
    1: ("2025-03-01T12:00:00.000Z", "2025-09-01T00:00:00.000Z"),
    2: ("2025-04-01T09:00:00.000Z", "2025-10-01T00:00:00.000Z"),
    3: ("2025-05-02T09:30:00.000Z", "2025-11-01T00:00:00.000Z"),
}
NOW = "2025-06-01T00:00:00.000Z"  # every version is unexpired
NOW_V2_EXPIRED = "2025-10-15T00:00:00.000Z"  # version 2 has expired, version 3 has not
SIGNERS = {
    1: [V1_AUTHORITY, "wco-secretariat", "icao"],
    2: ["icao", "rilo-ap"],
    3: ["rilo-ap", "wco-secretariat", "rilo-wca"],
}


def when(text: str) -> dt.datetime:
    return parse_timestamp(text)


def holders(labels: list[str], threshold: int = 2) -> Authority:
    return authority([(HOLDERS[label], signing_key(label).verify_key) for label in labels], threshold)


def signed(doc: RosterV2, labels: list[str]) -> SignedRosterV2:
    """`doc` signed by the keys of `labels`, in the order given (duplicates kept, not combined)."""
    return SignedRosterV2(roster=doc, signatures=[sign_roster_v2(doc, signing_key(label)) for label in labels])


def alter(doc: RosterV2, **changes: Any) -> RosterV2:
    """`doc` with members replaced, validated again."""
    return RosterV2.model_validate({**doc.model_dump(), **changes})


def _certs(old: dict[str, Any] | None) -> dict[str, str]:
    """TLS certificates: the recorded ones where their pin is still the fixed key's, else fresh."""
    recorded = {n["id"]: n["tls_cert"] for n in old["inputs"]["nodes"]} if old else {}
    out = {}
    for node in [*NODES, NEWCOMER]:
        fresh = tls_cert(node["id"])
        kept = recorded.get(node["id"])
        same = kept is not None and spki_pin(kept.encode("ascii")) == spki_pin(fresh.encode("ascii"))
        out[node["id"]] = kept if kept is not None and same else fresh
    return out


def v1_roster(certs: dict[str, str]) -> SignedRoster:
    """The v1 test roster (envelope-v1.json's), signed by the v1 authority key."""
    entries = [roster_entry(node, certs[node["id"]]) for node in NODES]
    key = signing_key(V1_AUTHORITY)
    return sign_roster(Roster.model_validate({**ROSTER_FIELDS, "authority_kid": key.kid, "nodes": entries}), key)


def _node(node: RosterNodeV2, keys: list[NodeKey], **changes: Any) -> RosterNodeV2:
    return RosterNodeV2.model_validate({**node.model_dump(), **changes, "keys": [k.model_dump() for k in keys]})


def _old(node: RosterNodeV2, use: str, state: str, until: int | None) -> NodeKey:
    """`node`'s key of `use` from version 1, in another state."""
    key = next(k for k in node.keys if k.use == use and k.valid_from == 1)
    return NodeKey.model_validate({**key.model_dump(), "state": state, "valid_until": until})


def chain_docs(certs: dict[str, str]) -> list[RosterV2]:
    """Versions 1 to 3 (see the module's docstring)."""
    first = holders(["wco-secretariat", "icao", "rilo-ap"])
    v1 = from_v1(v1_roster(certs), signing_key(V1_AUTHORITY).verify_key, first, *TIMES[1])
    gb, ke, nl = v1.nodes
    signing = key_entry("signing", signing_key(ROTATED).verify_key.raw, 2)
    encryption = key_entry("encryption", decryption_key(ROTATED).public.raw, 2)
    tls = next(k for k in ke.keys if k.use == "tls")
    ke2 = _node(
        ke, [_old(ke, "signing", "retiring", None), signing, _old(ke, "encryption", "retiring", None), encryption, tls]
    )
    za = node_from_v1(RosterNode.model_validate(roster_entry(NEWCOMER, certs[NEWCOMER["id"]])), version=2)
    v2 = propose(v1, *TIMES[2], nodes=[gb, ke2, nl, za])
    ke3 = _node(
        ke, [_old(ke, "signing", "compromised", 1), signing, _old(ke, "encryption", "verify-only", 2), encryption, tls]
    )
    gb3 = _node(gb, list(gb.keys), status="revoked", since=3)
    v3 = propose(v2, *TIMES[3], nodes=[gb3, ke3, nl, za], authority_=holders(["wco-secretariat", "icao", "rilo-wca"]))
    return [v1, v2, v3]


def _set_padding_bit(text: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) | 1]


def _forged(doc: RosterV2, kid_of: str, signer: str) -> RosterSignature:
    """A signature by `signer` that claims the kid of `kid_of`."""
    return RosterSignature(kid=signing_key(kid_of).kid, signature=sign_roster_v2(doc, signing_key(signer)).signature)


def _case(
    name: str,
    description: str,
    held: int | str | None,
    chain: list[Any],
    error: type[errors.ExchangeError] | None,
    now: str = NOW,
    result: int | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "held": held,
        "chain": [item if isinstance(item, int) else _wire(item) for item in chain],
        "now": now,
        **({"error": error.__name__} if error else {"result": result}),
    }


def resigned(version: int, signatures: list[RosterSignature]) -> dict[str, Any]:
    """Version `version` of the chain with other signatures, as a case gives it."""
    return {"roster_of": version, "signatures": [s.model_dump(mode="json") for s in signatures]}


def offered_item(item: int | dict[str, Any], chain: dict[int, SignedRosterV2]) -> SignedRosterV2:
    """An item of a case's chain (see the file's `encoding`), parsed as a node parses a roster."""
    if isinstance(item, int):
        return chain[item]
    if "roster_of" in item:
        item = {"roster": chain[item["roster_of"]].roster.model_dump(mode="json"), "signatures": item["signatures"]}
    return parse_roster_v2(item)


def _wire(item: SignedRosterV2 | dict[str, Any]) -> dict[str, Any]:
    return item if isinstance(item, dict) else item.model_dump(mode="json")


def positives() -> list[dict[str, Any]]:
    return [
        _case("bootstrap", "version 1 trusted out of band: its own authority's threshold", None, [1], None, result=1),
        _case("migration", "version 1 taken by a node that holds the v1 roster", "v1", [1], None, result=1),
        _case("next-version", "version 2 after version 1", 1, [2], None, result=2),
        _case("authority-rotation", "version 3: 2 of the old authority and 2 of the new", 2, [3], None, result=3),
        _case("gap-filled-in-order", "versions 2 and 3 after version 1, in order", 1, [2, 3], None, result=3),
        _case(
            "intermediate-expired",
            "version 2 has expired, the final version 3 has not",
            1,
            [2, 3],
            None,
            now=NOW_V2_EXPIRED,
            result=3,
        ),
        _case("same-version", "the held version again: nothing changes", 2, [2], None, result=2),
        _case("chain-from-held", "the held version, then the next", 2, [2, 3], None, result=3),
    ]


def negatives(docs: list[RosterV2], v1_format: SignedRoster) -> list[dict[str, Any]]:
    """Versions and chains that a node must refuse, each with its error (docs/protocol.md, 6a)."""
    v1, v2, v3 = docs
    icao = sign_roster_v2(v2, signing_key("icao"))
    wrong_domain = RosterSignature(
        kid=signing_key("rilo-ap").kid, signature=sign("roster", v2.model_dump(mode="json"), signing_key("rilo-ap"))
    )
    ap = sign_roster_v2(v2, signing_key("rilo-ap"))
    other_v2 = alter(
        v2,
        nodes=[
            *(n.model_dump() for n in v2.nodes[:3]),
            {**v2.nodes[3].model_dump(), "endpoint": "https://za-customs.exchange.test:9443"},
        ],
    )
    v4 = propose(v3, "2025-05-20T00:00:00.000Z", "2025-12-01T00:00:00.000Z")
    gb, ke, nl, za = v3.nodes
    unrevoked = alter(v4, nodes=[{**gb.model_dump(), "status": "active", "since": 4}, ke, nl, za])
    back = [
        k.model_dump() | ({"state": "retiring", "valid_until": None} if k.state == "verify-only" else {})
        for k in ke.keys
    ]
    ke_back = alter(v4, nodes=[gb, {**ke.model_dump(), "keys": back}, nl, za])
    bad_kid = [k.model_dump() | ({"kid": "0" * 16} if k.use == "tls" else {}) for k in za.keys]
    wrong_kid = alter(v4, nodes=[gb, ke, nl, {**za.model_dump(), "keys": bad_kid}])
    renamed = alter(v1, nodes=[*v1.nodes[:2], {**v1.nodes[2].model_dump(), "name": "NL customs (renamed)"}])
    raw = signed(v1, SIGNERS[1]).model_dump(mode="json")
    both = ["wco-secretariat", "icao"]

    def threshold(name: str, description: str, sigs: list[RosterSignature]) -> dict[str, Any]:
        return _case(name, description, 1, [resigned(2, sigs)], errors.RosterThreshold)

    return [
        threshold("duplicate-signature", "ICAO's signature twice: one key counts once", [icao, icao]),
        threshold(
            "wrong-key", "RILO A/P's kid on a signature by another key", [icao, _forged(v2, "rilo-ap", OUTSIDER)]
        ),
        threshold(
            "unknown-kid",
            "a valid signature by a key the authority does not list",
            [icao, sign_roster_v2(v2, signing_key(OUTSIDER))],
        ),
        threshold("wrong-domain", 'RILO A/P signed under v1\'s domain "roster", not "roster-v2"', [icao, wrong_domain]),
        threshold(
            "non-canonical-signature",
            "RILO A/P's signature with a padding bit set",
            [icao, ap.model_copy(update={"signature": _set_padding_bit(ap.signature)})],
        ),
        _case(
            "rotation-new-short",
            "version 3 signed by WCO and RILO A/P: 2 old, 1 new",
            2,
            [resigned(3, signed(v3, ["wco-secretariat", "rilo-ap"]).signatures)],
            errors.RosterThreshold,
        ),
        _case(
            "rotation-old-short",
            "version 3 signed by ICAO and RILO WCA: 2 new, 1 old",
            2,
            [resigned(3, signed(v3, ["icao", "rilo-wca"]).signatures)],
            errors.RosterThreshold,
        ),
        _case("rollback", "version 1 offered to a node that holds version 2", 2, [1], errors.RosterRollback),
        _case("gap", "version 3 offered to a node that holds version 1", 1, [3], errors.RosterGap),
        _case("out-of-order", "versions 3 then 2 after version 1", 1, [3, 2], errors.RosterGap),
        _case(
            "equivocation",
            "another version 2, signed by 2 of its authority",
            2,
            [signed(other_v2, ["icao", "rilo-ap"])],
            errors.RosterEquivocation,
        ),
        _case(
            "same-version-unsigned",
            "another version 2 without the threshold: junk, not evidence",
            2,
            [signed(other_v2, ["icao"])],
            errors.RosterThreshold,
        ),
        _case(
            "previous-mismatch",
            "version 2 naming another previous hash",
            1,
            [signed(alter(v2, previous="ab" * 32), SIGNERS[2])],
            errors.RosterChainBroken,
        ),
        _case("expired-final", "version 2 alone, after it expired", 1, [2], errors.RosterExpired, now=NOW_V2_EXPIRED),
        _case(
            "bootstrap-expired",
            "version 1 trusted out of band after it expired",
            None,
            [1],
            errors.RosterExpired,
            now=NOW_V2_EXPIRED,
        ),
        _case(
            "bootstrap-threshold",
            "version 1 signed by the v1 authority and WCO: 1 of its own",
            None,
            [resigned(1, signed(v1, [V1_AUTHORITY, "wco-secretariat"]).signatures)],
            errors.RosterThreshold,
        ),
        _case(
            "migration-not-countersigned",
            "version 1 without the v1 authority's signature",
            "v1",
            [resigned(1, signed(v1, both).signatures)],
            errors.RosterThreshold,
        ),
        _case(
            "migration-changed",
            "version 1 that renames a node of the v1 roster",
            "v1",
            [signed(renamed, [V1_AUTHORITY, *both])],
            errors.RosterInvalid,
        ),
        _case(
            "unrevoked",
            "version 4 makes the revoked gb-avsec active again",
            3,
            [signed(unrevoked, both)],
            errors.RosterInvalid,
        ),
        _case(
            "key-state-back",
            "version 4 moves a verify-only key back to retiring",
            3,
            [signed(ke_back, both)],
            errors.RosterInvalid,
        ),
        _case(
            "kid-mismatch",
            "version 4 lists a TLS key under a kid that is not its own",
            3,
            [signed(wrong_kid, both)],
            errors.RosterInvalid,
        ),
        _case(
            "schema-previous-in-version-1",
            "version 1 with a previous hash",
            None,
            [{**raw, "roster": {**raw["roster"], "previous": "ab" * 32}}],
            errors.InvalidInput,
        ),
        _case(
            "schema-expires-before-issued",
            "expires before issued",
            None,
            [{**raw, "roster": {**raw["roster"], "expires": "2025-01-01T00:00:00Z"}}],
            errors.InvalidInput,
        ),
        _case(
            "schema-unknown-member",
            "an extra member in the roster",
            None,
            [{**raw, "roster": {**raw["roster"], "serial": 1}}],
            errors.InvalidInput,
        ),
    ]


def lookups(v3: TrustedRoster) -> dict[str, Any]:
    """What version 3 answers to the look-ups of a node's wiring."""
    ke_old, ke_new = signing_key("ke-customs").kid, signing_key(ROTATED).kid
    gb = signing_key("gb-avsec").kid
    checks = [
        ("ke-customs", ke_old, 1, 1),  # signed under version 1, received then: still valid evidence
        ("ke-customs", ke_old, 1, 2),  # received after the last version the key was good in
        ("ke-customs", ke_old, 2, 2),  # retiring in version 2, but compromised after version 1
        ("ke-customs", ke_new, 2, 3),
        ("ke-customs", ke_new, 1, 3),  # not yet a key in version 1
        ("gb-avsec", gb, 2, 3),  # signed before its revocation
        ("gb-avsec", gb, 3, 3),  # revoked since version 3
    ]
    verify = []
    for node, kid, made, received in checks:
        try:
            v3.verify_key(node, kid, made, received)
            outcome = "ok"
        except errors.ExchangeError as exc:
            outcome = type(exc).__name__
        verify.append({"node": node, "kid": kid, "made_under": made, "received_under": received, "result": outcome})
    return {
        "current": {n: {use: v3.current_key(n, use).kid for use in KEY_USES} for n in v3.node_ids()},
        "keys_at": {
            f"ke-customs/{use}/{version}": [k.kid for k in v3.keys_at("ke-customs", use, version)]
            for use in ("signing", "encryption")
            for version in (1, 2, 3)
        },
        "verify_key": verify,
        "compromised": [
            {"kid": kid, "as_of": version, "result": v3.compromised(kid, version)}
            for kid in (ke_old, ke_new)
            for version in (1, 2, 3)
        ],
        "accepted_pins": v3.accepted_pins(),
    }


def run_case(case: dict[str, Any], chain: dict[int, SignedRosterV2], v1_format: SignedRoster) -> TrustedRoster:
    """What a node holding `case["held"]` ends up trusting after `case["chain"]` (or the error)."""
    now = when(case["now"])
    offered = [offered_item(item, chain) for item in case["chain"]]
    if case["held"] is None:
        return TrustedRoster.bootstrap(offered[0], now)
    if case["held"] == "v1":
        v1_key = signing_key(V1_AUTHORITY).verify_key
        return accept_migration(Federation.verify(v1_format, v1_key), v1_key, offered[0], now)
    held = TrustedRoster.bootstrap(chain[1], when(TIMES[1][0]))
    for version in range(2, case["held"] + 1):
        held = held.accept(chain[version])
    return accept_chain(held, offered, now)


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def build(old: dict[str, Any] | None = None) -> dict[str, Any]:
    certs = _certs(old)
    v1_format = v1_roster(certs)
    docs = chain_docs(certs)
    chain = {doc.version: combine(doc, signed(doc, SIGNERS[doc.version]).signatures) for doc in docs}
    entries = []
    for version, doc in enumerate(docs, 1):
        before = docs[version - 2].authority if version > 1 else doc.authority
        entries.append(
            {
                "version": version,
                "jcs": _text(doc.canonical),
                "hash_hex": roster_hash(doc),
                "signing_input": _text(roster_signing_input(doc)),
                "signed": chain[version].model_dump(mode="json"),
                "valid_signers": {
                    "previous_authority": sorted(valid_signers(doc, chain[version].signatures, before)),
                    "own_authority": sorted(valid_signers(doc, chain[version].signatures, doc.authority)),
                },
            }
        )
    cases = {"positives": positives(), "negatives": negatives(docs, v1_format)}
    # The file must hold what the code does: every case is run before it is written.
    for case in cases["positives"]:
        assert run_case(case, chain, v1_format).version == case["result"], case["name"]
    for case in cases["negatives"]:
        try:
            run_case(case, chain, v1_format)
        except errors.ExchangeError as exc:
            assert type(exc).__name__ == case["error"], (case["name"], exc)
        else:
            raise AssertionError(f"{case['name']} was accepted")
    v3 = run_case(cases["positives"][4], chain, v1_format)
    labels = [V1_AUTHORITY, *HOLDERS, OUTSIDER, *(n["id"] for n in NODES), NEWCOMER["id"], ROTATED]
    return {
        "description": "Golden vectors for roster v2 (docs/protocol.md, 6a): a chain of three versions with a "
        "2-of-3 authority, key rotation, revocation and an authority rotation, the cases a node accepts and "
        "those it refuses with their error. Built by tests/vectors/make_roster_vectors.py.",
        "warning": WARNING,
        "encoding": "Byte strings are unpadded base64url unless the name ends in _hex. Members named jcs or "
        "signing_input are byte strings given as their UTF-8 text. In a case, `held` is the version the node "
        'holds (null: none, the first version is trusted out of band; "v1": the v1 roster of inputs.v1_roster), '
        "and each item of `chain` is a version of outputs.chain (a number), that version's roster with other "
        'signatures ({"roster_of": version, "signatures": [...]}) or a signed roster (an object).',
        "inputs": {
            "test_keys": {
                label: {
                    "ed25519_seed_label": f"{label}/ed25519",
                    "ed25519_private": b64e(signing_key(label).private_bytes()),
                }
                for label in labels
            },
            "holders": HOLDERS,
            "nodes": [{**n, "endpoint": endpoint(n["id"]), "tls_cert": certs[n["id"]]} for n in [*NODES, NEWCOMER]],
            "times": {str(v): {"issued": i, "expires": e} for v, (i, e) in TIMES.items()},
            "v1_roster": v1_format.model_dump(mode="json"),
        },
        "outputs": {
            "chain": entries,
            "positives": cases["positives"],
            "negatives": cases["negatives"],
            "lookups_at_version_3": lookups(v3),
        },
    }


def load(path: Path = ROSTER_FILE) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def main(argv: list[str]) -> int:
    text = render(build(load()))
    if "--check" in argv:
        if not ROSTER_FILE.exists() or ROSTER_FILE.read_text("utf-8") != text:
            print(f"{ROSTER_FILE} is out of date; run python -m tests.vectors.make_roster_vectors", file=sys.stderr)
            return 1
        print("the roster vectors are up to date")
        return 0
    ROSTER_FILE.write_text(text, "utf-8")
    print(f"wrote {ROSTER_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
