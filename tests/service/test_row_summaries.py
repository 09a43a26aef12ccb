"""A bulletin's stored summary and search text (`exchange.service.records`), cut from its canonical
payload rather than written again, are byte for byte what the reference functions make of its
content (`summary_of`, `search_text_of`), whatever the text holds: quotes, backslashes, commas,
`,"body":` inside strings, characters outside the BMP, attachments and indicators."""

from __future__ import annotations

import json
from typing import Any, get_args

from hypothesis import given, settings, strategies as st

from exchange.crypto import canonical_json
from exchange.model import Bulletin
from exchange.service.records import _derived, _summary_from_payload, search_text_of, summary_of

TRICKY = ['"', "\\", ",", ':"body":', ',"body":"', "\u2028", "\U0001f600", "\x00", "\ufb33", "é"]
text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=8)), max_size=12).map("".join)
short = st.lists(
    st.one_of(st.sampled_from(['"', ',"body":', "x", "é", "\U0001f600"]), st.text("abc ", max_size=5)),
    min_size=1,
    max_size=6,
).map("".join)


def attachment(name: str, data: str) -> dict[str, Any]:
    return {"name": name, "media_type": "text/plain", "data": data}


bulletins = st.builds(
    lambda title, body, names, waybills, language, expires, kind, due, references: {
        "kind": kind,
        "due": due,
        "references": references,
        "handling": {"tlp": "AMBER", "no_onward_sharing": False},
        "title": title,
        "body": body,
        "attachments": [attachment(n, "QUJD" * (i + 1)) for i, n in enumerate(names)],
        "indicators": {"air_waybills": waybills, "companies": [title]},
        "language": language,
        "expires": expires,
    },
    st.text(min_size=1, max_size=20).filter(lambda t: t.strip() == t and t.isprintable()) | short,
    text,
    st.lists(st.sampled_from(["manifest.pdf", "a,b.txt", "x y"]) | short, max_size=3),
    st.lists(st.sampled_from(["176-12345675", "020-00000000"]), max_size=2),
    st.sampled_from(["en", "fr", "pt-BR"]),
    st.sampled_from([None, "2027-01-31"]),
    st.sampled_from(list(get_args(Bulletin.model_fields["kind"].annotation))),
    st.sampled_from([None, "2027-02-28"]),
    st.lists(st.sampled_from(["ab" * 32, "0" * 64]), max_size=2, unique=True),
)


@settings(max_examples=300, deadline=None)
@given(bulletins)
def test_the_summary_cut_from_the_payload_is_the_reference_summary(raw: dict[str, Any]) -> None:
    try:
        bulletin = Bulletin.model_validate(raw)
    except ValueError:
        return  # a title the model refuses: not a bulletin
    content = json.loads(bulletin.payload_bytes)
    attachments = [{"name": a.name, "media_type": a.media_type, "size": a.size} for a in bulletin.attachments]
    assert _summary_from_payload(bulletin.payload_bytes, bulletin.body, attachments) is not None  # cut, not written
    derived = _derived(bulletin)
    assert derived["summary"] == canonical_json(summary_of(content)).decode()
    assert derived["search_text"] == search_text_of(content)
