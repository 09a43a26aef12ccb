"""A bulletin as STIX 2.1 objects (docs/stix.md): the mapping TAXII and the exports serve.

Pure: no I/O, no clock. Every id is computed from the bulletin id (and the node or channel it
names), so reading the same bulletin again gives the same objects, byte for byte.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# -- OASIS TLP 2.0 (STIX 2.1 extension "tlp-2.0", oasis-open/cti-stix-common-objects) -----------------
# The marking-definition objects exactly as OASIS publishes them: same ids, members and values.

TLP_EXTENSION: Final = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP_IDS: Final[dict[str, str]] = {
    "CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "AMBER+STRICT": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "RED": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}


def tlp_marking(tlp: str) -> dict[str, Any]:
    """The OASIS TLP 2.0 marking-definition object of a TLP label ("CLEAR" ... "RED")."""
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP_IDS[tlp],
        "created": "2022-10-01T00:00:00.000Z",
        "name": f"TLP:{tlp}",
        "extensions": {TLP_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": tlp.lower()}},
    }


# -- this project's extension: the cargo and travel facts STIX has no object for -----------------------

EPOCH: Final = "2026-01-01T00:00:00.000Z"  # created/modified of the objects that do not change
EXCHANGE_IDENTITY: Final = "identity--5c0fb3cb-2a10-4a43-8a47-3d6c5c8f1a01"
EXCHANGE_EXTENSION: Final = "extension-definition--8d3e7a52-6b0e-4e55-9f61-1f4a2c7b9e11"
EXTENSION_SCHEMA: Final = 'the exchange project\'s docs/stix.md, section "The extension"'
EXTENSION_VERSION: Final = "1.0.0"
# Observable types of the extension, named in the indicators' STIX patterns (docs/stix.md).
AWB: Final = "x-exchange-air-waybill"
HS: Final = "x-exchange-hs-code"
FLIGHT: Final = "x-exchange-flight"


def exchange_identity() -> dict[str, Any]:
    """The identity that defines this project's extension."""
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": EXCHANGE_IDENTITY,
        "created": EPOCH,
        "modified": EPOCH,
        "name": "exchange: federated customs and aviation-security bulletins",
        "identity_class": "system",
        "object_marking_refs": [TLP_IDS["CLEAR"]],
    }


def exchange_extension() -> dict[str, Any]:
    """The extension-definition of the cargo facts (property-extension on reports) and of the three
    observable types the indicators' patterns name (new-sco)."""
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": EXCHANGE_EXTENSION,
        "created_by_ref": EXCHANGE_IDENTITY,
        "created": EPOCH,
        "modified": EPOCH,
        "name": "exchange bulletin facts",
        "description": (
            "Air waybills (IATA AWB 'nnn-nnnnnnnn'), Harmonized System codes, flight numbers (IATA), "
            "airports (IATA codes) and free-text risk indicators of an exchange bulletin, and the "
            f"observable types {AWB} (value), {HS} (value) and {FLIGHT} (value) its indicators' patterns name."
        ),
        "schema": EXTENSION_SCHEMA,
        "version": EXTENSION_VERSION,
        "extension_types": ["property-extension", "new-sco"],
        "object_marking_refs": [TLP_IDS["CLEAR"]],
    }


# -- ids ------------------------------------------------------------------------------------------------


def object_uuid(bid: str, role: str, value: str = "") -> str:
    """A deterministic, name-based UUID (version 5 form, RFC 4122 variant) whose first 48 bits are
    the bulletin id's, so that `objects/{id}` finds its bulletin with one index seek
    (`bulletin_prefix`); the other bits are SHA-256 of the bulletin id, the object's role and value
    (not SHA-1 of a namespace and name as RFC 4122's version 5: then no id would lead back to its
    bulletin without a table of them)."""
    tail = hashlib.sha256(f"{bid}\x00{role}\x00{value}".encode()).digest()
    raw = bytearray(bytes.fromhex(bid[:12]) + tail[:10])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def bulletin_prefix(stix_id: str) -> str | None:
    """The first 12 hex digits of the bulletin id a bulletin object's id was made from, or None."""
    _, sep, tail = stix_id.partition("--")
    try:
        parsed = uuid.UUID(tail)
    except ValueError:
        return None
    if not sep or parsed.version != 5:
        return None
    return parsed.hex[:12]


def node_identity_id(node: str) -> str:
    """The identity of a member node (the author of its bulletins): the same for all its bulletins."""
    return "identity--" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:exchange:node:{node}"))


