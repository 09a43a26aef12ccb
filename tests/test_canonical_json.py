"""Canonical JSON: the standard library's C encoder gives the `rfc8785` package's bytes, byte
for byte, on every value of the protocol's domain, and everything else takes the `rfc8785` path.

A differential property test generates JSON values (control characters, quotes, backslashes,
astral characters, names that sort differently by UTF-16 code units and by code points,
integers at the ±(2^53 - 1) bounds) and compares `canonical_json` with `rfc8785.dumps`. Known
answers from RFC 8785's examples, and the fallback cases one by one, follow.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, event, given, settings, strategies as st

from exchange.crypto import canonical_json, strict_loads
from exchange.crypto.encoding import MAX_SAFE_INTEGER, fast_canonical_json
from exchange.errors import InvalidInput
from exchange.model import Bulletin, ChannelEvent, EnvelopeHeader, Receipt, SignedRoster
from tests.vectors.make_vectors import ENVELOPE_FILE

# No example database in the working tree, and no deadline: the test asserts bytes, never times.
PROPERTY = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Characters where escaping rules live or where UTF-16 and code point order part ways.
CONTROLS = [chr(c) for c in range(0x20)]
ESCAPED = ['"', "\\"]
NOT_ESCAPED = ["/", "\x7f", "\x80", "\x9f", "\u2028", "\u2029", "\ufeff", "\ufffd", "\ufffe", "\uffff"]
HIGH_BMP = ["\ue000", "\uf8ff", "\ufb33", "\ufe0f", "\uff01", "\uffff"]  # after the surrogates in UTF-16
ASTRAL = ["\U00010000", "\U0001f600", "\U0001f1f3", "\U0010ffff"]  # a surrogate pair in UTF-16
TRICKY = CONTROLS + ESCAPED + NOT_ESCAPED + HIGH_BMP + ASTRAL + ["é", "€", "\u0301", "\ud7ff"]

# Any Unicode scalar value (UTF-8 can encode it: no surrogates), with the tricky ones often.
scalar_char = st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRICKY))
text = st.text(scalar_char, max_size=24)

# Names built from a short shared prefix and one order-sensitive character, so that objects often
# hold names that sort one way by code points and the other by UTF-16 code units.
order_sensitive_name = st.builds(
    lambda prefix, pivot, suffix: prefix + pivot + suffix,
    st.text(st.sampled_from("ab"), max_size=2),
    st.sampled_from(HIGH_BMP + ASTRAL + ["z", "é"]),
    st.text(scalar_char, max_size=2),
)
name = st.one_of(text, order_sensitive_name)

BOUNDS = [
    MAX_SAFE_INTEGER,
    -MAX_SAFE_INTEGER,
    MAX_SAFE_INTEGER - 1,
    -MAX_SAFE_INTEGER + 1,
    0,
    -1,
    2**31,
    -(2**31) - 1,
    2**32,
    10**15,
    -(10**15),
]
safe_int = st.one_of(st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER), st.sampled_from(BOUNDS))

scalar = st.one_of(st.none(), st.booleans(), safe_int, text)
json_value = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(name, children, max_size=6),
    ),
    max_leaves=40,
)

# Outside the domain: floats, integers beyond the bounds, names that are not strings, lone
# surrogates and surrogate pairs as two code points (a Python str can hold either; neither is a
# Unicode scalar value, so neither can be written as UTF-8 or in JCS).
surrogate = st.characters(categories=["Cs"])
unsafe_text = st.one_of(
    text,
    st.builds(lambda a, s, b: a + s + b, text, surrogate, text),
    st.just("\ud83d\ude00"),
)
unsafe_scalar = st.one_of(
    scalar,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.sampled_from([MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**63, 10**16]),
    unsafe_text,
)
unsafe_value = st.recursive(
    unsafe_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(name, unsafe_text), children, max_size=5),
        st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none(), st.floats()), children, max_size=3),
    ),
    max_leaves=25,
)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(k) or _has_float(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_float(item) for item in value)
    return False


def _reference(value: Any) -> bytes | None:
    """What canonical_json must give: rfc8785's bytes, or None where it must refuse (a float
    anywhere, or anything rfc8785 itself refuses)."""
    if _has_float(value):
        return None
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return None


@PROPERTY
@given(json_value)
def test_generated_values_give_rfc8785_bytes(value: Any) -> None:
    expected = rfc8785.dumps(value)
    fast = fast_canonical_json(value)
    event("fast path" if fast is not None else "rfc8785 path")  # see --hypothesis-show-statistics
    if fast is not None:
        assert fast == expected
    assert canonical_json(value) == expected


@PROPERTY
@given(st.dictionaries(name, safe_int, min_size=2, max_size=8))
def test_names_in_either_order_give_rfc8785_bytes(value: dict[str, int]) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)
    code_points = sorted(value)
    utf16 = sorted(value, key=lambda n: n.encode("utf-16-be"))
    if code_points != utf16:
        assert fast_canonical_json(value) is None  # the C encoder would sort them wrongly


@PROPERTY
@given(json_value)
def test_parsed_json_text_with_escaped_surrogate_pairs_gives_rfc8785_bytes(value: Any) -> None:
    """The way values reach the node: as JSON text, here with every astral character written as
    an escaped surrogate pair ("\\ud83d\\ude00"), which strict_loads reads as one character."""
    wire = json.dumps(value, ensure_ascii=True)
    assert canonical_json(strict_loads(wire)) == rfc8785.dumps(value)


@PROPERTY
@given(unsafe_value)
def test_values_outside_the_domain_give_rfc8785_bytes_or_are_refused(value: Any) -> None:
    expected = _reference(value)
    if expected is None:
        with pytest.raises(InvalidInput):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


def test_every_code_point_in_a_string_gives_rfc8785_bytes() -> None:
    for start in range(0, 0x110000, 256):
        chars = "".join(chr(c) for c in range(start, start + 256) if not 0xD800 <= c <= 0xDFFF)
        if not chars:
            continue
        assert fast_canonical_json(chars) == rfc8785.dumps(chars), hex(start)
        assert canonical_json([chars, {"k": chars}]) == rfc8785.dumps([chars, {"k": chars}]), hex(start)


def test_every_code_point_as_a_name_sorts_as_rfc8785_does() -> None:
    # Blocks of 4,096 never mix U+E000..U+FFFF with astral characters, so each takes the fast
    # path; test_rfc8785_sorting_example covers the mix.
    for start in range(0, 0x110000, 4096):
        names = {chr(c): c for c in range(start, start + 4096) if not 0xD800 <= c <= 0xDFFF}
        if not names:
            continue
        assert fast_canonical_json(names) == rfc8785.dumps(names), hex(start)


@pytest.mark.parametrize(
    ("char", "written"),
    [
        ("\b", b'"\\b"'),
        ("\t", b'"\\t"'),
        ("\n", b'"\\n"'),
        ("\f", b'"\\f"'),
        ("\r", b'"\\r"'),
        ('"', b'"\\""'),
        ("\\", b'"\\\\"'),
        ("\x00", b'"\\u0000"'),
        ("\x0b", b'"\\u000b"'),  # lowercase hex
        ("\x1f", b'"\\u001f"'),
        ("/", b'"/"'),  # JSON allows "\/"; JCS writes the character
        ("\x7f", b'"\x7f"'),
        ("\x80", b'"\xc2\x80"'),
        ("\u2028", b'"\xe2\x80\xa8"'),
        ("\u2029", b'"\xe2\x80\xa9"'),
        ("\ufeff", b'"\xef\xbb\xbf"'),
        ("\U0001f600", b'"\xf0\x9f\x98\x80"'),  # UTF-8, never an escaped surrogate pair
    ],
)
def test_rfc8785_string_escapes(char: str, written: bytes) -> None:
    """RFC 8785 section 3.2.2.2, character by character, on both paths."""
    assert canonical_json(char) == written
    assert fast_canonical_json(char) == written
    assert rfc8785.dumps(char) == written


def test_every_other_control_character_is_a_lowercase_unicode_escape() -> None:
    short = {0x08: "b", 0x09: "t", 0x0A: "n", 0x0C: "f", 0x0D: "r"}
    for c in range(0x20):
        expected = f"\\{short[c]}" if c in short else f"\\u{c:04x}"
        assert canonical_json(chr(c)) == f'"{expected}"'.encode()


def test_rfc8785_sample_strings_and_literals() -> None:
    """RFC 8785 section 3.2.2's sample, parsed from its JSON text, without its numbers (floats,
    which exchange-v1 refuses)."""
    parsed = strict_loads(
        r'{"string": "\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}'
    )
    expected = '{"literals":[null,true,false],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'.encode()
    assert canonical_json(parsed) == expected
    assert fast_canonical_json(parsed) == expected


def test_rfc8785_sample_numbers_are_refused_as_floats() -> None:
    numbers = [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001]
    assert rfc8785.dumps(numbers) == b"[333333333.3333333,1e+30,4.5,0.002,1e-27]"
    with pytest.raises(InvalidInput, match="floats"):
        canonical_json({"numbers": numbers})


def test_rfc8785_sorting_example() -> None:
    """RFC 8785 section 3.2.3: names sorted by UTF-16 code units. "\\ufb33" sorts after the emoji
    there, before it by code points: this object must take the rfc8785 path."""
    parsed = strict_loads(
        r'{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",'
        r' "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control",'
        r' "\u00f6": "Latin Small Letter O With Diaeresis"}'
    )
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control","ö":"Latin Small Letter O With Diaeresis",'
        '"€":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ).encode()
    assert fast_canonical_json(parsed) is None
    assert canonical_json(parsed) == expected
    # Without the Hebrew letter the two orders agree, and the fast path gives the same bytes.
    del parsed["\ufb33"]
    assert fast_canonical_json(parsed) == canonical_json(parsed) == rfc8785.dumps(parsed)


def test_rfc8785_utf8_example() -> None:
    """RFC 8785 section 3.2.4: no Unicode normalisation, UTF-8 bytes as given."""
    value = strict_loads(r'{"Unnormalized Unicode":"A\u030a"}')
    expected = bytes.fromhex(
        "7b 22 55 6e 6e 6f 72 6d 61 6c 69 7a 65 64 20 55 6e 69 63 6f 64 65 22 3a 22 41 cc 8a 22 7d"
    )
    assert canonical_json(value) == expected
    assert fast_canonical_json(value) == expected


class Level(enum.IntEnum):
    AMBER = 2


class Tlp(enum.StrEnum):
    AMBER = "AMBER"


class Ordered(dict[str, Any]):
    pass


def _self_containing() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"\ufb33": 1, "\U0001f600": 2}, b'{"\xf0\x9f\x98\x80":2,"\xef\xac\xb3":1}'),  # UTF-16 order
        ({"a\ue000": 1, "a\U00010000": 2}, b'{"a\xf0\x90\x80\x80":2,"a\xee\x80\x80":1}'),
        (Level.AMBER, b"2"),  # subclasses go to rfc8785, whatever they override
        ({"tlp": Tlp.AMBER}, b'{"tlp":"AMBER"}'),
        (Ordered(b=1, a=2), b'{"a":2,"b":1}'),
        (1.0, None),  # refused: floats
        ([1, [2.5]], None),
        (MAX_SAFE_INTEGER + 1, None),  # refused: JCS cannot write it
        (-MAX_SAFE_INTEGER - 1, None),
        ({1: "one"}, None),  # json would write {"1":"one"}
        ({None: 0}, None),
        ({True: 0}, None),
        ("\ud800", None),  # a lone surrogate
        ({"\udfff": 0}, None),
        (["\ud83d\ude00"], None),  # a surrogate pair as two code points is two lone surrogates
        ({"x": {1, 2}}, None),  # not a JSON type
        (b"bytes", None),
        (_self_containing(), None),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_the_fallback_is_taken_where_the_c_encoder_would_differ(value: Any, expected: bytes | None) -> None:
    assert fast_canonical_json(value) is None
    if expected is None:
        with pytest.raises(InvalidInput):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected == rfc8785.dumps(value)


def test_the_integer_bounds_are_in_the_domain() -> None:
    for value in (MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0, [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]):
        assert fast_canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json({"n": MAX_SAFE_INTEGER}) == b'{"n":9007199254740991}'


def test_the_projects_own_objects_take_the_fast_path() -> None:
    """The golden vectors' header, payload, receipt, channel events and roster, as the code
    canonicalises them (model_dump(mode="json")), go through the C encoder and give the recorded
    bytes."""
    vectors = strict_loads(ENVELOPE_FILE.read_bytes())
    outputs = vectors["outputs"]
    header = EnvelopeHeader.model_validate(outputs["envelope"]["header"]).model_dump(mode="json")
    assert fast_canonical_json(header) == outputs["header_jcs"].encode()
    payload = Bulletin.model_validate(vectors["inputs"]["bulletin"]).payload()
    assert fast_canonical_json(payload) == outputs["content"]["payload_jcs"].encode()
    objects: list[Any] = [
        Receipt.model_validate(outputs["receipt"]["signed"]).model_dump(mode="json"),
        SignedRoster.model_validate(outputs["roster"]["signed"]).model_dump(mode="json"),
        outputs,  # the whole file's outputs: strings with escapes, nested lists
    ]
    objects += [ChannelEvent.model_validate(e["signed"]).model_dump(mode="json") for e in outputs["channel_log"]]
    for value in objects:
        fast = fast_canonical_json(value)
        assert fast is not None
        assert fast == rfc8785.dumps(value)
