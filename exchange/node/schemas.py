"""The component schemas of the node's OpenAPI document: taken from the pydantic models and the
service's views where they are typed, written out where the service answers with plain JSON."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from exchange.audit.witness import MAX_PROOF
from exchange.model import Acceptance, Bulletin, ChannelEvent, Envelope, Receipt
from exchange.node.bodies import (
    MAX_BATCH,
    Assignment,
    ExportRule,
    Forward,
    NewChannel,
    NewWebhook,
    NodeOnly,
    NodeRights,
)
from exchange.protocol.epoch_model import EnvelopeV2, EpochRecord, HistoryGrant
from exchange.protocol.epoch_support import EpochSupport
from exchange.service.batch import MAX_ITEMS as MAX_BATCH_ITEMS
from exchange.service.ids import Matches
from exchange.service.listing import LinePage
from exchange.service.outbox import PeerStatus
from exchange.service.rfis import RfiBoard
from exchange.service.views import BulletinSummary, BulletinView, Posted
from exchange.service.webhooks import Registered, Webhook

REF = "#/components/schemas/{model}"
B64 = {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"}
HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{1,62}$"}
NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=name)}


def closed(required: Iterable[str], /, **properties: Any) -> dict[str, Any]:
    """A JSON object schema with these members, and no others."""
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def array(items: dict[str, Any], max_items: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": items}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


# Unicode's White_Space, which pydantic's strip_whitespace (Rust's str::trim) takes off both ends.
WHITE_SPACE = "".join(f"\\u{c:04x}" for c in [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)])
WHITE_SPACE += "".join(f"\\u{c:04x}" for c in (0x2028, 0x2029, 0x202F, 0x205F, 0x3000))
NOT_BLANK = f"[^{WHITE_SPACE}]"


class _Schemas(GenerateJsonSchema):
    """Pydantic's JSON schemas, saying what the models check that their keywords alone would not."""

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        json_schema = super().str_schema(schema)
        if schema.get("strip_whitespace") and schema.get("min_length") and "pattern" not in json_schema:
            json_schema["pattern"] = NOT_BLANK  # stripped first, so blank text is empty text
        return json_schema


def _from_types(schemas: dict[str, Any], types: dict[str, Any]) -> None:
    """Add the JSON schema of each pydantic model, dataclass or TypedDict, and of what it refers to."""
    for name, type_ in types.items():
        schema = TypeAdapter(type_).json_schema(ref_template=REF, schema_generator=_Schemas)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema


DATE_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"  # exchange.model.IsoDate, checked on the calendar


def _mark_dates(node: Any) -> None:
    """Say `format: date` where the models take a date, which they check on the calendar."""
    if isinstance(node, dict):
        if node.get("pattern") == DATE_PATTERN:
            node["format"] = "date"
        for value in node.values():
            _mark_dates(value)
    elif isinstance(node, list):
        for value in node:
            _mark_dates(value)


