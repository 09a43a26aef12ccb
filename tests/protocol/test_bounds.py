"""Bounds of the wire models and of strict JSON (docs/protocol.md 2.3, 2.6, 2.7), in-process.

Each bound: the largest legitimate value is accepted, one more is refused, and a list of a
million bad items is refused with one error (pydantic checks a list's length before its items).
Dates and timestamps must be on the calendar, in the models and so in what the protocol signs.
"""

from __future__ import annotations

import datetime as dt
import tracemalloc
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from exchange.crypto import b64e, canonical_json, strict_loads
from exchange.crypto.encoding import BYTES_PER_VALUE, MAX_SAFE_INTEGER, MIN_VALUES, value_budget
from exchange.errors import InvalidEnvelope, InvalidInput
from exchange.model import (
    INT32_MAX,
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_BODY,
    MAX_CIPHERTEXT,
    MAX_INDICATORS,
    MAX_LANGUAGE,
    MAX_NAMED_INDICATORS,
    MAX_PAYLOAD_BYTES,
    MAX_PURPOSE,
    MAX_RECIPIENTS,
    MAX_REFERENCES,
    MAX_ROSTER_NODES,
    MAX_SHORT,
    Attachment,
    Bulletin,
    ChannelEvent,
    ChannelPolicy,
    Create,
    Envelope,
    EnvelopeHeader,
    Indicators,
    NodeId,
    Receipt,
    Roster,
    StateRef,
)
from exchange.protocol.channel import ChannelState, sign_event
from exchange.protocol.envelope import MAX_ENVELOPE_BYTES, build_envelope, envelope_bytes, parse_envelope
from exchange.protocol.epoch_model import EnvelopeHeaderV2
from exchange.protocol.receipt import make_receipt
from exchange.protocol.signing import sign
from tests.protocol.test_envelope_rules import AT, BULLETIN, CREATE, entry, first, signed_roster
from tests.vectors.make_vectors import CounterRandom, decryption_key, signing_key

MILLION = 1_000_000
AUTHOR = signing_key("nl-customs")