def collection_id(node: str, channel: str) -> str:
    """The TAXII collection of a channel at a node: a UUIDv4-form id made from both, stable across restarts."""
    digest = hashlib.sha256(f"urn:exchange:taxii-collection:{node}:{channel}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


# -- the mapping ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BulletinFacts:
    """What the mapping reads of a stored bulletin: its header's facts and its content (without the
    attachments' data)."""

    id: str
    channel: str
    author: str
    author_name: str
    tlp: str
    created: str
    content: Mapping[str, Any]


def node_identity(node: str, name: str) -> dict[str, Any]:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": node_identity_id(node),
        "created": EPOCH,
        "modified": EPOCH,
        "name": name,
        "identity_class": "organization",
        "description": f"exchange node {node}",
        "object_marking_refs": [TLP_IDS["CLEAR"]],
    }


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def bulletin_objects(b: BulletinFacts) -> list[dict[str, Any]]:
    """The STIX objects of one bulletin, in a fixed order: the report first, then (feedback and
    requests for information) its note, its indicators, companies and airports, and the shared
    objects they refer to (author identity, TLP marking, this project's extension)."""
    c = b.content
    ind: Mapping[str, Sequence[str]] = c.get("indicators", {})
    marking = [TLP_IDS[b.tlp]]
    author = node_identity_id(b.author)

    def common(kind: str, role: str, value: str = "") -> dict[str, Any]:
        return {
            "type": kind,
            "spec_version": "2.1",
            "id": f"{kind}--{object_uuid(b.id, role, value)}",
            "created_by_ref": author,
            "created": b.created,
            "modified": b.created,
            "object_marking_refs": marking,
        }

    parts: list[dict[str, Any]] = []
    for kind, values, label in (
        (AWB, "air_waybills", "air waybill"),
        (HS, "hs_codes", "HS code"),
        (FLIGHT, "flights", "flight"),
    ):
        for value in ind.get(values, []):
            parts.append(
                common("indicator", values, value)
                | {
                    "name": f"{label} {value}",
                    "description": f"{label} {value} named in bulletin {b.id}",
                    "indicator_types": ["anomalous-activity"],
                    "pattern": f"[{kind}:value = {_quoted(value)}]",
                    "pattern_type": "stix",
                    "pattern_version": "2.1",
                    "valid_from": b.created,
                }
            )
    for company in ind.get("companies", []):
        parts.append(common("identity", "company", company) | {"name": company, "identity_class": "organization"})
    for airport in ind.get("airports", []):
        parts.append(
            common("location", "airport", airport)
            | {"name": airport, "description": f"IATA airport {airport}", "region": "unknown"}
        )
    note: list[dict[str, Any]] = []
    report_id = f"report--{object_uuid(b.id, 'report')}"
    if c.get("kind") in ("feedback", "request-for-information"):
        about = [f"report--{object_uuid(ref, 'report')}" for ref in c.get("references", [])] or [report_id]
        note.append(
            common("note", "note")
            | {
                "abstract": f"{c['kind']}: {c.get('title', '')}",
                "content": c.get("body") or c.get("title", ""),
                "object_refs": about,
            }
        )
    facts = {
        key: list(ind[key])
        for key in ("air_waybills", "hs_codes", "flights", "airports", "risk_indicators")
        if ind.get(key)
    }
    report = common("report", "report") | {
        "name": c.get("title", ""),
        "description": c.get("body", ""),
        "report_types": [c.get("kind", "threat-report")],
        "published": b.created,
        "lang": c.get("language", "en"),
        "object_refs": [o["id"] for o in note + parts] or [author],
        "external_references": [
            {"source_name": "exchange", "external_id": b.id, "description": f"bulletin in channel {b.channel}"},
            *(
                {"source_name": "exchange", "external_id": ref, "description": "referenced bulletin"}
                for ref in c.get("references", [])
            ),
        ],
        "extensions": {EXCHANGE_EXTENSION: {"extension_type": "property-extension", **facts}},
    }
    if c.get("expires"):
        report["labels"] = [f"expires:{c['expires']}"]
    shared = [node_identity(b.author, b.author_name), tlp_marking(b.tlp), exchange_identity(), exchange_extension()]
    if b.tlp != "CLEAR":
        shared.append(tlp_marking("CLEAR"))  # the shared objects' own marking
    return [report, *note, *parts, *shared]


def bundle(objects: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """A STIX bundle of `objects`, its id made from `name` (deterministic, like the objects')."""
    return {
        "type": "bundle",
        "id": "bundle--" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:exchange:bundle:{name}")),
        "objects": list(objects),
    }
