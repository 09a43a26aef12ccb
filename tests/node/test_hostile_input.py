"""Must show 1: a corpus of hostile input against real nodes, on SQLite and PostgreSQL.

Every request of the corpus gets a 4xx problem+json answer (never a 5xx), stores nothing, grows
the audit log by at most one entry, and leaves the node serving: a normal post still goes through
and reaches its partner. Requests are written byte by byte over TLS, so that headers can carry
bytes no HTTP client library would send.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.errors import InvalidEnvelope, PeerError, PeerRefused, StateUnavailable
from exchange.keystore import read_file
from exchange.model import MAX_ATTACHMENT_BYTES, MAX_BODY, Bulletin, NodeId, StateRef
from exchange.node.tls import client_context, peer_context
from exchange.protocol.envelope import build_envelope, envelope_bytes
from exchange.service.channels import ChannelBook
from exchange.service.rejections import MAX_ENTRY_BYTES
from exchange.store import (
    audit_log,
    bulletins,
    channel_events,
    outbox,
    receipts,
    tables as store_tables,
    user_channels,
    users,
)
from tests.conftest import DEFAULT_NODES, Federation, MakeFederation, Member, eventually
from tests.service.lone_node import lone_node

HEX = "0" * 64
REFUSALS = (ev.REQUEST_REJECTED, ev.REQUESTS_REFUSED)
NOTE = {"kind": "alert", "title": "Khat declared as green tea via NBO", "body": "Three consignments."}
# What a refusal must never change: everything but the audit log (which records the refusal).
STATE_TABLES: list[sa.Table] = [bulletins, channel_events, receipts, outbox, users, user_channels]
STATE_TABLES += [
    t
    for t in (getattr(store_tables, "user_reads", None), getattr(store_tables, "idempotency_keys", None))
    if t is not None
]


@dataclass(frozen=True)
class Case:
    """One hostile request: sent as `user` (a bearer token) or as partner `peer` (its certificate)."""

    what: str
    method: str
    path: str
    body: bytes = b""
    user: str | None = "officer"
    peer: bool = False
    headers: dict[str, bytes] = field(default_factory=dict)
    expect: frozenset[int] = frozenset({422})
    chunked: bool = False


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _request(case: Case, token: str | None) -> bytes:
    head = [f"{case.method} {case.path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if token is not None and "Authorization" not in case.headers:
        head.append(b"Authorization: Bearer " + token.encode())
    head += [name.encode() + b": " + value for name, value in case.headers.items()]
    if case.body or case.method in ("POST", "PUT"):
        head.append(b"Content-Type: application/json")
        if case.chunked:
            head.append(b"Transfer-Encoding: chunked")
        else:
            head.append(f"Content-Length: {len(case.body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n"


def _chunks(body: bytes, size: int = 64 * 1024) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


async def send(fed: Federation, case: Case) -> Answer:
    """Send one case to nl-customs over TLS, byte for byte, and read the whole answer."""
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    if case.peer:
        ctx: ssl.SSLContext = peer_context(
            nl.service.fed.node(nl.id), ke.config.keys_dir / "tls.crt", ke.config.keys_dir / "tls.key"
        )
    else:
        ctx = client_context(read_file(nl.config.keys_dir / "tls.crt").decode())
    token = nl.tokens[case.user] if case.user and not case.peer else None
    reader, writer = await asyncio.open_connection(nl.config.host, nl.config.port, ssl=ctx)
    try:
        writer.write(_request(case, token))
        body = _chunks(case.body) if case.chunked else case.body

        async def write_body() -> None:
            # The node may answer 413 and close before it has read a large body: that is the point.
            try:
                for i in range(0, len(body), 256 * 1024):
                    writer.write(body[i : i + 256 * 1024])
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass

        sending = asyncio.create_task(write_body())
        data = await asyncio.wait_for(reader.read(), 30)
        await sending
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    return Answer(int(lines[0].split()[1]), headers, payload)


def _unchunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


async def counts(member: Member) -> dict[str, int]:
    async with member.service.store.read() as conn:
        return {
            t.name: int((await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar_one())
            for t in [*STATE_TABLES, audit_log]
        }


async def delivered(member: Member, bid: str) -> None:
    """Wait until the partner's signed receipt for `bid` is stored: the post has settled."""

    async def receipted() -> bool:
        async with member.service.store.read() as conn:
            query = sa.select(receipts.c.node).where(receipts.c.bulletin_id == bid, receipts.c.node != member.id)
            return (await conn.scalar(query)) is not None

    await eventually(receipted, what=f"a receipt for {bid}")