def refused(model: type[BaseModel], data: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return caught.value


def bulletin(**fields: Any) -> dict[str, Any]:
    return {"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "Undeclared cells", **fields}


def state(readers: list[str]) -> ChannelState:
    """A channel state whose readers are `readers` (the envelope core takes them as given)."""
    return ChannelState(
        channel="cargo-fraud",
        owner=NodeId("nl-customs"),
        pos=0,
        hash="ab" * 32,
        title="t",
        purpose="",
        policy=ChannelPolicy(agencies=["customs"]),
        default_handling=BULLETIN.handling,
        ends=None,
        members={NodeId(n): frozenset({"read"}) for n in readers},
    )


def envelope_to(readers: list[str], content: Bulletin = BULLETIN) -> Envelope:
    keys = [(NodeId(n), decryption_key(n).public) for n in readers]
    return build_envelope(
        content,
        state=state(readers),
        author=NodeId("nl-customs"),
        key=AUTHOR,
        seq=1,
        readers=keys,
        created=AT,
        rng=CounterRandom(),
    )


def short_ids(n: int) -> list[str]:
    """`n` node ids of two characters, the shortest there are: the densest legitimate header."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return sorted(a + b for a in alphabet for b in alphabet)[:n]


def largest_bulletin() -> Bulletin:
    """The bulletin with the longest payload the bounds allow: every list full, every text at its
    length in control characters (which JCS escapes as six bytes each), 2 MiB of attachments."""
    ctl = "\x01"
    return Bulletin.model_validate(
        bulletin(
            title=ctl * MAX_SHORT,
            body=ctl * MAX_BODY,
            indicators={
                "air_waybills": ["176-12345675"] * MAX_INDICATORS,
                "hs_codes": ["1234.56.78.90"] * MAX_INDICATORS,
                "airports": ["NBO"] * MAX_INDICATORS,
                "flights": ["KQ1234A"] * MAX_INDICATORS,
                "companies": [ctl * MAX_SHORT] * MAX_NAMED_INDICATORS,
                "risk_indicators": [ctl * MAX_SHORT] * MAX_NAMED_INDICATORS,
            },
            references=["ab" * 32] * MAX_REFERENCES,
            language="abc-" + "-".join(["abcdefgh"] * 3) + "-abc",
            expires="9999-12-31",
            attachments=[
                {"name": '"' * MAX_SHORT, "media_type": "a/" + "b" * 98, "data": b64e(bytes(size))}
                for size in [MAX_ATTACHMENT_BYTES // MAX_ATTACHMENTS] * MAX_ATTACHMENTS
            ],
        )
    )


# -- lists: at the bound accepted, one more refused, a million bad items cost one error -----------

INDICATOR_KINDS = {
    "air_waybills": ("176-12345675", MAX_INDICATORS),
    "hs_codes": ("8471.30", MAX_INDICATORS),
    "airports": ("NBO", MAX_INDICATORS),
    "flights": ("KQ310", MAX_INDICATORS),
    "companies": ("Acme Freight Ltd", MAX_NAMED_INDICATORS),
    "risk_indicators": ("toner cartridges", MAX_NAMED_INDICATORS),
}


@pytest.mark.parametrize("kind", INDICATOR_KINDS)
def test_indicator_lists_are_bounded(kind: str) -> None:
    good, bound = INDICATOR_KINDS[kind]
    assert len(Indicators.model_validate({kind: [good] * bound}).model_dump()[kind]) == bound
    assert refused(Indicators, {kind: [good] * (bound + 1)}).errors()[0]["type"] == "too_long"


def test_a_post_with_a_million_invalid_airports_costs_one_error() -> None:
    exc = refused(Bulletin, bulletin(indicators={"airports": ["xx"] * MILLION}))
    assert exc.error_count() == 1
    assert exc.errors()[0]["type"] == "too_long"
    assert exc.errors()[0]["loc"] == ("indicators", "airports")


def test_bad_items_of_a_list_within_its_bound_are_reported_at_most_bound_times() -> None:
    exc = refused(Bulletin, bulletin(indicators={"airports": ["xx"] * MAX_INDICATORS}))
    assert exc.error_count() == MAX_INDICATORS


def test_sequence_numbers_and_log_positions_fit_an_int4_column() -> None:
    """They are stored in Integer columns (int4 on PostgreSQL): 2^31 - 1 is taken, 2^31 refused
    as input (it was a failed query, a 500, on PostgreSQL)."""
    header = envelope_to(["ke-customs"]).header.model_dump(mode="json")
    event = {"v": 1, "channel": "cargo-fraud", "owner": "nl-customs", "pos": 0, "prev": None, "at": AT}
    event |= {"change": CREATE, "signer": AUTHOR.kid, "signature": "A" * 86}
    cases: list[tuple[type[BaseModel], dict[str, Any], str]] = [
        (EnvelopeHeader, header, "seq"),
        (StateRef, header["state"], "pos"),
        (ChannelEvent, event, "pos"),
    ]
    for model, data, field in cases:
        model.model_validate({**data, field: INT32_MAX})
        assert field in str(refused(model, {**data, field: INT32_MAX + 1})), model
    bounds = EnvelopeHeaderV2.model_fields["seq"].metadata  # the v2 header's seq is bounded alike
    assert any(getattr(b, "le", None) == INT32_MAX for b in bounds)
    assert INT32_MAX == 2**31 - 1


def test_references_are_bounded() -> None:
    Bulletin.model_validate(bulletin(references=["ab" * 32] * MAX_REFERENCES))
    assert refused(Bulletin, bulletin(references=["ab" * 32] * (MAX_REFERENCES + 1))).error_count() == 1
    assert refused(Bulletin, bulletin(references=["x"] * MILLION)).error_count() == 1


def test_attachments_are_bounded() -> None:
    one = {"name": "a.pdf", "media_type": "application/pdf", "data": "AA"}
    Bulletin.model_validate(bulletin(attachments=[one] * MAX_ATTACHMENTS))
    assert refused(Bulletin, bulletin(attachments=[one] * (MAX_ATTACHMENTS + 1))).error_count() == 1
    assert refused(Bulletin, bulletin(attachments=[{}] * MILLION)).error_count() == 1


def test_an_envelope_with_a_million_invalid_wraps_costs_one_error() -> None:
    data = envelope_to(["gb-avsec", "ke-customs"]).model_dump(mode="json")
    data["wraps"] = ["!"] * MILLION
    with pytest.raises(InvalidEnvelope, match="wraps: List should have at most 1000 items"):
        parse_envelope(data)
    data["wraps"] = []
    with pytest.raises(InvalidEnvelope, match="wraps"):
        parse_envelope(data)


def test_an_envelope_with_a_million_recipients_costs_one_error() -> None:
    data = envelope_to(["gb-avsec", "ke-customs"]).model_dump(mode="json")
    data["header"]["recipients"] = [{"node": "!", "kid": "!"}] * MILLION
    with pytest.raises(InvalidEnvelope, match="recipients: List should have at most 1000 items"):
        parse_envelope(data)


def test_the_roster_is_bounded() -> None:
    roster = signed_roster().roster.model_dump(mode="json")
    Roster.model_validate(roster)
    nodes: list[Any]
    for nodes in ([], [roster["nodes"][0]] * (MAX_ROSTER_NODES + 1), [{}] * MILLION):
        exc = refused(Roster, {**roster, "nodes": nodes})
        assert exc.error_count() == 1
        assert exc.errors()[0]["type"] in ("too_short", "too_long")


def test_policy_and_rights_are_bounded() -> None:
    ChannelPolicy.model_validate({"agencies": ["customs", "aviation-security", "police", "international"]})
    assert refused(ChannelPolicy, {"agencies": ["customs"] * 5}).error_count() == 1
    assert refused(ChannelPolicy, {"agencies": ["nobody"] * MILLION}).error_count() == 1
    invite = {"type": "invite", "node": "ke-customs", "rights": ["read"] * 4}
    with pytest.raises(InvalidInput, match="rights"):
        sign_event(channel="cargo-fraud", owner="nl-customs", pos=1, prev="ab" * 32, at=AT, change=invite, key=AUTHOR)


# -- strings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "bound"), [("title", MAX_SHORT), ("body", MAX_BODY), ("language", MAX_LANGUAGE)])
def test_bulletin_text_is_bounded_in_code_points(field: str, bound: int) -> None:
    fill = {"title": "€", "body": "€", "language": "a"}[field]  # € is one code point, three UTF-8 bytes
    at_bound = "abc-" + "a" * 8 + "-" + "b" * 8 + "-" + "c" * 8 + "-dddd" if field == "language" else fill * bound
    assert len(at_bound) == bound
    Bulletin.model_validate(bulletin(**{field: at_bound}))
    refused(Bulletin, bulletin(**{field: at_bound + ("e" if field == "language" else fill)}))


def test_purpose_is_bounded() -> None:
    create = {**CREATE, "purpose": "p" * MAX_PURPOSE}
    Create.model_validate(create)
    refused(Create, {**create, "purpose": "p" * (MAX_PURPOSE + 1)})


@pytest.mark.parametrize(
    ("path", "length"),
    [("wraps", 129), ("signature", 129), ("header.nonce", 65), ("ciphertext", MAX_CIPHERTEXT + 1)],
)
def test_envelope_byte_strings_are_bounded(path: str, length: int) -> None:
    data = envelope_to(["gb-avsec", "ke-customs"]).model_dump(mode="json")
    *parents, leaf = path.split(".")
    target = data
    for p in parents:
        target = target[p]
    target[leaf] = ["A" * length, target[leaf][1]] if leaf == "wraps" else "A" * length
    with pytest.raises(InvalidEnvelope, match="schema"):
        parse_envelope(data)


def test_patterns_take_ascii_digits_only() -> None:
    """The regex engine's `\\d` matches any Unicode digit; the patterns use [0-9]."""
    Indicators.model_validate({"air_waybills": ["176-12345675"], "hs_codes": ["8471.30"], "flights": ["KQ310"]})
    arabic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    for kind, value in [("air_waybills", "176-12345675"), ("hs_codes", "8471.30"), ("flights", "KQ310")]:
        refused(Indicators, {kind: [value.translate(arabic)]})
    refused(Bulletin, bulletin(expires="2025-03-14".translate(arabic)))


# -- the largest legitimate objects still pass every bound -----------------------------------------


def test_the_largest_bulletin_fits_its_envelope_bounds() -> None:
    big = largest_bulletin()
    assert len(big.payload_bytes) <= MAX_PAYLOAD_BYTES
    env = envelope_to(["gb-avsec", "ke-customs"], big)
    raw = envelope_bytes(env)
    assert len(env.ciphertext) <= MAX_CIPHERTEXT
    assert parse_envelope(raw) == env


def test_the_largest_envelope_fits_the_byte_limit() -> None:
    """MAX_CIPHERTEXT characters of ciphertext and MAX_RECIPIENTS recipients and wraps."""
    env = envelope_to(short_ids(2)).model_dump(mode="json")
    env["ciphertext"] = "A" * MAX_CIPHERTEXT
    env["header"]["recipients"] = [
        {"node": f"n{i:03d}-longest-id".ljust(63, "x"), "kid": "0" * 16} for i in range(1000)
    ]
    env["wraps"] = ["A" * 107] * MAX_RECIPIENTS
    raw = canonical_json(env)
    assert len(raw) <= MAX_ENVELOPE_BYTES
    assert len(parse_envelope(raw).wraps) == MAX_RECIPIENTS


def test_the_densest_legitimate_transaction_fits_the_value_budget() -> None:
    """An envelope to 1,000 readers with two-character ids has the most values per byte."""
    env = envelope_to(short_ids(MAX_RECIPIENTS))
    assert len(env.wraps) == MAX_RECIPIENTS
    one = envelope_bytes(env)
    body = b'{"txn":"t","envelopes":[' + b",".join([one] * 20) + b"]}"
    assert strict_loads(body)["envelopes"][0]["wraps"] == env.wraps
    structure = sum(body.count(c) for c in (b",", b":", b"[", b"{"))
    assert len(body) / structure > BYTES_PER_VALUE  # margin: about 25 bytes per value
    assert parse_envelope(one) == env


# -- calendar-valid dates and timestamps -----------------------------------------------------------

BAD_DATES = ["2025-02-30", "3004-42-81", "2023-02-29", "2025-04-31", "0000-01-01", "2025-00-10", "2025-1-01"]
GOOD_DATES = ["2024-02-29", "0001-01-01", "9999-12-31", "2025-02-28"]
BAD_TIMES = [
    "2025-02-30T12:00:00.000Z",
    "3004-42-81T12:00:00Z",
    "2025-03-14T24:00:00Z",
    "2025-03-14T23:60:00Z",
    "2025-03-14T23:59:60Z",
    "2025-03-14T23:59:59.1234567Z",
    "2025-03-14T23:59:59+00:00",
]
GOOD_TIMES = ["2025-03-14T00:00:00Z", "2024-02-29T23:59:59.999999Z", "9999-12-31T23:59:59.5Z"]


@pytest.mark.parametrize("value", GOOD_DATES)
def test_calendar_dates_are_accepted(value: str) -> None:
    assert Bulletin.model_validate(bulletin(expires=value)).expires == value
    assert Create.model_validate({**CREATE, "ends": value}).ends == value
    assert dt.date.fromisoformat(value)


@pytest.mark.parametrize("value", BAD_DATES)
def test_dates_off_the_calendar_are_refused(value: str) -> None:
    refused(Bulletin, bulletin(expires=value))
    refused(Create, {**CREATE, "ends": value})


@pytest.mark.parametrize("value", BAD_DATES)
def test_the_owner_signs_no_channel_ending_off_the_calendar(value: str) -> None:
    with pytest.raises(InvalidInput, match="ends"):
        first(change={**CREATE, "ends": value})


@pytest.mark.parametrize("value", BAD_DATES)
def test_a_partners_signed_event_ending_off_the_calendar_is_refused(value: str) -> None:
    """What a hand-made owner signature covers does not matter: the schema refuses the event."""
    good = first().model_dump(mode="json")
    body = {k: v for k, v in good.items() if k != "signature"}
    body["change"] = {**body["change"], "ends": value}
    with pytest.raises(ValidationError, match="ends"):
        ChannelEvent.model_validate({**body, "signature": sign("channel-event", body, AUTHOR)})


@pytest.mark.parametrize("value", GOOD_TIMES)
def test_timestamps_on_the_clock_are_accepted(value: str) -> None:
    assert first(at=value).at == value
    assert make_receipt("ab" * 32, NodeId("ke-customs"), "received", value, AUTHOR).at == value


@pytest.mark.parametrize("value", BAD_TIMES)
def test_timestamps_off_the_clock_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"schema: at: "):
        first(at=value)
    with pytest.raises(InvalidInput, match=r"schema: at: "):
        make_receipt("ab" * 32, NodeId("ke-customs"), "received", value, AUTHOR)
    receipt = make_receipt("ab" * 32, NodeId("ke-customs"), "received", AT, AUTHOR).model_dump(mode="json")
    refused(Receipt, {**receipt, "at": value})
    roster = signed_roster([entry("nl-customs")]).roster.model_dump(mode="json")
    refused(Roster, {**roster, "issued": value})


@pytest.mark.parametrize("value", BAD_TIMES)
def test_an_envelope_created_off_the_clock_is_refused(value: str) -> None:
    data = envelope_to(["gb-avsec", "ke-customs"]).model_dump(mode="json")
    data["header"]["created"] = value
    with pytest.raises(InvalidEnvelope, match="created"):
        parse_envelope(canonical_json(data))


# -- strict JSON: integers, the value budget, nesting, text ----------------------------------------


def test_an_integer_of_5000_digits_is_invalid_input_not_a_value_error() -> None:
    for digits in ("9" * 5000, "-" + "9" * 5000, "1" + "0" * 4300):
        with pytest.raises(InvalidInput, match="integers are limited"):
            strict_loads(f'{{"seq": {digits}}}'.encode())


def test_integers_are_bounded_by_what_jcs_can_write() -> None:
    assert strict_loads(f"[{MAX_SAFE_INTEGER}, -{MAX_SAFE_INTEGER}, 0, -0]") == [
        MAX_SAFE_INTEGER,
        -MAX_SAFE_INTEGER,
        0,
        0,
    ]
    for value in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 10**16):
        with pytest.raises(InvalidInput, match="integers are limited"):
            strict_loads(f"[{value}]")
    with pytest.raises(InvalidInput):
        canonical_json(MAX_SAFE_INTEGER + 1)  # the same limit as signing