def components() -> dict[str, Any]:
    """Every schema the document refers to, by name."""
    schemas: dict[str, Any] = {}
    _from_types(
        schemas,
        {
            "Bulletin": Bulletin,
            "Envelope": Envelope,
            "EnvelopeV2": EnvelopeV2,
            "EpochRecord": EpochRecord,
            "HistoryGrant": HistoryGrant,
            "EpochSupport": EpochSupport,
            "Receipt": Receipt,
            "ChannelEvent": ChannelEvent,
            "Acceptance": Acceptance,
            "NewChannel": NewChannel,
            "NodeRights": NodeRights,
            "NodeOnly": NodeOnly,
            "ExportRule": ExportRule,
            "Assignment": Assignment,
            "Forward": Forward,
            "Posted": Posted,
            "BulletinSummary": BulletinSummary,
            "BulletinView": BulletinView,
            "PeerStatus": PeerStatus,
            "Matches": Matches,
            "LinePage": LinePage,
            "RfiBoard": RfiBoard,
            "Webhook": Webhook,
            "RegisteredWebhook": Registered,
            "NewWebhook": NewWebhook,
        },
    )
    _mark_dates(schemas)
    # What the API takes differs from the wire model where the server fills a member in.
    new_bulletin = copy.deepcopy(schemas["Bulletin"])
    new_bulletin["title"] = "NewBulletin"
    new_bulletin["required"] = [r for r in new_bulletin["required"] if r != "handling"]
    new_bulletin["properties"]["handling"]["description"] = "Left out: the channel's default handling."
    schemas["NewBulletin"] = new_bulletin
    many = array(ref("NewBulletin"), MAX_BATCH_ITEMS)
    many["minItems"] = 1
    schemas["NewBulletins"] = closed(["bulletins"], bulletins=many)
    item = closed(
        ["index", "status"],
        index={"type": "integer", "minimum": 0},
        status={"type": "integer"},
        posted=ref("Posted"),
        error={"type": "string"},
        detail={"type": "string"},
    )
    schemas["BatchPosted"] = closed(
        ["posted", "refused", "items"],
        posted={"type": "integer", "minimum": 0},
        refused={"type": "integer", "minimum": 0},
        items=array(item, MAX_BATCH_ITEMS),
    )
    new_channel = schemas["NewChannel"]
    new_channel["required"] = [r for r in new_channel["required"] if r != "type"]
    view = schemas["BulletinView"]["properties"]
    view["bulletin"] = ref("Bulletin")
    view["receipts"] = array(ref("Receipt"))

    schemas["Problem"] = {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["type", "title", "status", "detail"],
    }
    rights = {"type": "array", "items": {"type": "string", "enum": ["read", "post", "admin"]}}
    channel = {
        "id": ID,
        "title": {"type": "string"},
        "purpose": {"type": "string"},
        "owner": ID,
        "pos": {"type": "integer", "minimum": 0},
        "hash": HEX64,
        "agencies": {"type": "array", "items": {"type": "string"}},
        "default_handling": ref("Handling"),
        "ends": {"type": ["string", "null"]},
        "closed": {"type": "boolean"},
        "members": {"type": "object", "additionalProperties": rights},
        "invited": {"type": "object", "additionalProperties": rights},
        "history_grants": {"type": "array", "items": ID},
        "export_amber_strict": {"type": "boolean"},
    }
    schemas["Channel"] = closed(channel, **channel)
    schemas["WhoAmI"] = closed(
        ["user", "role", "channels", "node"],
        user={"type": "string"},
        role={"type": "string", "enum": ["contact-point", "auditor", "admin", "feed"]},
        channels={"type": "array", "items": ID},
        node=ID,
    )
    schemas["AssignmentDone"] = closed(
        ["user", "channel", "assigned"], user={"type": "string"}, channel=ID, assigned={"type": "boolean"}
    )
    schemas["BulletinPage"] = closed(["items", "next"], items=array(ref("BulletinSummary")), next=NULLABLE_INT)
    entry = {"type": "object", "description": "An audit entry as the log holds it (docs/audit.md)"}
    schemas["AuditEntries"] = closed(["entries"], entries=array(entry))
    schemas["AuditLogPage"] = closed(
        ["entries", "next", "size"], entries=array(entry), next=NULLABLE_INT, size={"type": "integer"}
    )
    checkpoint = {
        "size": {"type": "integer", "minimum": 0},
        "root": B64,
        "signed_at": {"type": "string"},
        "witnesses": {"type": "array", "items": {"type": "string"}},
        "note": {"type": "string", "description": "the C2SP signed note, with its cosignature lines"},
    }
    schemas["Checkpoint"] = closed(checkpoint, **checkpoint)
    schemas["SignedCheckpoint"] = closed(
        checkpoint,
        **checkpoint,
        witnessing={
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "what each witness asked answered",
        },
    )
    schemas["InclusionProof"] = closed(
        ["index", "size", "entry", "leaf_hash", "proof", "checkpoint"],
        index={"type": "integer"},
        size={"type": "integer"},
        entry={"type": "string"},
        leaf_hash=B64,
        proof=array(B64),
        checkpoint={"type": "string"},
    )
    schemas["ConsistencyProof"] = closed(
        ["from", "to", "proof", "checkpoint"],
        **{"from": {"type": "integer"}},
        to={"type": "integer"},
        proof=array(B64),
        checkpoint={"type": "string"},
    )
    schemas["Trace"] = closed(
        ["bulletin", "header", "evidence"],
        bulletin=HEX64,
        header=closed(
            ["channel", "author", "seq", "created", "tlp", "recipients"],
            channel=ID,
            author=ID,
            seq={"type": "integer"},
            created={"type": "string"},
            tlp={"type": "string"},
            recipients={"type": "array", "items": ID},
        ),
        evidence=array(
            {
                "description": "one node's evidence, or why it gave none",
                "anyOf": [
                    ref("Evidence"),
                    closed(["node", "error"], node=ID, error={"type": "string"}),
                ],
            }
        ),
    )
    schemas["Witnessed"] = closed(
        ["logs", "split_views", "c2sp_logs"],
        c2sp_logs=array(
            closed(
                ["origin", "size", "root", "at", "note"],
                origin={"type": "string", "description": "a foreign C2SP log this node co-signs (docs/audit.md, 4)"},
                size={"type": "integer"},
                root=B64,
                at={"type": "string"},
                note={"type": "string"},
            )
        ),
        logs=array(
            closed(
                ["node", "size", "root", "at", "note"],
                node=ID,
                size={"type": "integer"},
                root=B64,
                at={"type": "string"},
                note={"type": "string"},
            )
        ),
        split_views=array(
            closed(
                ["node", "at", "detail", "seen", "shown"],
                node=ID,
                at={"type": "string"},
                detail={"type": "string"},
                seen={"type": "string"},
                shown={"type": "string"},
            )
        ),
    )
    # exchange.audit.keeper.EvidenceJSON (a typing.TypedDict, which pydantic reads only from 3.12)
    schemas["Evidence"] = closed(
        ["node", "checkpoint", "entries"],
        node=ID,
        checkpoint={"type": ["string", "null"]},
        size={"type": "integer", "description": "absent when the log has no checkpoint yet"},
        entries=array(
            closed(["idx", "entry", "proof"], idx={"type": "integer"}, entry={"type": "string"}, proof=array(B64))
        ),
    )
    # -- federation
    batch = {
        "events": array(ref("ChannelEvent"), MAX_BATCH),
        "envelopes": array({"anyOf": [ref("Envelope"), ref("EnvelopeV2")]}, MAX_BATCH),
        "receipts": array(ref("Receipt"), MAX_BATCH),
    }
    schemas["Transaction"] = {
        **closed(["txn", "envelopes"], txn={"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, **batch),
        "description": "channel events, then envelopes, then pushed receipts; at least one item",
        "anyOf": [{"properties": {k: {"minItems": 1}}, "required": [k]} for k in batch],
    }
    statement_members = ("v", "node", "status", "at", "signer", "size", "root")
    schemas["ReceiptBatch"] = {
        **closed(
            ["statement", "signature", "bulletins"],
            statement=closed(statement_members, **{m: {} for m in statement_members}),
            signature=B64,
            bulletins=array(HEX64),
        ),
        "description": "a whole v2 receipt batch in the batch form (protocol 10.4): the signed statement, "
        "its signature, the bulletin ids in leaf order",
    }
    schemas["TransactionReceipts"] = closed(
        ["txn", "receipts"],
        txn={"type": "string"},
        receipts=array(ref("Receipt")),
        batches={**array(ref("ReceiptBatch")), "description": "only to a request with Exchange-Receipt-Form: batches"},
    )
    schemas["ChannelEvents"] = closed(["events"], events=array(ref("ChannelEvent")))
    schemas["EpochPage"] = closed(
        ["epochs", "more", "grants", "support"],
        epochs=array(ref("EpochRecord")),
        more={"type": "boolean"},
        grants=array(ref("HistoryGrant")),
        support=array(ref("EpochSupport")),
    )
    schemas["EnvelopePage"] = closed(
        ["items", "next", "more"],
        items=array(
            closed(
                ["n", "id", "author", "seq", "envelope"],
                n={"type": "integer"},
                id=HEX64,
                author=ID,
                seq={"type": "integer"},
                envelope={
                    "anyOf": [ref("Envelope"), ref("EnvelopeV2"), {"type": "null"}],
                    "description": "null: not for you",
                },
            )
        ),
        next={"type": "integer"},
        more={"type": "boolean"},
    )
    schemas["WitnessCheckpoint"] = closed(
        ["checkpoint", "proof"], checkpoint={"type": ["string", "null"]}, proof=array(B64)
    )
    schemas["CosignRequest"] = closed(
        ["checkpoint"],
        checkpoint={"type": "string"},
        old_size={"type": "integer", "minimum": 0},
        proof=array(B64, MAX_PROOF),
    )
    schemas["CosignAnswer"] = {
        "oneOf": [
            closed(
                ["status", "cosignature"],
                status={"type": "string", "const": "cosigned"},
                cosignature={"type": "string"},
            ),
            closed(["status", "size"], status={"type": "string", "const": "stale"}, size={"type": "integer"}),
        ]
    }
    schemas["Cosignature"] = closed(["size", "cosignature"], size={"type": "integer"}, cosignature={"type": "string"})
    schemas["Stored"] = closed(["stored"], stored={"type": "boolean", "const": True})
    return schemas