async def post_works(fed: Federation) -> None:
    """The node is healthy: a normal post is stored and reaches its partner."""
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    status, posted, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body=NOTE)
    assert status == 201, posted

    async def arrived() -> bool:
        async with ke.service.store.read() as conn:
            return (await conn.scalar(sa.select(bulletins.c.id).where(bulletins.c.id == posted["id"]))) is not None

    await eventually(arrived, what="the post at ke-customs")


async def refused(fed: Federation, cases: Sequence[Case]) -> None:
    """Each case is refused with its 4xx as problem+json; nothing is stored; the audit log grows by
    at most one entry a case; the node still serves."""
    nl = fed["nl-customs"]
    before = await counts(nl)
    before_size = before["audit_log"]
    wrong = []
    for case in cases:
        answer = await send(fed, case)
        problem = None
        if answer.headers.get("content-type", "").startswith("application/problem+json"):
            problem = json.loads(answer.body)
        if answer.status not in case.expect or problem is None or problem.get("status") != answer.status:
            wrong.append(f"{case.what}: {answer.status} {answer.headers.get('content-type')} {answer.body[:200]!r}")
    assert not wrong, "\n".join(wrong)
    after = await counts(nl)
    grown = after.pop("audit_log") - before.pop("audit_log")
    assert after == before, "a refused request stored something"
    assert 0 <= grown <= len(cases), f"{len(cases)} refusals wrote {grown} audit entries"
    async with nl.service.store.read() as conn:
        written = (await conn.execute(sa.select(audit_log.c.entry).where(audit_log.c.idx >= before_size))).all()
    refusals = [bytes(r.entry) for r in written if json.loads(r.entry)["event"] in REFUSALS]
    assert all(len(entry) <= MAX_ENTRY_BYTES for entry in refusals), "an audit entry past its bound"
    await post_works(fed)


# -- integers in query parameters -----------------------------------------------------------------

BAD_INTEGERS = {
    "a superscript two": "%C2%B2",
    "Arabic-Indic three": "%D9%A3",
    "a double minus": "--1",
    "a plus sign": "%2B1",
    "a space": "%201",
    "an exponent": "1e3",
    "hexadecimal": "0x10",
    "empty": "",
    "5,000 digits": "9" * 5000,
    "past SQLite's integers": "99999999999999999999",
    "past PostgreSQL's integer": str(2**31),
    "far below": "-99999999999999999999",
}
INTEGER_PARAMETERS = [
    # (path with {} for the value, user or peer, what a legitimate value may be)
    ("/api/v1/bulletins?after={}", "officer"),
    ("/api/v1/bulletins?limit={}", "officer"),
    ("/api/v1/audit/entries?after={}", "auditor"),
    ("/api/v1/audit/entries?limit={}", "auditor"),
    ("/api/v1/audit/log?after={}", "auditor"),
    ("/api/v1/audit/log?limit={}", "auditor"),
    ("/api/v1/audit/proof/inclusion?index={}", "auditor"),
    ("/api/v1/audit/proof/inclusion?index=0&size={}", "auditor"),
    ("/api/v1/audit/proof/consistency?from={}", "auditor"),
    ("/api/v1/audit/proof/consistency?from=1&to={}", "auditor"),
    ("/fed/v1/channels/c2c/events?after={}", None),
    ("/fed/v1/channels/c2c/envelopes?after={}", None),
    ("/fed/v1/channels/c2c/envelopes?limit={}", None),
    ("/fed/v1/channels/c2c/envelopes?author=nl-customs&after_seq={}", None),
    ("/fed/v1/audit/checkpoint?from={}", None),
]
OUT_OF_RANGE = [
    ("/api/v1/bulletins?after=-1", "officer"),
    ("/api/v1/bulletins?limit=0", "officer"),
    ("/api/v1/bulletins?limit=501", "officer"),
    ("/api/v1/audit/entries?after=-2", "auditor"),
    ("/api/v1/audit/entries?limit=-5", "auditor"),
    ("/api/v1/audit/log?limit=1001", "auditor"),
    ("/api/v1/audit/proof/consistency?from=0", "auditor"),
    ("/fed/v1/channels/c2c/events?after=-2", None),
    ("/fed/v1/channels/c2c/envelopes?limit=0", None),
    ("/fed/v1/channels/c2c/envelopes?limit=1001", None),
]