@pytest.mark.parametrize("literal", ["1.0", "1e3", "-0.0", "1e99999", "NaN", "Infinity", "-Infinity"])
def test_floats_and_constants_are_refused(literal: str) -> None:
    with pytest.raises(InvalidInput):
        strict_loads(f"[{literal}]")


def test_a_long_float_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidInput) as caught:
        strict_loads(b"[1." + b"5" * 100_000 + b"]")
    assert len(caught.value.detail) < 100


def test_a_million_values_are_refused_before_parsing() -> None:
    body = b'{"airports": [' + b",".join([b'"xx"'] * MILLION) + b"]}"
    assert len(body) // BYTES_PER_VALUE < MILLION
    with pytest.raises(InvalidInput, match="too many JSON values"):
        strict_loads(body)
    with pytest.raises(InvalidInput, match="too many JSON values"):
        strict_loads(b"[" + b"[]," * (MIN_VALUES // 2) + b"[]]")  # small, but all structure


@pytest.mark.parametrize("item", [b'"xx"', b'","', b'"\\\\"'], ids=["strings", "commas-in-strings", "backslashes"])
def test_a_hostile_list_is_refused_without_an_object_per_item(item: bytes) -> None:
    body = b'{"airports": [' + b",".join([item] * (1_000_000 // (len(item) + 1))) + b"]}"
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="too many JSON values"):
            strict_loads(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # nothing decoded, parsed or collected: a few passes over the bytes


def test_commas_inside_strings_do_not_count() -> None:
    text = "a, b: [c], {d}" * 14_000  # a 196,000-character body, 70,000 structural-looking characters
    assert value_budget(len(text)) < 70_000
    assert strict_loads(canonical_json({"body": text}))["body"] == text
    assert strict_loads(canonical_json({"body": text}).decode())["body"] == text


def test_the_budget_grows_with_the_document() -> None:
    assert value_budget(0) == MIN_VALUES
    assert value_budget(64 * 1024 * 1024) == 64 * 1024 * 1024 // BYTES_PER_VALUE
    body = b"[" + b",".join([b'"' + b"x" * (BYTES_PER_VALUE - 2) + b'"'] * 100_000) + b"]"
    assert len(strict_loads(body)) == 100_000


def test_deep_nesting_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="nested too deeply"):
        strict_loads(b"[" * 5000 + b"]" * 5000)
    with pytest.raises(InvalidInput, match="nested too deeply"):
        strict_loads(b'{"a":' * 3000 + b"1" + b"}" * 3000)
    assert strict_loads(b"[" * 64 + b"]" * 64) is not None


@pytest.mark.parametrize(
    "body",
    [
        b'["\\ud800"]',
        b'["\\udfff x"]',
        b'{"\\uDC00": 1}',
        b'[{"a": ["ok", "\\ud83d"]}]',
        '["\ud800"]',
    ],
    ids=["high", "low", "key", "nested", "str-input"],
)
def test_lone_surrogates_are_refused(body: bytes | str) -> None:
    with pytest.raises(InvalidInput, match="surrogate"):
        strict_loads(body)


def test_escaped_pairs_and_escaped_backslashes_are_kept() -> None:
    assert strict_loads(b'["\\ud83d\\ude00", "\\\\ud800"]') == ["\U0001f600", "\\ud800"]


@pytest.mark.parametrize(
    "body",
    [
        b'["\xed\xa0\x80"]',  # a surrogate encoded in UTF-8
        b"\xef\xbb\xbf{}",  # a byte order mark
        "{}".encode("utf-16"),
        "{}".encode("utf-32"),
        b'["\xff"]',
    ],
    ids=["utf8-surrogate", "bom", "utf-16", "utf-32", "not-utf8"],
)
def test_only_utf8_is_json(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        strict_loads(body)


def test_bytearray_input_is_parsed_like_bytes() -> None:
    assert strict_loads(bytearray(b'{"a": [1, "b"]}')) == {"a": [1, "b"]}


def test_duplicate_keys_are_still_refused() -> None:
    with pytest.raises(InvalidInput, match="duplicate"):
        strict_loads(b'{"a": 1, "a": 1}')


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("report.pdf", True),
        ("résumé.pdf", True),
        ("تقرير.pdf", True),
        ("evil\u202efdp.exe", False),  # right-to-left override: would show as "evil" + "exe.pdf"
        ("a\u2066b", False),
        ("a\u200fb", False),
        ("line\u2028break", False),
        ("del\x7f", False),
        ("c1\x85", False),
        ("dir/name", False),
    ],
)
def test_attachment_names_refuse_bidi_and_control_characters(name: str, accepted: bool) -> None:
    raw = {"name": name, "media_type": "application/pdf", "data": ""}
    if accepted:
        assert Attachment.model_validate(raw).name == name
    else:
        with pytest.raises(ValidationError):
            Attachment.model_validate(raw)
