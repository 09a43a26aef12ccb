"""The bounds and date rules of docs/protocol.md (2.3, 2.6, 2.7) on real nodes over mutual TLS,
on SQLite and PostgreSQL: each refusal is 422 problem+json and nothing is stored or signed."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from exchange.crypto import canonical_json
from exchange.keystore import read_file
from exchange.model import Bulletin
from exchange.node.tls import client_context
from exchange.protocol.signing import sign
from tests.conftest import Federation, MakeFederation, Member, authored

POSTS = "/api/v1/channels/c2c/bulletins"
BULLETIN = {"kind": "alert", "title": "Undeclared cash in cargo", "body": "Flights via DXB."}
HUGE = "9" * 5000  # past Python's 4,300-digit limit on int()


@pytest.fixture
async def fed(make_federation: MakeFederation) -> Federation:
    return await make_federation()


def refused(status: int, body: Any, content_type: str) -> str:
    """The detail of a 422 problem+json answer (InvalidInput or one of its subclasses)."""
    assert (status, content_type) == (422, "application/problem+json"), body
    assert body["type"].startswith("urn:exchange:error:")
    return str(body["detail"])


async def raw_post(member: Member, path: str, data: bytes) -> tuple[int, Any, str]:
    """POST bytes as they are to the client API as the officer (Member.api JSON-encodes its body)."""
    ctx = client_context(read_file(member.config.keys_dir / "tls.crt").decode())
    headers = {"Authorization": f"Bearer {member.tokens['officer']}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(member.config.endpoint + path, data=io.BytesIO(data), headers=headers) as resp,
    ):
        raw = await resp.read()
        return resp.status, json.loads(raw), resp.content_type


async def stored(member: Member) -> list[Any]:
    status, body, _ = await member.api("GET", "/api/v1/bulletins")
    assert status == 200
    return list(body["items"])


async def test_a_channel_ending_off_the_calendar_is_refused_unsigned(fed: Federation) -> None:
    nl = fed.members["nl-customs"]
    spec = {"id": "op-x", "title": "Operation X", "policy": {"agencies": ["customs"]}}
    spec["default_handling"] = {"tlp": "GREEN"}
    before = [s.channel for s in nl.service.channels.all()]
    for ends in ("2025-02-30", "3004-42-81", "2025-13-01", "\u0662\u0660\u0662\u0665-\u0660\u0661-\u0660\u0661"):
        detail = refused(*await nl.api("POST", "/api/v1/channels", user="admin", body={**spec, "ends": ends}))
        assert "ends" in detail
    assert [s.channel for s in nl.service.channels.all()] == before
    status, _, _ = await nl.api("GET", "/api/v1/channels/op-x", user="admin")
    assert status == 404
    status, body, _ = await nl.api("POST", "/api/v1/channels", user="admin", body={**spec, "ends": "2028-02-29"})
    assert status == 201, body
    assert nl.service.channels.state("op-x").ends == "2028-02-29"


async def test_a_bulletin_expiring_off_the_calendar_is_refused(fed: Federation) -> None:
    nl = fed.members["nl-customs"]
    for expires in ("3004-42-81", "2025-02-30"):
        assert "expires" in refused(*await nl.api("POST", POSTS, body={**BULLETIN, "expires": expires}))
    assert await stored(nl) == []
    status, body, _ = await nl.api("POST", POSTS, body={**BULLETIN, "expires": "2028-02-29"})
    assert status == 201, body
    assert len(await stored(nl)) == 1


async def test_a_huge_integer_is_422_on_both_apis(fed: Federation) -> None:
    nl, ke = fed.members["nl-customs"], fed.members["ke-customs"]
    body = f'{{"kind": "alert", "title": "t", "seq": {HUGE}}}'.encode()
    detail = refused(*await raw_post(nl, POSTS, body))
    assert "integers are limited" in detail
    detail = refused(*await nl.fed_post(ke, f'{{"txn": "t", "envelopes": [{HUGE}]}}'.encode()))
    assert "integers are limited" in detail
    assert await stored(nl) == []


async def test_a_post_with_a_million_invalid_airports_is_refused(fed: Federation) -> None:
    nl = fed.members["nl-customs"]
    hostile = {**BULLETIN, "indicators": {"airports": ["xx"] * 800_000}}  # 4 MB, under the route's limit
    assert "too many JSON values" in refused(*await raw_post(nl, POSTS, canonical_json(hostile)))
    over = {**BULLETIN, "indicators": {"airports": ["NBO"] * 501}}
    assert "at most 500" in refused(*await nl.api("POST", POSTS, body=over))
    assert await stored(nl) == []


async def test_an_envelope_with_a_million_invalid_wraps_is_refused(fed: Federation) -> None:
    nl, ke = fed.members["nl-customs"], fed.members["ke-customs"]
    env = authored(ke, Bulletin.model_validate({**BULLETIN, "handling": {"tlp": "AMBER"}})).model_dump(mode="json")
    for wraps, why in ((["!!"] * 1_000_000, "too many JSON values"), ([env["wraps"][0]] * 1001, "at most 1000")):
        body = canonical_json({"txn": "t", "envelopes": [{**env, "wraps": wraps}]})
        assert why in refused(*await nl.fed_post(ke, body))
    assert await stored(nl) == []


async def test_a_sequence_number_past_int32_is_refused(fed: Federation) -> None:
    """A member's envelope with seq 2^31 (it was a 500 on PostgreSQL, whose column is int4)."""
    nl, ke = fed.members["nl-customs"], fed.members["ke-customs"]
    env = authored(ke, Bulletin.model_validate({**BULLETIN, "handling": {"tlp": "AMBER"}})).model_dump(mode="json")
    env["header"]["seq"] = 2**31
    assert "seq" in refused(*await nl.fed_post(ke, canonical_json({"txn": "t", "envelopes": [env]})))
    assert await stored(nl) == []


async def test_a_partners_event_off_the_calendar_is_refused(fed: Federation) -> None:
    """A channel event correctly signed by its owner, but with `ends` = 2025-02-30."""
    nl, ke = fed.members["nl-customs"], fed.members["ke-customs"]
    event: dict[str, Any] = {
        "v": 1,
        "channel": "ke-op",
        "owner": "ke-customs",
        "pos": 0,
        "prev": None,
        "at": "2025-03-14T09:26:53.589Z",
        "change": {
            "type": "create",
            "title": "KE operation",
            "purpose": "",
            "policy": {"agencies": ["customs"]},
            "default_handling": {"tlp": "GREEN", "no_onward_sharing": False},
            "ends": "2025-02-30",
        },
        "signer": ke.service.keys.signing.kid,
    }
    event["signature"] = sign("channel-event", event, ke.service.keys.signing)
    body = canonical_json({"txn": "t", "events": [event], "envelopes": []})
    assert "ends" in refused(*await nl.fed_post(ke, body))
    assert "ke-op" not in [s.channel for s in nl.service.channels.all()]