def integer_cases() -> list[Case]:
    cases = [
        Case(f"{path.split('?')[1].format('')} {name}", "GET", path.format(value), user=user, peer=user is None)
        for path, user in INTEGER_PARAMETERS
        for name, value in BAD_INTEGERS.items()
    ]
    cases += [Case(path, "GET", path, user=user, peer=user is None) for path, user in OUT_OF_RANGE]
    return cases


async def test_integer_parameters_are_parsed_strictly_and_bounded(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    await refused(fed, integer_cases())


# -- ids in paths and other query parameters ----------------------------------------------------

BAD_IDS = {
    "a NUL byte": "%00",
    "an undecodable byte": "%FF",
    "a newline": "%0A",
    "upper case": "A" * 64,
    "too long": "a" * 5000,
    "a dot-dot": "..%2F..",
    "a right-to-left override": "c2c%E2%80%AE",
}


def id_cases() -> list[Case]:
    cases = []
    for name, bad in BAD_IDS.items():
        cases += [
            Case(f"bulletin id, {name}", "GET", f"/api/v1/bulletins/{bad}"),
            Case(f"forwarded id, {name}", "POST", f"/api/v1/bulletins/{bad}/forward", b'{"channel":"c2c"}'),
            Case(f"channel, {name}", "GET", f"/api/v1/channels/{bad}", user="admin"),
            Case(f"posting channel, {name}", "POST", f"/api/v1/channels/{bad}/bulletins", json.dumps(NOTE).encode()),
            Case(
                f"assignment channel, {name}",
                "POST",
                f"/api/v1/channels/{bad}/users",
                b'{"user":"officer"}',
                user="admin",
            ),
            Case(f"invite channel, {name}", "POST", f"/api/v1/channels/{bad}/invite", b"{}", user="admin"),
            Case(f"close channel, {name}", "POST", f"/api/v1/channels/{bad}/close", user="admin"),
            Case(f"accept channel, {name}", "POST", f"/api/v1/channels/{bad}/accept", user="admin"),
            Case(f"trace, {name}", "GET", f"/api/v1/audit/trace/{bad}", user="auditor"),
            Case(f"fed events, {name}", "GET", f"/fed/v1/channels/{bad}/events", peer=True),
            Case(f"fed envelopes, {name}", "GET", f"/fed/v1/channels/{bad}/envelopes", peer=True),
            Case(f"fed accept, {name}", "POST", f"/fed/v1/channels/{bad}/accept", b"{}", peer=True),
            Case(f"fed evidence, {name}", "GET", f"/fed/v1/audit/bulletins/{bad}", peer=True),
        ]
    for query in (
        "channel=%00",
        "channel=C2C",
        "channel=" + "a" * 5000,
    ):
        cases.append(Case(f"list, {query[:20]}", "GET", f"/api/v1/bulletins?{query}"))
    for query in ("author=%00", "author=" + "a" * 300, "author=NL"):
        cases.append(Case(f"catch-up, {query[:20]}", "GET", f"/fed/v1/channels/c2c/envelopes?{query}", peer=True))
    for query in (
        "event=%00",
        "channel=%FF",
        "peer=" + "a" * 65,
        "bulletin=XYZ",
        "since=2025-02-30",
        "since=3004-42-81",
        "until=2025-01-01T25:00",
        "until=2025-01-01T10:00%2B99:99",
        "since=yesterday",
    ):
        cases.append(Case(f"audit log, {query[:24]}", "GET", f"/api/v1/audit/log?{query}", user="auditor"))
    cases += [
        Case("export, bad bulletin", "GET", "/api/v1/audit/export?bulletin=%00", user="auditor"),
        Case("checkpoint, witness=maybe", "POST", "/api/v1/audit/checkpoint?witness=maybe", user="auditor"),
    ]
    return cases


async def test_ids_and_text_parameters_are_checked_by_shape_before_any_query(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    await refused(fed, id_cases())


# -- credentials ----------------------------------------------------------------------------------------


async def test_bearer_tokens_with_foreign_bytes_are_unauthorized(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    tokens = {
        "undecodable bytes": b"Bearer \xff\xfe\xfd",
        "Latin-1": "Bearer caf\u00e9".encode("latin-1"),
        "UTF-8": "Bearer caf\u00e9".encode(),
        "a real token with a byte added": b"Bearer " + fed["nl-customs"].tokens["officer"].encode() + b"\x85",
        "no token": b"Bearer",
        "another scheme": b"Basic b2ZmaWNlcjpzZWNyZXQ=",
        "a long token": b"Bearer " + b"A" * 4000,
        "a comma": b"Bearer a,b",
    }
    await refused(
        fed,
        [
            Case(
                f"{route}, {name}", method, route, user=None, headers={"Authorization": value}, expect=frozenset({401})
            )
            for name, value in tokens.items()
            for method, route in (("GET", "/api/v1/whoami"), ("GET", "/api/v1/audit/log"), ("POST", "/api/v1/channels"))
        ],
    )


async def test_hostile_idempotency_keys_are_refused(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    body = json.dumps(NOTE).encode()
    keys = {
        "undecodable bytes": b"\xff\xfe" * 10,
        "too short": b"abc",
        "too long": b"a" * 129,
        "a space inside": b"0123456789 abcdef",
        "an open quote": b'"0123456789abcdef',
    }
    cases = [
        Case(f"{route}, {name}", "POST", route, payload, headers={"Idempotency-Key": key})
        for name, key in keys.items()
        for route, payload in (
            ("/api/v1/channels/c2c/bulletins", body),
            (f"/api/v1/bulletins/{HEX}/forward", b'{"channel":"c2c"}'),
        )
    ]
    await refused(fed, cases)


# -- bodies: per-route limits, hostile JSON ------------------------------------------------------------------


async def test_bodies_are_limited_per_route(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    # The largest legitimate post fits: 2 MiB of attachments and a text of astral characters,
    # which a client may send as \u escapes (12 bytes each).
    data = base64.urlsafe_b64encode(bytes(MAX_ATTACHMENT_BYTES)).rstrip(b"=").decode()
    largest = {
        **NOTE,
        "body": "\U0001f6c3" * MAX_BODY,
        "attachments": [{"name": "scan.bin", "media_type": "application/octet-stream", "data": data}],
    }
    raw = json.dumps(largest).encode()  # ensure_ascii: every astral character as two escapes
    assert len(raw) > 5_000_000
    answer = await send(fed, Case("the largest post", "POST", "/api/v1/channels/c2c/bulletins", raw))
    assert answer.status == 201, answer.body[:300]
    await delivered(fed["nl-customs"], json.loads(answer.body)["id"])
    big = b'{"kind":"alert","title":"x","body":"' + b"a" * (8 * 1024 * 1024) + b'"}'
    small = b'{"node":"' + b"a" * (17 * 1024) + b'"}'
    too_large = frozenset({413})
    cases = [
        Case("an 8 MiB post", "POST", "/api/v1/channels/c2c/bulletins", big, expect=too_large),
        Case("an 8 MiB post, chunked", "POST", "/api/v1/channels/c2c/bulletins", big, expect=too_large, chunked=True),
        Case("a 17 KiB forward", "POST", f"/api/v1/bulletins/{HEX}/forward", small, expect=too_large),
        Case("a 17 KiB invite", "POST", "/api/v1/channels/c2c/invite", small, user="admin", expect=too_large),
        Case("a 17 KiB assignment", "POST", "/api/v1/channels/c2c/users", small, user="admin", expect=too_large),
        Case("a 52 KiB channel", "POST", "/api/v1/channels", small * 3, user="admin", expect=too_large),
        Case("a 17 KiB acceptance", "POST", "/fed/v1/channels/c2c/accept", small, peer=True, expect=too_large),
        Case("a 17 KiB cosign request", "POST", "/fed/v1/audit/cosign", small, peer=True, expect=too_large),
        Case("a 17 KiB cosignature", "POST", "/fed/v1/audit/cosignatures", small, peer=True, expect=too_large),
        Case(
            "a 17 KiB chunked cosignature",
            "POST",
            "/fed/v1/audit/cosignatures",
            small,
            peer=True,
            expect=too_large,
            chunked=True,
        ),
    ]
    await refused(fed, cases)


def json_cases() -> list[Case]:
    post, txn = "/api/v1/channels/c2c/bulletins", "/fed/v1/envelopes"
    digits = b"9" * 5000
    hostile = {
        "a 5,000-digit integer": b'{"kind":"alert","title":"x","seq":' + digits + b"}",
        "an integer past 2^53": b'{"kind":"alert","title":"x","n":9007199254740993}',
        "a float": b'{"kind":"alert","title":"x","n":1.5}',
        "NaN": b'{"kind":"alert","title":"x","n":NaN}',
        "a duplicate key": b'{"kind":"alert","title":"x","title":"y"}',
        "100,000 nested arrays": b"[" * 100_000 + b"]" * 100_000,
        "not UTF-8": b'{"kind":"alert","title":"\xff\xfe"}',
        "a lone surrogate": b'{"kind":"alert","title":"\\ud800"}',
        "truncated": b'{"kind":"alert","title":',
        "empty": b"",
        "a list": b"[]",
        "a string": b'"x"',
        "null": b"null",
        "expires 3004-42-81": json.dumps({**NOTE, "expires": "3004-42-81"}).encode(),
        "expires 2025-02-30": json.dumps({**NOTE, "expires": "2025-02-30"}).encode(),
        "700,000 invalid airports (3.5 MB)": json.dumps({**NOTE, "indicators": {"airports": ["x"] * 700_000}}).encode(),
        "501 valid airports": json.dumps({**NOTE, "indicators": {"airports": ["NBO"] * 501}}).encode(),
        "101 references": json.dumps({**NOTE, "references": [HEX] * 101}).encode(),
        "a title of 201 characters": json.dumps({**NOTE, "title": "x" * 201}).encode(),
        "a blank title": json.dumps({**NOTE, "title": "   "}).encode(),
        "handling null": json.dumps({**NOTE, "handling": None}).encode(),
        "an unknown member": json.dumps({**NOTE, "admin": True}).encode(),
        "an attachment name with a control byte": json.dumps(
            {**NOTE, "attachments": [{"name": "a\x07.pdf", "media_type": "application/pdf", "data": "AA"}]}
        ).encode(),
        "11 attachments": json.dumps(
            {**NOTE, "attachments": [{"name": "a.pdf", "media_type": "application/pdf", "data": "AA"}] * 11}
        ).encode(),
    }
    cases = [Case(f"post, {name}", "POST", post, body) for name, body in hostile.items()]
    million = json.dumps({**NOTE, "indicators": {"airports": ["x"] * 1_000_000}}).encode()
    cases.append(Case("post, a million invalid airports (5 MB)", "POST", post, million, expect=frozenset({413, 422})))
    channel = {"id": "ops", "title": "Ops", "policy": {"agencies": ["customs"]}, "default_handling": {"tlp": "GREEN"}}
    changes: dict[str, dict[str, Any]] = {
        "ends 2025-02-30": {"ends": "2025-02-30"},
        "ends 2025-13-01": {"ends": "2025-13-01"},
        "an id with upper case": {"id": "OPS"},
        "a purpose of 2,001 characters": {"purpose": "x" * 2001},
        "no policy": {"policy": None},
        "a type other than create": {"type": "close"},
    }
    for name, change in changes.items():
        cases.append(
            Case(
                f"channel, {name}", "POST", "/api/v1/channels", json.dumps({**channel, **change}).encode(), user="admin"
            )
        )
    for name, body in {
        "rights missing": b'{"node":"ke-customs"}',
        "unknown right": b'{"node":"ke-customs","rights":["own"]}',
        "four rights": b'{"node":"ke-customs","rights":["read","read","read","read"]}',
        "a node id with a NUL": b'{"node":"ke\\u0000","rights":["read"]}',
        "an unknown member": b'{"node":"ke-customs","rights":["read"],"x":1}',
    }.items():
        cases.append(Case(f"rights, {name}", "POST", "/api/v1/channels/c2c/rights", body, user="admin"))
    for name, body in {
        "a user with a NUL": b'{"user":"officer\\u0000"}',
        "a user of 65 characters": json.dumps({"user": "a" * 65}).encode(),
        "assigned as a string": b'{"user":"officer","assigned":"yes"}',
    }.items():
        cases.append(Case(f"assignment, {name}", "POST", "/api/v1/channels/c2c/users", body, user="admin"))
    wrap = "A" * 107
    envelope = {"header": {"v": 1}, "wraps": [wrap] * 100_000, "ciphertext": "", "signature": ""}
    for name, body in {
        "a 5,000-digit integer": b'{"txn":"a","envelopes":[' + digits + b"]}",
        "100,000 wraps": json.dumps({"txn": "a", "envelopes": [envelope]}).encode(),
        "1,001 envelopes": json.dumps({"txn": "a", "envelopes": [{}] * 1001}).encode(),
        "an empty transaction": b'{"txn":"a","envelopes":[]}',
        "a txn id with a NUL": b'{"txn":"a\\u0000","envelopes":[{}]}',
        "an unknown member": b'{"txn":"a","envelopes":[{}],"x":[]}',
        "a list": b"[]",
        "an event that is a number": b'{"txn":"a","envelopes":[],"events":[1]}',
        "a receipt that is a string": b'{"txn":"a","envelopes":[],"receipts":["x"]}',
        "100,000 nested arrays": b'{"txn":"a","envelopes":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    }.items():
        cases.append(Case(f"transaction, {name}", "POST", txn, body, peer=True))
    for name, (path, body) in {
        "a cosign request that is a list": ("/fed/v1/audit/cosign", b"[]"),
        "a cosign request with a huge old_size": (
            "/fed/v1/audit/cosign",
            b'{"checkpoint":"x","old_size":' + digits + b"}",
        ),
        "a cosign request with 129 hashes": (
            "/fed/v1/audit/cosign",
            json.dumps({"checkpoint": "x", "old_size": 1, "proof": ["A" * 43] * 129}).encode(),
        ),
        "a cosignature without a size": ("/fed/v1/audit/cosignatures", b'{"cosignature":"x"}'),
        "an acceptance that is a list": ("/fed/v1/channels/c2c/accept", b"[]"),
        "an acceptance for another node": (
            "/fed/v1/channels/c2c/accept",
            json.dumps(
                {"channel": "c2c", "node": "nl-customs", "invite": HEX, "signer": "0" * 16, "signature": "AA"}
            ).encode(),
        ),
    }.items():
        cases.append(Case(f"federation, {name}", "POST", path, body, peer=True, expect=frozenset({403, 422})))
    return cases


async def test_hostile_json_is_refused_early(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    await refused(fed, json_cases())


# -- routes and methods ------------------------------------------------------------------------------------


async def test_unknown_routes_are_404_problems(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    missing = frozenset({404})
    await refused(
        fed,
        [
            Case("an unknown API route", "GET", "/api/v1/nothing", expect=missing),
            Case(
                "an unknown membership action", "POST", "/api/v1/channels/c2c/own", b"{}", user="admin", expect=missing
            ),
            Case("an unknown federation route", "GET", "/fed/v1/nothing", peer=True, expect=missing),
            Case("a bulletin that is not there", "GET", f"/api/v1/bulletins/{HEX}", expect=missing),
        ],
    )


METHODS = [
    ("TRACE", "/api/v1/whoami", "officer"),
    ("TRACE", "/fed/v1/envelopes", None),
    ("PUT", "/api/v1/channels/c2c/bulletins", "officer"),
    ("DELETE", "/api/v1/bulletins/" + HEX, "officer"),
    ("PATCH", "/api/v1/audit/log", "auditor"),
    ("GET", "/fed/v1/envelopes", None),
]


async def test_unsupported_methods_answer_405_with_allow(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    for method, path, user in METHODS:
        answer = await send(fed, Case(method, method, path, user=user, peer=user is None))
        assert answer.status == 405 and answer.headers.get("content-type", "").startswith("application/problem+json")
        assert answer.headers.get("allow"), f"{method} {path}: 405 without Allow"


async def test_unsupported_methods_answer_405_problems(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    await refused(
        fed,
        [Case(f"{m} {p}", m, p, user=u, peer=u is None, expect=frozenset({405})) for m, p, u in METHODS],
    )


# -- an envelope naming a non-member (the owner's refusal is final; an outage is not) -----------------


def _naming(author: Member, outsider: Member) -> bytes:
    """A transaction with an envelope `author` signs for c2c, with the non-member `outsider` among its readers."""
    svc = author.service
    state = svc.channels.state("c2c")
    readers = sorted({*state.readers, NodeId(outsider.id)})
    bulletin = Bulletin.model_validate({**NOTE, "handling": {"tlp": "AMBER"}})
    env = build_envelope(
        bulletin,
        state=state,
        author=svc.me,
        key=svc.keys.signing,
        seq=1,
        readers=[(NodeId(n), svc.fed.encryption_key(n)) for n in readers],
        created="2026-01-01T00:00:00.000Z",
    )
    return b'{"txn":"naming-outsider","envelopes":[' + envelope_bytes(env) + b"]}"


async def test_an_envelope_sent_to_a_non_member_is_refused_for_good_not_retried(
    make_federation: MakeFederation,
) -> None:
    nodes = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "gb-avsec")}
    fed = await make_federation(nodes=nodes)
    ke, gb = fed["ke-customs"], fed["gb-avsec"]
    body = _naming(ke, gb)
    before = await counts(gb)
    # The owner (nl-customs) is up and answers gb that it takes no part in c2c: a final 422.
    status, problem, ctype = await gb.fed_post(ke, body)
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert "refused" in problem["detail"]
    # With the owner down, the state cannot be had now: 503, and the sender retries later.
    await fed.stop("nl-customs")
    status, problem, ctype = await gb.fed_post(ke, body)
    assert (status, ctype) == (503, "application/problem+json"), problem
    after = await counts(gb)
    assert {k: v for k, v in after.items() if k != "audit_log"} == {k: v for k, v in before.items() if k != "audit_log"}


# -- the audit log's growth ----------------------------------------------------------------------------


async def test_refusals_are_audited_in_entries_of_a_few_hundred_bytes(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    start = (await counts(nl))["audit_log"]
    long = "a" * 7000
    for case in (
        Case("a long id", "GET", f"/api/v1/bulletins/{long}"),
        Case("a long query", "GET", f"/api/v1/bulletins?channel={long}"),
        Case("a long unknown route", "GET", f"/api/v1/{long}", user=None),
        Case("a long token", "GET", "/api/v1/whoami", user=None, headers={"Authorization": b"Bearer " + b"A" * 4000}),
    ):
        await send(fed, case)
    async with nl.service.store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.entry).where(audit_log.c.idx >= start))).all()
    sizes = [len(bytes(r.entry)) for r in rows if json.loads(r.entry)["event"] in REFUSALS]
    assert sizes and max(sizes) <= MAX_ENTRY_BYTES, sizes


class Refusing:
    """A `PeerTransport` whose every partner answers with one HTTP status."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def fetch(self, node: NodeId, path: str) -> Any:
        if self.status >= 500:
            raise PeerError(f"{node} answered {self.status}")
        raise PeerRefused(f"{node} says no", self.status)

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        return await self.fetch(node, path)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, InvalidEnvelope),
        (404, InvalidEnvelope),
        (408, StateUnavailable),
        (429, StateUnavailable),
        (503, StateUnavailable),
    ],
)
async def test_only_a_final_refusal_by_the_owner_makes_an_unknown_state_permanent(
    tmp_path: Path, status: int, error: type[Exception]
) -> None:
    async for service in lone_node(tmp_path / "nodes"):
        book = ChannelBook(
            service.me, service.fed, service.keys.signing, service.store, Refusing(status), lambda _: None
        )
        with pytest.raises(error) as caught:
            await book.ensure("elsewhere", StateRef(owner="ke-customs", pos=0, hash=HEX))
        assert not isinstance(caught.value, PeerError) or error is StateUnavailable
        assert book.all() == []  # nothing learnt, nothing kept


async def test_a_bulletin_whose_text_holds_nul_is_stored_delivered_and_found(make_federation: MakeFederation) -> None:
    """A bulletin's strings may hold U+0000 (JSON escapes it in the stored content); its search text,
    a plain text column that PostgreSQL cannot give a NUL, is stored without it. It was a 500 at
    the author on PostgreSQL, and at every PostgreSQL reader, whose sender would retry for ever."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    bulletin = {"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "toner\x00cartridges", "body": "IED\x00 parts"}
    status, posted, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body=bulletin)
    assert status == 201, posted

    async def delivered() -> bool:
        return (await ke.api("GET", f"/api/v1/bulletins/{posted['id']}"))[0] == 200

    await eventually(delivered, what="the bulletin at ke")
    status, shown, _ = await ke.api("GET", f"/api/v1/bulletins/{posted['id']}")
    assert shown["bulletin"]["title"] == "toner\x00cartridges"  # the content keeps what the author wrote
    for member in (nl, ke):  # what the console's search matches
        async with member.service.store.read() as conn:
            text = await conn.scalar(sa.select(bulletins.c.search_text).where(bulletins.c.id == posted["id"]))
        assert text is not None and text.startswith("tonercartridges\nied parts\n"), text
