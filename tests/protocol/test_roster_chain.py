"""Roster v2 (docs/protocol.md, 6a): the golden vectors reproduce byte for byte, and every acceptance
rule accepts its good case and refuses its bad one with its named error, the held version unchanged.

The vector cases (tests/vectors/roster-v2.json) cover threshold counting, the old-and-new threshold
of an authority rotation, rollback, gaps, equivocation, expiry and `previous`; the tests below add
the document's own rules, the history rules between versions and the key look-ups.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from exchange import errors
from exchange.crypto import VerifyKey, b64d, b64e, canonical_json, spki_pin, strict_loads
from exchange.crypto.encoding import BYTES_PER_VALUE, MIN_VALUES
from exchange.errors import InvalidInput
from exchange.model import SignedRoster
from exchange.protocol.roster2_model import MAX_ROSTER_BYTES, Authority, NodeKey, SignedRosterV2
from exchange.protocol.rosterchain import (
    MAX_CHAIN,
    TrustedRoster,
    accept_chain,
    combine,
    key_entry,
    parse_roster_v2,
    roster_hash,
    sign_roster_v2,
    valid_signers,
)
from exchange.protocol.rostermigration import authority, from_v1, propose
from tests.vectors import make_roster_vectors as mrv
from tests.vectors.make_roster_vectors import ROSTER_FILE, alter, offered_item, run_case, signed, when
from tests.vectors.make_vectors import SEED_PREFIX, decryption_key, render, signing_key, tls_cert

RAW = ROSTER_FILE.read_text("utf-8")
V: dict[str, Any] = strict_loads(RAW)
CHAIN = {e["version"]: parse_roster_v2(e["signed"]) for e in V["outputs"]["chain"]}
V1_FORMAT = SignedRoster.model_validate(V["inputs"]["v1_roster"])
NOW = when(mrv.NOW)
BOTH = ["wco-secretariat", "icao"]  # in version 3's authority, and in version 2's

PROPERTY = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def trusted(version: int) -> TrustedRoster:
    """What a node holds after taking the recorded chain up to `version`."""
    held = TrustedRoster.bootstrap(CHAIN[1], when(mrv.TIMES[1][0]))
    return accept_chain(held, [CHAIN[v] for v in range(2, version + 1)], NOW)


def v4(nodes: Callable[[dict[str, Any]], None] | None = None, **changes: Any) -> SignedRosterV2:
    """A version 4 after the recorded version 3, changed by `nodes` (on a dict of its nodes by id)."""
    doc = propose(CHAIN[3].roster, "2025-05-20T00:00:00.000Z", "2025-12-01T00:00:00.000Z")
    by_id = {n.id: n.model_dump(mode="json") for n in doc.nodes}
    if nodes is not None:
        nodes(by_id)
    return signed(alter(doc, nodes=list(by_id.values()), **changes), BOTH)


def refused(held: TrustedRoster, offered: list[SignedRosterV2], error: type[errors.ExchangeError]) -> None:
    """`offered` is refused with exactly `error`, and the held version is untouched."""
    before = (held.version, held.hash, held.signed)
    with pytest.raises(errors.ExchangeError) as caught:
        accept_chain(held, offered, NOW)
    assert type(caught.value) is error, caught.value
    assert (held.version, held.hash, held.signed) == before


# -- the vectors ------------------------------------------------------------------------------


def test_the_generator_reproduces_the_file() -> None:
    assert render(mrv.build(mrv.load())) == RAW


def test_test_keys_are_the_labelled_seeds() -> None:
    for keys in V["inputs"]["test_keys"].values():
        seed = hashlib.sha256(SEED_PREFIX + keys["ed25519_seed_label"].encode()).digest()
        assert b64d(keys["ed25519_private"]) == seed


@pytest.mark.parametrize("entry", V["outputs"]["chain"], ids=lambda e: f"version-{e['version']}")
def test_chain_bytes_hash_and_signatures_reproduce(entry: dict[str, Any]) -> None:
    doc = CHAIN[entry["version"]].roster
    jcs = entry["jcs"].encode("utf-8")
    assert canonical_json(entry["signed"]["roster"]) == jcs == doc.canonical
    assert roster_hash(doc) == hashlib.sha256(jcs).hexdigest() == entry["hash_hex"]
    assert entry["signing_input"].encode("utf-8") == b"exchange-v1/roster-v2\n" + jcs
    if doc.version > 1:
        assert doc.previous == V["outputs"]["chain"][doc.version - 2]["hash_hex"]
    holders = {signing_key(label).kid: signing_key(label).verify_key for label in V["inputs"]["test_keys"]}
    for sig in entry["signed"]["signatures"]:  # every recorded signature is one of a test key
        holders[sig["kid"]].verify(b64d(sig["signature"]), entry["signing_input"].encode("utf-8"))
    before = V["outputs"]["chain"][max(doc.version - 2, 0)]["signed"]["roster"]["authority"]
    recorded = entry["valid_signers"]
    assert recorded["own_authority"] == sorted(valid_signers(doc, CHAIN[doc.version].signatures, doc.authority))
    assert recorded["previous_authority"] == sorted(
        valid_signers(doc, CHAIN[doc.version].signatures, authority_of(before))
    )


def authority_of(raw: dict[str, Any]) -> Authority:
    return Authority.model_validate(raw)


@pytest.mark.parametrize("case", V["outputs"]["positives"], ids=lambda c: c["name"])
def test_positive_cases_are_accepted(case: dict[str, Any]) -> None:
    assert run_case(case, CHAIN, V1_FORMAT).version == case["result"]


@pytest.mark.parametrize("case", V["outputs"]["negatives"], ids=lambda c: c["name"])
def test_negative_cases_are_refused_with_their_error(case: dict[str, Any]) -> None:
    with pytest.raises(errors.ExchangeError) as caught:
        run_case(case, CHAIN, V1_FORMAT)
    assert type(caught.value).__name__ == case["error"], caught.value


def test_lookups_reproduce() -> None:
    assert json.loads(json.dumps(mrv.lookups(trusted(3)))) == V["outputs"]["lookups_at_version_3"]


# -- acceptance, rule by rule --------------------------------------------------------------------


def test_a_refused_version_leaves_the_held_one_and_the_good_one_follows() -> None:
    held = trusted(1)
    refused(
        held,
        [offered_item({"roster_of": 2, "signatures": [CHAIN[2].signatures[0].model_dump()]}, CHAIN)],
        errors.RosterThreshold,
    )
    refused(held, [CHAIN[3]], errors.RosterGap)
    assert accept_chain(held, [CHAIN[2]], NOW).version == 2


def test_each_key_counts_once_however_often_it_signed() -> None:
    doc = CHAIN[2].roster
    icao = sign_roster_v2(doc, signing_key("icao"))
    assert valid_signers(doc, [icao, icao, icao], doc.authority) == {icao.kid}
    refused(trusted(1), [SignedRosterV2(roster=doc, signatures=[icao, icao, icao])], errors.RosterThreshold)


HELD_2 = trusted(2)
SIGNATURES_V3 = {
    label: sign_roster_v2(CHAIN[3].roster, signing_key(label))
    for label in [*mrv.HOLDERS, mrv.OUTSIDER, mrv.V1_AUTHORITY]
}


@PROPERTY
@given(st.lists(st.sampled_from([*mrv.HOLDERS, mrv.OUTSIDER, mrv.V1_AUTHORITY]), min_size=1, max_size=8))
def test_rotation_needs_k_of_the_old_and_k_of_the_new(labels: list[str]) -> None:
    old = {signing_key(label).kid for label in ("wco-secretariat", "icao", "rilo-ap")}
    new = {signing_key(label).kid for label in ("wco-secretariat", "icao", "rilo-wca")}
    kids = {signing_key(label).kid for label in labels}
    offered = SignedRosterV2(roster=CHAIN[3].roster, signatures=[SIGNATURES_V3[label] for label in labels])
    if len(kids & old) >= 2 and len(kids & new) >= 2:
        assert accept_chain(HELD_2, [offered], NOW).version == 3
    else:
        refused(HELD_2, [offered], errors.RosterThreshold)


def test_a_gap_names_the_versions_to_fetch() -> None:
    with pytest.raises(errors.RosterGap) as caught:
        trusted(1).accept(CHAIN[3])
    assert (caught.value.held, caught.value.offered) == (1, 3)
    assert trusted(1).keys_at("ke-customs", "signing", 1)
    with pytest.raises(errors.RosterGap):  # an item made under a version this node has not seen yet
        trusted(1).keys_at("ke-customs", "signing", 2)


def test_a_chain_longer_than_the_bound_is_refused_before_any_check() -> None:
    refused(trusted(3), [CHAIN[3]] * (MAX_CHAIN + 1), errors.RosterRefused)
    assert accept_chain(trusted(3), [CHAIN[3]] * MAX_CHAIN, NOW).version == 3


def test_expiry_is_checked_on_the_final_version_only() -> None:
    expires = CHAIN[2].roster.expires
    at = when(expires)
    assert accept_chain(trusted(1), [CHAIN[2]], at - dt.timedelta(microseconds=1)).version == 2
    with pytest.raises(errors.RosterExpired):
        accept_chain(trusted(1), [CHAIN[2]], at)
    assert accept_chain(trusted(1), [CHAIN[2], CHAIN[3]], at).version == 3
    assert trusted(2).expired(at) and not trusted(3).expired(at)


def test_same_version_is_a_no_op_and_an_unsigned_variant_is_not_evidence() -> None:
    held = trusted(2)
    assert accept_chain(held, [CHAIN[2]], NOW) is held
    variant = alter(CHAIN[2].roster, issued="2025-04-01T09:00:01.000Z")
    refused(held, [signed(variant, ["icao", "rilo-ap"])], errors.RosterEquivocation)
    refused(held, [signed(variant, ["icao", mrv.OUTSIDER])], errors.RosterThreshold)


# -- the document's own rules -------------------------------------------------------------------


def _raw3() -> dict[str, Any]:
    raw: dict[str, Any] = CHAIN[3].model_dump(mode="json")
    return raw


def _key(raw: dict[str, Any], node: str, use: str, state: str | None = None) -> dict[str, Any]:
    entry = next(n for n in raw["roster"]["nodes"] if n["id"] == node)
    return next(k for k in entry["keys"] if k["use"] == use and state in (None, k["state"]))


SCHEMA_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "two-active-signing-keys": lambda r: _key(r, "ke-customs", "signing", "compromised").update(
        state="active", valid_until=None
    ),
    "active-node-without-tls": lambda r: _key(r, "nl-customs", "tls").update(state="retiring"),
    "verify-only-without-valid-until": lambda r: _key(r, "ke-customs", "encryption", "verify-only").update(
        valid_until=None
    ),
    "valid-until-not-before-version": lambda r: _key(r, "ke-customs", "encryption", "verify-only").update(
        valid_until=3
    ),
    "valid-from-after-version": lambda r: _key(r, "nl-customs", "tls").update(valid_from=4),
    "since-after-version": lambda r: r["roster"]["nodes"][0].update(since=4),
    "threshold-above-n": lambda r: r["roster"]["authority"].update(threshold=4),
    "authority-kid-twice": lambda r: r["roster"]["authority"]["keys"].append(r["roster"]["authority"]["keys"][0]),
    "node-id-twice": lambda r: r["roster"]["nodes"].append(r["roster"]["nodes"][0]),
    "key-listed-twice": lambda r: r["roster"]["nodes"][2]["keys"].append(r["roster"]["nodes"][2]["keys"][0]),
    "signing-key-too-long": lambda r: _key(r, "nl-customs", "signing").update(key="A" * 65),
    "no-signatures": lambda r: r.update(signatures=[]),
    "version-as-string": lambda r: r["roster"].update(version="3"),
    "unknown-status": lambda r: r["roster"]["nodes"][0].update(status="paused"),
}


@pytest.mark.parametrize("name", SCHEMA_BREAKS)
def test_schema_breaks_are_invalid_input(name: str) -> None:
    raw = _raw3()
    SCHEMA_BREAKS[name](raw)
    with pytest.raises(errors.InvalidInput) as caught:
        parse_roster_v2(raw)
    assert type(caught.value) is errors.InvalidInput


def test_parse_bounds_the_bytes_and_refuses_duplicate_members() -> None:
    with pytest.raises(errors.InvalidInput, match="at most"):
        parse_roster_v2(b" " * (MAX_ROSTER_BYTES + 1))
    text = json.dumps(_raw3()).replace('"v": 2,', '"v": 2, "v": 2,', 1)
    with pytest.raises(errors.InvalidInput, match="duplicate"):
        parse_roster_v2(text.encode())
    assert parse_roster_v2(json.dumps(_raw3()).encode()) == CHAIN[3]


DOCUMENT_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "signing-kid-not-its-key": lambda n: n["nl-customs"]["keys"][0].update(kid="0" * 16),
    "encryption-key-not-x25519-length": lambda n: next(
        k for k in n["nl-customs"]["keys"] if k["use"] == "encryption"
    ).update(key=b64e(b"\x01" * 31)),
    "tls-key-not-a-certificate": lambda n: next(k for k in n["nl-customs"]["keys"] if k["use"] == "tls").update(
        key=b64e(b"not a certificate")
    ),
    "one-tls-key-for-two-nodes": lambda n: n["za-customs"]["keys"].__setitem__(
        next(i for i, k in enumerate(n["za-customs"]["keys"]) if k["use"] == "tls"),
        next(k for k in n["nl-customs"]["keys"] if k["use"] == "tls") | {"valid_from": 2},
    ),
}


@pytest.mark.parametrize("name", DOCUMENT_BREAKS)
def test_document_breaks_are_roster_invalid(name: str) -> None:
    refused(trusted(3), [v4(DOCUMENT_BREAKS[name])], errors.RosterInvalid)


def test_an_authority_key_must_carry_its_own_kid() -> None:
    raw = CHAIN[3].roster.authority.model_dump()
    raw["keys"][0]["kid"] = raw["keys"][1]["kid"][::-1]
    refused(trusted(3), [v4(authority=raw)], errors.RosterInvalid)


# -- history: version N+1 against version N -------------------------------------------------------


def _ke(n: dict[str, Any], use: str, state: str) -> dict[str, Any]:
    return next(k for k in n["ke-customs"]["keys"] if k["use"] == use and k["state"] == state)


_XX, _XY = signing_key("xx-customs/1"), signing_key("xx-customs/0")

HISTORY_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "drops-a-node": lambda n: n.pop("nl-customs"),
    "drops-a-key": lambda n: n["ke-customs"]["keys"].remove(_ke(n, "encryption", "verify-only")),
    "changes-a-key's-start": lambda n: _ke(n, "signing", "active").update(valid_from=1),
    "new-key-not-from-this-version": lambda n: n["nl-customs"]["keys"].append(
        key_entry("signing", signing_key("nl-customs/2").verify_key.raw, 3, "retiring").model_dump()
    ),
    "status-change-keeps-old-since": lambda n: n["za-customs"].update(status="suspended"),
    "retired-key-ends-before-held": lambda n: _retire_signing_key(n, valid_until=2),
    "compromise-extends-validity": lambda n: _ke(n, "encryption", "verify-only").update(
        state="compromised", valid_until=3
    ),
    "valid-until-moved": lambda n: _ke(n, "encryption", "verify-only").update(valid_until=1),
    "compromise-moved-later": lambda n: _ke(n, "signing", "compromised").update(valid_until=2),
    # A node added in this version lists keys with a history before it joined (found by review):
    # one valid from version 1, and one verify-only (a "former" key that would check stored items).
    "new-node-key-from-before-it-joined": lambda n: _add_node(n, key_entry("signing", _XX.verify_key.raw, 1)),
    "new-node-key-not-active": lambda n: _add_node(
        n, key_entry("signing", _XX.verify_key.raw, 4), key_entry("signing", _XY.verify_key.raw, 1, "verify-only", 2)
    ),
}


def _add_node(n: dict[str, Any], signing: NodeKey, *former: NodeKey) -> None:
    """Version 4 adds xx-customs, with `signing`, `former` keys, and its other keys from version 4."""
    new = {k: v for k, v in n["nl-customs"].items() if k != "keys"}
    new.update(id="xx-customs", name="XX", country="XX", endpoint="https://xx.example.test", since=4, status="active")
    new["keys"] = [
        signing.model_dump(),
        *(k.model_dump() for k in former),
        key_entry("encryption", decryption_key("xx-customs/1").public.raw, 4).model_dump(),
        key_entry("tls", tls_cert("xx-customs").encode(), 4).model_dump(),
    ]
    n["xx-customs"] = new


def _retire_signing_key(n: dict[str, Any], valid_until: int) -> None:
    _ke(n, "signing", "active").update(state="verify-only", valid_until=valid_until)
    n["ke-customs"]["keys"].append(key_entry("signing", signing_key("ke-customs/3").verify_key.raw, 4).model_dump())


@pytest.mark.parametrize("name", HISTORY_BREAKS)
def test_history_breaks_are_roster_invalid(name: str) -> None:
    offered = v4(HISTORY_BREAKS[name])
    refused(trusted(3), [offered], errors.RosterInvalid)


def test_history_allows_what_a_federation_does() -> None:
    def change(n: dict[str, Any]) -> None:
        n["za-customs"].update(status="suspended", since=4, endpoint="https://za.example.test")
        _ke(n, "encryption", "verify-only").update(state="compromised", valid_until=1)  # traced back further
        _ke(n, "encryption", "active").update(state="retiring")
        n["ke-customs"]["keys"].append(
            key_entry("encryption", decryption_key("ke-customs/3").public.raw, 4).model_dump()
        )

    assert accept_chain(trusted(3), [v4(change)], NOW).version == 4
    joined = accept_chain(trusted(3), [v4(lambda n: _add_node(n, key_entry("signing", _XX.verify_key.raw, 4)))], NOW)
    assert joined.version == 4 and joined.node("xx-customs").since == 4
    refused(trusted(3), [v4(federation="another federation")], errors.RosterInvalid)
    refused(trusted(3), [v4(issued="2025-05-01T00:00:00Z")], errors.RosterInvalid)  # before version 3's


# -- look-ups for the wiring ---------------------------------------------------------------------


def test_tls_pins_accept_active_and_retiring_keys_of_active_nodes_only() -> None:
    za_new = tls_cert("za-customs-2")

    def rotate(n: dict[str, Any]) -> None:
        tls = next(k for k in n["za-customs"]["keys"] if k["use"] == "tls")
        tls.update(state="retiring")
        n["za-customs"]["keys"].append(key_entry("tls", za_new.encode(), 4).model_dump())

    held = accept_chain(trusted(3), [v4(rotate)], NOW)
    old_pin = next(p for p, node in trusted(3).accepted_pins().items() if node == "za-customs")
    assert held.node_by_pin(old_pin).id == "za-customs"
    new_kid = held.current_key("za-customs", "tls").kid
    assert len([p for p, node in held.accepted_pins().items() if node == "za-customs"]) == 2
    assert za_new.strip() in held.tls_certs_pem("za-customs") and held.tls_certs_pem().count("BEGIN") == 4
    gb_pin = spki_pin(V["inputs"]["nodes"][0]["tls_cert"].encode())
    with pytest.raises(errors.UnknownPeer):  # revoked: refused at the pin check
        held.node_by_pin(gb_pin)
    with pytest.raises(errors.UnknownPeer):
        held.current_key("gb-avsec", "encryption")
    assert new_kid != trusted(3).current_key("za-customs", "tls").kid


def test_key_entry_takes_pem_or_der_alike() -> None:
    pem = tls_cert("nl-customs").encode()
    der = b64d(key_entry("tls", pem, 1).key)
    assert key_entry("tls", der, 1) == key_entry("tls", pem, 1)
    with pytest.raises(errors.InvalidInput):
        key_entry("tls", b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n", 1)


def test_combine_keeps_each_distinct_signature_once_sorted() -> None:
    doc = CHAIN[2].roster
    a, b = sign_roster_v2(doc, signing_key("icao")), sign_roster_v2(doc, signing_key("rilo-ap"))
    combined = combine(doc, [b, a], [a])
    assert combined.signatures == sorted([a, b], key=lambda s: s.kid)
    assert combined == CHAIN[2]


def test_a_copy_of_a_roster_hashes_its_own_bytes() -> None:
    doc = CHAIN[2].roster
    assert roster_hash(doc) == V["outputs"]["chain"][1]["hash_hex"]
    copy = doc.model_copy(update={"issued": "2025-04-01T09:00:01.000Z"})
    assert roster_hash(copy) != roster_hash(doc)
    assert roster_hash(copy) == hashlib.sha256(canonical_json(copy.model_dump(mode="json"))).hexdigest()


def test_from_v1_verifies_the_v1_roster_first() -> None:
    holders = authority([("WCO", signing_key("wco-secretariat").verify_key)], 1)
    with pytest.raises(errors.ConfigError):
        from_v1(V1_FORMAT, signing_key("wco-secretariat").verify_key, holders, *mrv.TIMES[1])
    doc = from_v1(V1_FORMAT, signing_key(mrv.V1_AUTHORITY).verify_key, holders, *mrv.TIMES[1])
    assert [n.id for n in doc.nodes] == [n.id for n in V1_FORMAT.roster.nodes]
    assert VerifyKey(b64d(doc.nodes[0].keys[0].key)).kid == V1_FORMAT.roster.nodes[0].signing_kid


def test_a_restart_restores_an_expired_version_but_still_checks_it() -> None:
    late = when("2026-01-01T00:00:00Z")
    with pytest.raises(errors.RosterExpired):
        TrustedRoster.bootstrap(CHAIN[3], late)
    restored = TrustedRoster.restore(CHAIN[3])
    assert (restored.version, restored.hash) == (3, trusted(3).hash) and restored.expired(late)
    tampered = SignedRosterV2(roster=CHAIN[3].roster, signatures=CHAIN[3].signatures[:1])
    with pytest.raises(errors.RosterThreshold):
        TrustedRoster.restore(tampered)


def test_a_roster_of_200_nodes_parses_and_a_flood_of_values_does_not() -> None:
    """A roster is dense JSON (its key entries: about one value per 18 bytes in canonical form),
    denser than the one value per 20 bytes a request body may hold: a signed version listing
    200 nodes (about 280 KB) was refused as "too many JSON values" wherever it was parsed (an
    import, a peer's offer, the CLI), so a federation of 200 could not take roster v2 (found
    while reviewing the partners' answer budget). A roster now has one value per 8 bytes; a
    body of empty containers is still refused before it is parsed."""
    signed = copy.deepcopy(strict_loads(ROSTER_FILE.read_text("utf-8"))["outputs"]["chain"][-1]["signed"])
    template = next(n for n in signed["roster"]["nodes"] if n["status"] == "active")
    signed["roster"]["nodes"] = [{**copy.deepcopy(template), "id": f"n{i:03d}-customs"} for i in range(200)]
    raw = canonical_json(signed)
    assert len(raw) > MIN_VALUES * BYTES_PER_VALUE  # past what the request budget would take
    assert len(parse_roster_v2(raw).roster.nodes) == 200
    with pytest.raises(InvalidInput, match="too many JSON values"):
        parse_roster_v2(b"[" + b"{}," * (len(raw) // 3) + b"{}]")
