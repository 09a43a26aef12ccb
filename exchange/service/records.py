"""Rows of the store as the application layer writes them: bulletins and receipts.

Pure: it imports no database code, so that a crypto worker process, which makes bulletins' rows
(exchange.service.cryptopool), loads neither SQLAlchemy nor the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from exchange.crypto import canonical_json
from exchange.model import Bulletin, Envelope, EnvelopeHeader, Indicators, Receipt
from exchange.protocol.envelope import BuiltEnvelope, envelope_bytes
from exchange.protocol.epoch_model import EnvelopeHeaderV2
from exchange.protocol.receipt import StoredReceipt, stored


def summary_of(content: Mapping[str, Any]) -> dict[str, Any]:
    """What listings show of a bulletin (`bulletins.summary`): its content, parsed, without its
    body and its attachments' data (each attachment's name, media type and size are kept)."""
    out = {k: v for k, v in content.items() if k not in ("body", "attachments")}
    out["attachments"] = [
        {"name": a["name"], "media_type": a["media_type"], "size": len(a["data"]) * 3 // 4}
        for a in content.get("attachments", [])
    ]
    return out


def search_text_of(content: Mapping[str, Any]) -> str:
    """What a search matches (`bulletins.search_text`): title, text, kind and every indicator,
    case-folded, one per line, without NUL characters: a bulletin's strings may hold them (JSON
    escapes them in the stored content), but a PostgreSQL text column cannot, and no search
    looks for one."""
    indicators = content.get("indicators", {})
    parts = [content.get("title", ""), content.get("body", ""), content.get("kind", "")]
    parts += [str(v) for key in sorted(indicators) for v in indicators[key]]
    return "\n".join(parts).casefold().replace("\x00", "")


_INDICATORS = tuple(Indicators.model_fields)  # read once: pydantic's class attribute costs µs a time
_HEAD = b'{"attachments":'
_BODY = b',"body":'
# `_summary_from_payload` cuts the payload after its first two members in canonical (sorted) order:
# a member added to the bulletin that sorted between them would be dropped from every summary.
if sorted(Bulletin.model_fields)[:2] != ["attachments", "body"]:  # pragma: no cover - a change to Bulletin
    raise RuntimeError("a bulletin's payload no longer begins with attachments and body: see _summary_from_payload")


def _derived(bulletin: Bulletin) -> dict[str, str]:
    """`summary_of` and `search_text_of` the bulletin's content, made without copying the attachments
    and, most of the time, without writing its members again (`_summary_from_payload`)."""
    attachments = [{"name": a.name, "media_type": a.media_type, "size": a.size} for a in bulletin.attachments]
    summary = _summary_from_payload(bulletin.payload_bytes, bulletin.body, attachments)
    if summary is None:
        members = bulletin.model_dump(mode="json", exclude={"handling", "body", "attachments"})
        summary = canonical_json({**members, "attachments": attachments})
    indicators = {name: getattr(bulletin.indicators, name) for name in _INDICATORS}
    content = {"title": bulletin.title, "body": bulletin.body, "kind": bulletin.kind, "indicators": indicators}
    return {"summary": summary.decode(), "search_text": search_text_of(content)}


def _summary_from_payload(payload: bytes, body: str, attachments: list[dict[str, Any]]) -> bytes | None:
    """The summary's canonical JSON cut from the payload's, or None if the payload is not laid out
    as expected (then the caller writes it whole).

    The payload is the canonical JSON of an object whose members are sorted: "attachments" first,
    "body" next, then the others. The summary is the same object with the attachments replaced and
    no body, so its canonical JSON is `{"attachments":` + the new attachments + what follows the
    body's value. The first `,"body":` is the top-level member: inside a JSON string a quote is
    always escaped, so a comma and a quote never meet there, and an attachment has no "body".
    """
    value = canonical_json(body)
    start = payload.find(_BODY)
    end = start + len(_BODY) + len(value)
    if not payload.startswith(_HEAD) or start < 0 or payload[start + len(_BODY) : end] != value:
        return None
    if payload[end : end + 1] != b",":  # the body is the last member: never, expires and others follow
        return None
    return _HEAD + canonical_json(attachments) + payload[end:]


def bulletin_row(env: Envelope, bid: str, bulletin: Bulletin, now: str) -> dict[str, Any]:
    """A stored bulletin: its envelope as received, its decrypted content for local readers, and
    what listings and searches read instead of the content."""
    wire = envelope_bytes(env)
    readers = (r.node for r in env.header.recipients)
    return header_row(env.header, bid, wire, bulletin.payload_bytes.decode(), _derived(bulletin), now, readers)


def posted_row(built: BuiltEnvelope, content: str, now: str, bulletin: Bulletin | None = None) -> dict[str, Any]:
    """A bulletin this node wrote: the envelope bytes it built, and `content`, the text of the
    canonical payload it encrypted (`Bulletin.payload_bytes`, decoded); `bulletin`, when given,
    spares parsing `content` again for the summary and search text."""
    if bulletin is not None:
        derived = _derived(bulletin)
    else:
        parsed = json.loads(content)
        derived = {"summary": canonical_json(summary_of(parsed)).decode(), "search_text": search_text_of(parsed)}
    readers = (r.node for r in built.header.recipients)
    return header_row(built.header, built.id, built.wire, content, derived, now, readers)


def header_row(
    h: EnvelopeHeader | EnvelopeHeaderV2,
    bid: str,
    wire: bytes | bytearray,
    content: str,
    derived: Mapping[str, str],
    now: str,
    readers: Iterable[str],
) -> dict[str, Any]:
    """A stored bulletin's row, envelope v1 or v2 (whose readers are its epoch's)."""
    return {
        "id": bid,
        "channel": h.channel,
        "author": h.author,
        "seq": h.seq,
        "state_pos": h.state.pos,
        "tlp": h.handling.tlp,
        "created": h.created,
        "stored_at": now,
        "envelope": wire,
        # " a b c ": the recipient node ids, so catch-up pages are filtered in SQL
        "recipients": " " + " ".join(readers) + " ",
        "content": content,
        **derived,
    }


def receipt_row(receipt: Receipt | StoredReceipt, batch: int | None = None) -> dict[str, Any]:
    """A stored signed receipt, kept in its canonical form; or, a leaf of a batch taken in the batch
    form, as its batch's row id (`batch`, the receipt_batches row of `receipt.batch`) and index."""
    held = receipt if isinstance(receipt, StoredReceipt) else stored(receipt)
    leaf = batch is not None and held.batch is not None
    return {
        "bulletin_id": held.bulletin,
        "node": held.node,
        "status": held.status,
        "at": held.at,
        "receipt": "" if leaf else held.text,
        "batch": batch if leaf else None,
        "idx": held.index if leaf else None,
    }
