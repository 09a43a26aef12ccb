"""The bulletin -> STIX 2.1 mapping (exchange.protocol.stix, docs/stix.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stix2
import stix2validator

from exchange.protocol.stix import (
    TLP_IDS,
    BulletinFacts,
    bulletin_objects,
    bulletin_prefix,
    bundle,
    collection_id,
    object_uuid,
    tlp_marking,
)

# The TLP 2.0 marking-definition objects as OASIS publishes them (oasis-open/cti-stix-common-objects,
# extension-definition-specifications/tlp-2.0, and the STIX 2.1 TLP 2.0 extension note).
PUBLISHED = {
    level: {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": marking,
        "created": "2022-10-01T00:00:00.000Z",
        "name": f"TLP:{level}",
        "extensions": {
            "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
                "extension_type": "property-extension",
                "tlp_2_0": level.lower(),
            }
        },
    }
    for level, marking in {
        "CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        "GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        "AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        "AMBER+STRICT": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        "RED": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
    }.items()
}
BID = "ab" * 32
REFERRED = "cd" * 32


def facts(**content: Any) -> BulletinFacts:
    base = {
        "kind": "alert",
        "title": "Undervalued phones via AMS",
        "body": "Text.",
        "language": "en",
        "references": [],
        "indicators": {
            "air_waybills": ["176-12345675"],
            "hs_codes": ["8517.12"],
            "flights": ["KL1234"],
            "airports": ["AMS"],
            "companies": ["ACME B.V."],
            "risk_indicators": ["undervalued"],
        },
        "attachments": [{"name": "scan.pdf", "media_type": "application/pdf", "size": 10}],
    }
    return BulletinFacts(
        BID,
        "c2c",
        "nl-customs",
        "NL Customs",
        content.pop("tlp", "AMBER"),
        "2026-11-30T04:20:44.123Z",
        {**base, **content},
    )


@pytest.mark.parametrize("level", list(PUBLISHED))
def test_tlp_markings_are_the_published_objects(level: str) -> None:
    assert json.dumps(tlp_marking(level), sort_keys=True) == json.dumps(PUBLISHED[level], sort_keys=True)
    assert TLP_IDS[level] == PUBLISHED[level]["id"]


@pytest.mark.parametrize("kind", ["alert", "threat-bulletin", "seizure-report", "feedback", "request-for-information"])
def test_every_object_validates_and_parses(kind: str) -> None:
    objects = bulletin_objects(facts(kind=kind, references=[REFERRED]))
    for obj in objects:
        result = stix2validator.validate_instance(obj)
        assert result.is_valid, [str(e) for e in result.errors]
    parsed = stix2.parse(bundle(objects, BID), allow_custom=True)
    assert len(parsed.objects) == len(objects)


def test_the_mapping() -> None:
    objects = bulletin_objects(facts(kind="feedback", references=[REFERRED]))
    by_type: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_type.setdefault(obj["type"], []).append(obj)
    (report,) = by_type["report"]
    assert report["report_types"] == ["feedback"]
    assert report["external_references"][0] == {
        "source_name": "exchange",
        "external_id": BID,
        "description": "bulletin in channel c2c",
    }
    author = report["created_by_ref"]
    assert any(o["id"] == author and o["name"] == "NL Customs" for o in by_type["identity"])
    (note,) = by_type["note"]
    assert note["object_refs"] == [f"report--{object_uuid(REFERRED, 'report')}"]  # the report it answers
    patterns = sorted(o["pattern"] for o in by_type["indicator"])
    assert patterns == [
        "[x-exchange-air-waybill:value = '176-12345675']",
        "[x-exchange-flight:value = 'KL1234']",
        "[x-exchange-hs-code:value = '8517.12']",
    ]
    assert [o["name"] for o in by_type["location"]] == ["AMS"]
    assert "ACME B.V." in [o["name"] for o in by_type["identity"]]
    (extension,) = report["extensions"].values()
    assert extension["air_waybills"] == ["176-12345675"] and extension["risk_indicators"] == ["undervalued"]
    # every object is marked, the bulletin's own objects with its TLP
    for obj in objects:
        if obj["type"] != "marking-definition":
            assert obj["object_marking_refs"], obj["id"]
    assert report["object_marking_refs"] == [TLP_IDS["AMBER"]]
    # nothing of the attachments
    assert "scan.pdf" not in json.dumps(objects)


def report_author(objects: list[dict[str, Any]]) -> str:
    return str(objects[0]["created_by_ref"])


def test_ids_are_deterministic_and_lead_back_to_the_bulletin() -> None:
    first, again = bulletin_objects(facts()), bulletin_objects(facts())
    assert json.dumps(first) == json.dumps(again)
    other = bulletin_objects(BulletinFacts(**{**facts().__dict__, "id": "ef" * 32}))
    assert {o["id"] for o in first if o["id"].split("--")[1].startswith("abababab")}.isdisjoint(o["id"] for o in other)
    own = [o for o in first if o["id"] != report_author(first) and o["type"] not in ("marking-definition",)]
    for obj in own:
        if obj["id"].startswith(("identity--5c0fb3cb", "extension-definition--")):
            continue  # this project's extension and its identity: constants
        assert bulletin_prefix(obj["id"]) == BID[:12], obj["id"]
    assert bulletin_prefix(first[0]["id"]) == BID[:12]
    assert bulletin_prefix("report--not-a-uuid") is None
    assert (
        collection_id("nl-customs", "c2c") == collection_id("nl-customs", "c2c") != collection_id("nl-customs", "c3c")
    )
