"""The TAXII 2.1 server, read by an unmodified taxii2-client over real TLS (docs/stix.md).

taxii2-client speaks blocking `requests`, so each of its calls runs in a thread while the node
serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import requests
import sqlalchemy as sa
import stix2
import stix2validator
from taxii2client.common import TokenAuth
from taxii2client.v21 import Server, as_pages

from exchange.crypto import b64e
from exchange.errors import InvalidInput, NotFound
from exchange.protocol.stix import TLP_IDS, collection_id
from exchange.service import taxii as taxii_service
from exchange.service.catchup import POSITIONS
from exchange.service.taxii import Filters
from exchange.store import audit_log, bulletins, no_onward
from tests.conftest import Federation, MakeFederation
from tests.node.test_hostile_input import delivered

T = TypeVar("T")
TAXII = "application/taxii+json;version=2.1"
SERVABLE = 150


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) replace a Session's `verify` (psf/requests
    issue 3829), and taxii2-client sets `verify` on its Session: without these, the node's CA is used."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


async def off_loop(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def bulletin(i: int, tlp: str = "GREEN", *, onward: bool = False, kind: str = "alert") -> dict[str, Any]:
    return {
        "kind": kind,
        "handling": {"tlp": tlp, "no_onward_sharing": onward},
        "title": f"bulletin {i} {tlp}{' no-onward' if onward else ''}",
        "body": f"text of bulletin {i}",
        "indicators": {
            "air_waybills": [f"176-{i % 10**7:07d}{i % 10**7 % 7}"],
            "hs_codes": ["8517.12"],
            "flights": ["KL1234"],
            "airports": ["AMS"],
            "companies": [f"Company {i} B.V."],
            "risk_indicators": ["undervalued"],
        },
    }


async def post(fed: Federation, body: dict[str, Any], node: str = "nl-customs") -> str:
    status, posted, _ = await fed[node].api("POST", "/api/v1/channels/c2c/bulletins", body=body)
    assert status == 201, posted
    return str(posted["id"])


async def post_mix(fed: Federation, count: int, start: int = 0) -> tuple[list[str], list[str]]:
    """`count` servable bulletins, and among them a RED, an AMBER+STRICT and a no-onward-sharing one
    every 25; returns (servable ids, withheld ids) in posting order."""
    servable: list[str] = []
    withheld: list[str] = []
    tlps = ("CLEAR", "GREEN", "AMBER")
    for i in range(start, start + count):
        kind = "feedback" if i % 10 == 9 and servable else "alert"
        body = bulletin(i, tlps[i % 3], kind=kind)
        if kind == "feedback":
            body["references"] = [servable[-1]]
        servable.append(await post(fed, body))
        if i % 25 == 0:
            withheld.append(await post(fed, bulletin(i, "RED")))
            withheld.append(await post(fed, bulletin(i, "AMBER+STRICT")))
            withheld.append(await post(fed, bulletin(i, "GREEN", onward=True)))
    return servable, withheld


def server(fed: Federation, user: str = "officer", node: str = "nl-customs") -> Server:
    member = fed[node]
    return Server(
        member.config.endpoint + "/taxii2/",
        verify=str(member.config.keys_dir / "tls.crt"),
        auth=TokenAuth(member.tokens[user]),
    )


def bulletin_ids(objects: list[dict[str, Any]]) -> list[str]:
    """The bulletin ids of the reports among `objects`, in order."""
    return [o["external_references"][0]["external_id"] for o in objects if o["type"] == "report"]


def check_stix(objects: list[dict[str, Any]]) -> None:
    """Every object validates (0 errors), parses with stix2, and bears no RED or AMBER+STRICT marking."""
    for obj in objects:
        result = stix2validator.validate_instance(obj)
        assert result.is_valid, [str(e) for e in result.errors]
        stix2.parse(obj, allow_custom=True)
        assert obj["id"] not in (TLP_IDS["RED"], TLP_IDS["AMBER+STRICT"])
        assert not set(obj.get("object_marking_refs", [])) & {TLP_IDS["RED"], TLP_IDS["AMBER+STRICT"]}


def get(fed: Federation, path: str, *, headers: dict[str, str] | None = None, method: str = "GET") -> requests.Response:
    member = fed["nl-customs"]
    return requests.request(
        method,
        member.config.endpoint + path,
        headers={"Accept": TAXII, **(headers or {})},
        verify=str(member.config.keys_dir / "tls.crt"),
        timeout=30,
    )


async def taxii_reads(fed: Federation) -> list[dict[str, Any]]:
    async with fed["nl-customs"].service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        entries = [json.loads(bytes(r.entry)) for r in rows]
    return [e for e in entries if e["event"] == "taxii.read"]


async def test_taxii2_client_pages_every_servable_bulletin_exactly_once(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    servable, withheld = await post_mix(fed, SERVABLE)

    def discover() -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        srv = server(fed)
        root = srv.default
        assert [c.title for c in root.collections] == ["c2c"]
        coll = root.collections[0]
        assert coll.can_read and not coll.can_write
        paged = [o for env in as_pages(coll.get_objects, per_request=37) for o in env.get("objects", [])]
        middle = paged[len(paged) // 2]
        manifest = [m for env in as_pages(coll.get_manifest, per_request=50) for m in env.get("objects", [])]
        return coll, paged, manifest, [middle]

    coll, objects, manifest, (middle,) = await off_loop(discover)
    assert coll.id == collection_id("nl-customs", "c2c")
    got = bulletin_ids(objects)
    assert got == servable  # every servable bulletin, once each, in storage order
    assert not set(got) & set(withheld)
    check_stix(objects)
    # date_added unique and increasing in storage order
    added = [m["date_added"] for m in manifest]
    assert added == sorted(added) and len(set(added)) == len(added) == len(objects)
    assert [m["id"] for m in manifest] == [o["id"] for o in objects]

    # added_after: strictly after, page after page
    after = next(m["date_added"] for m in manifest if m["id"] == middle["id"])

    def since() -> list[dict[str, Any]]:
        coll = server(fed).default.collections[0]
        return [
            o for env in as_pages(coll.get_objects, per_request=29, added_after=after) for o in env.get("objects", [])
        ]

    later = await off_loop(since)
    expected = [m["id"] for m in manifest if m["date_added"] > after]
    assert [o["id"] for o in later] == expected and middle["id"] not in expected

    # a re-read is the same, byte for byte
    again = await off_loop(lambda: server(fed).default.collections[0].get_objects(limit=1000)["objects"])
    assert json.dumps(again[: len(objects)], sort_keys=True) == json.dumps(objects[: len(again)], sort_keys=True)

    # every read is audited: who, which channel, how many objects
    reads = await taxii_reads(fed)
    assert {(r["user"], r["channel"]) for r in reads} == {("officer", "c2c")}
    assert sum(r["objects"] for r in reads if r["resource"] == "objects") == len(objects) + len(later) + len(again)


async def test_paging_holds_while_bulletins_arrive_and_across_a_restart(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    servable, _ = await post_mix(fed, 30)
    cid = collection_id("nl-customs", "c2c")

    def page(next_token: str | None) -> dict[str, Any]:
        coll = server(fed).default.collections[0]
        return dict(coll.get_objects(limit=40, **({"next": next_token} if next_token else {})))

    seen: list[dict[str, Any]] = []
    first = await off_loop(lambda: page(None))
    seen += first["objects"]
    assert first["more"] and first["next"]
    # new bulletins between pages: they come after, nothing is skipped or repeated
    arrived, _ = await post_mix(fed, 5, start=100)
    second = await off_loop(lambda: page(first["next"]))
    seen += second["objects"]
    # a restart between pages: the token is a storage position, not server memory
    await fed.stop("nl-customs")
    await fed.start("nl-customs")
    token = second["next"]
    while token:
        env = await off_loop(lambda t=token: page(t))  # type: ignore[misc]
        seen += env["objects"]
        token = env.get("next") if env["more"] else None
    assert bulletin_ids(seen) == servable + arrived
    assert await off_loop(lambda: server(fed).default.collections[0].id) == cid  # the same after the restart


async def test_auth_schemes_errors_and_media_types(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    await post(fed, bulletin(1))
    token = fed["nl-customs"].tokens["officer"]
    root = "/taxii2/"
    basic = base64.b64encode(f"officer:{token}".encode()).decode()
    for header in (f"Bearer {token}", f"Token {token}", f"Basic {basic}"):
        r = await off_loop(lambda h=header: get(fed, root, headers={"Authorization": h}))  # type: ignore[misc]
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == TAXII
        assert r.json()["api_roots"] == [fed["nl-customs"].config.endpoint + "/taxii2/exchange/"]
    wrong_user = base64.b64encode(f"admin:{token}".encode()).decode()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {wrong_user}"}):
        r = await off_loop(lambda h=headers: get(fed, root, headers=h))  # type: ignore[misc]
        assert r.status_code == 401
        assert "Basic" in r.headers["WWW-Authenticate"]
        assert r.headers["Content-Type"] == TAXII and r.json()["http_status"] == "401"
    auth = {"Authorization": f"Bearer {token}"}
    r = await off_loop(lambda: get(fed, root, headers={**auth, "Accept": "application/json"}))
    assert r.status_code == 406
    r = await off_loop(lambda: get(fed, root, headers={**auth, "Accept": "application/taxii+json;version=2.0"}))
    assert r.status_code == 406
    r = await off_loop(lambda: get(fed, root, headers={**auth, "Accept": "application/taxii+json"}))
    assert r.status_code == 200
    objects = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/objects/"
    r = await off_loop(lambda: get(fed, objects, headers=auth, method="POST"))
    assert r.status_code == 405 and r.json()["http_status"] == "405"
    r = await off_loop(lambda: get(fed, objects + "?added_after=yesterday", headers=auth))
    assert r.status_code == 400 and r.json()["http_status"] == "400"
    r = await off_loop(lambda: get(fed, objects + "?next=forged", headers=auth))
    assert r.status_code == 400
    r = await off_loop(lambda: get(fed, objects.removesuffix("/"), headers=auth))
    assert r.status_code == 404  # trailing slashes as the spec writes them

    # objects/{id}/ and versions/ find the report of a bulletin
    env = (await off_loop(lambda: get(fed, objects, headers=auth))).json()
    report = next(o for o in env["objects"] if o["type"] == "report")
    one = await off_loop(lambda: get(fed, f"{objects}{report['id']}/", headers=auth))
    assert one.status_code == 200 and one.json()["objects"] == [report]
    assert one.headers["X-TAXII-Date-Added-First"] == one.headers["X-TAXII-Date-Added-Last"]
    versions = await off_loop(lambda: get(fed, f"{objects}{report['id']}/versions/", headers=auth))
    assert versions.json()["versions"] == [report["modified"]]
    author = await off_loop(lambda: get(fed, f"{objects}{report['created_by_ref']}/", headers=auth))
    assert author.status_code == 200 and author.json()["objects"][0]["type"] == "identity"
    missing = report["id"][:-4] + "0000"
    assert (await off_loop(lambda: get(fed, f"{objects}{missing}/", headers=auth))).status_code == 404
    r = await off_loop(lambda: get(fed, f"{objects}?match[type]=report", headers=auth))
    assert [o["type"] for o in r.json()["objects"]] == ["report"]


async def test_withheld_for_auditors_unassigned_users_and_by_policy(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    red = await post(fed, bulletin(1, "RED"))
    strict = await post(fed, bulletin(2, "AMBER+STRICT"))
    onward = await post(fed, bulletin(3, "AMBER", onward=True))
    await fed["nl-customs"].service.users.add("stranger", "contact-point", actor="test")
    token = await fed["nl-customs"].service.users.add("newcomer", "contact-point", actor="test")
    fed["nl-customs"].tokens["newcomer"] = token
    objects = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/objects/"
    for user in ("auditor", "admin", "newcomer"):
        auth = {"Authorization": f"Bearer {fed['nl-customs'].tokens[user]}"}
        r = await off_loop(lambda a=auth: get(fed, "/taxii2/exchange/collections/", headers=a))  # type: ignore[misc]
        assert r.status_code == 200 and r.json() == {}
        r = await off_loop(lambda a=auth: get(fed, objects, headers=a))  # type: ignore[misc]
        assert r.status_code == 404
    # the officer reads the channel, but none of the three
    env = await off_loop(lambda: server(fed).default.collections[0].get_objects())
    assert env.get("objects", []) == []
    text = json.dumps(env)
    assert red not in text and strict not in text and onward not in text


async def test_export_stix_bundles_under_the_same_policy(make_federation: MakeFederation, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from exchange.cli.export import export

    fed = await make_federation()
    servable, withheld = await post_mix(fed, 4)
    node_file = str(fed.folder / "nl-customs.toml")

    def run(*args: str) -> Any:
        return CliRunner().invoke(export, ["--stix", "--channel", "c2c", "--node", node_file, *args])

    out = tmp_path / "c2c.json"
    done = await off_loop(lambda: run("--out", str(out)))
    assert done.exit_code == 0, done.output
    exported = json.loads(out.read_text())
    assert stix2validator.validate_parsed_json(exported).is_valid
    check_stix(exported["objects"])
    assert bulletin_ids(exported["objects"]) == servable
    assert len({o["id"] for o in exported["objects"]}) == len(exported["objects"])
    assert not any(w in out.read_text() for w in withheld)

    one = await off_loop(lambda: run("--bulletin", servable[1]))
    assert one.exit_code == 0, one.output
    objects = json.loads(one.output)["objects"]
    check_stix(objects)
    assert bulletin_ids(objects) == [servable[1]]
    refused = await off_loop(lambda: run("--bulletin", withheld[0]))
    assert refused.exit_code != 0 and withheld[0] not in refused.output
    assert {r["resource"] for r in await taxii_reads(fed)} == {"export"}
    # An export of one bulletin names it, so its trace shows that it left (a read-only review: the
    # entry named the channel only, and an auditor could not tell whether a mis-marked bulletin left).
    assert [r.get("bulletin") for r in await taxii_reads(fed)] == [None, servable[1]]
    async with fed["nl-customs"].service.store.read() as conn:
        indexed = await conn.scalars(sa.select(audit_log.c.entry).where(audit_log.c.bulletin == servable[1]))
        assert any(json.loads(bytes(e))["event"] == "taxii.read" for e in indexed)


async def test_the_no_onward_mark_is_looked_up_in_the_list_the_database_keeps_not_in_each_envelope(
    make_federation: MakeFederation,
) -> None:
    """A read searched every row's envelope for the mark (megabytes a row with attachments; found by
    a read-only review). The database now lists the marked bulletins as it stores them (revision
    0016) and the read looks there: a bulletin listed by hand is withheld though its envelope
    bears no mark, so the envelope is not what the read consults."""
    fed = await make_federation()
    servable, withheld = await post_mix(fed, 3)
    nl = fed["nl-customs"]
    async with nl.service.store.read() as conn:
        listed = set(await conn.scalars(sa.select(no_onward.c.bulletin_id)))
    onward = [b for b in withheld if b in listed]
    assert len(onward) == 1 and not listed & set(servable)  # the one marked, listed at its store
    user = await nl.service.users.authenticate(nl.tokens["officer"])
    cid = collection_id("nl-customs", "c2c")

    async def read() -> list[str]:
        page = await nl.service.taxii.read(
            user, cid, resource="objects", limit=1000, next_token=None, filters=Filters()
        )
        return bulletin_ids([s.obj for s in page.items])

    assert await read() == servable
    async with nl.service.store.engine.begin() as conn:
        await conn.execute(sa.insert(no_onward).values(bulletin_id=servable[0]))
    assert await read() == servable[1:]


async def test_an_export_of_a_whole_channel_looks_through_a_bounded_number_of_bulletins(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole channel's export read every row of the channel in one request, however few it kept:
    a channel of a million withheld bulletins made one request look through all of them (found by
    a read-only review). Past MAX_EXPORT_SCAN bulletins it is refused, as past MAX_EXPORT objects;
    here both scan steps are made small."""
    fed = await make_federation()
    servable, _ = await post_mix(fed, 4)
    nl = fed["nl-customs"]
    user = await nl.service.users.authenticate(nl.tokens["officer"])
    monkeypatch.setattr(taxii_service, "MAX_SCAN", 2)
    whole = await nl.service.taxii.export(user, "c2c")
    assert bulletin_ids(whole["objects"]) == servable  # paged two rows at a time, all there
    monkeypatch.setattr(taxii_service, "MAX_EXPORT_SCAN", 3)
    with pytest.raises(InvalidInput, match="page through the TAXII collection"):
        await nl.service.taxii.export(user, "c2c")
    one = await nl.service.taxii.export(user, "c2c", servable[-1])  # one bulletin: not a scan of the channel
    assert bulletin_ids(one["objects"]) == [servable[-1]]


async def test_withheld_bulletins_count_towards_what_one_read_looks_through(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TLP levels that may leave were picked in SQL (`tlp IN`), so a read's MAX_SCAN counted
    only the rows that could be served: behind a run of TLP:RED bulletins the database walked every
    one of them to fill a chunk, a million RED bulletins in one request (found by a read-only
    review). They now count: a read stops after MAX_SCAN rows with a `next`, and paging on finds
    the GREEN bulletin after them. An `added_after` that is no time of the calendar is a 400."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    first = await post(fed, bulletin(0))
    for i in range(1, 7):
        await post(fed, bulletin(i, "RED"))
    last = await post(fed, bulletin(7))
    user = await nl.service.users.authenticate(nl.tokens["officer"])
    cid = collection_id("nl-customs", "c2c")
    monkeypatch.setattr(taxii_service, "MAX_SCAN", 3)
    page = await nl.service.taxii.read(user, cid, resource="objects", limit=1000, next_token=None, filters=Filters())
    assert bulletin_ids([i.obj for i in page.items]) == [first] and page.more and page.next is not None
    seen: list[str] = [first]
    token: str | None = page.next
    while token is not None:
        page = await nl.service.taxii.read(
            user, cid, resource="objects", limit=1000, next_token=token, filters=Filters()
        )
        seen += bulletin_ids([i.obj for i in page.items])
        token = page.next if page.more else None
    assert seen == [first, last]
    with pytest.raises(InvalidInput, match="added_after"):
        Filters(added_after="2026-19-99T00:00:00Z")


async def test_a_shared_object_is_found_past_a_run_of_withheld_bulletins(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared object (a TLP marking, an identity) is served from the first bulletin that carries
    it. With withheld rows counting towards MAX_SCAN (above), a collection that began with more than
    MAX_SCAN withheld bulletins answered 404 for it (a read-only review of that change): the request
    now scans on, SHARED_SCANS times at most."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    for i in range(4):
        await post(fed, bulletin(i, "RED"))
    await post(fed, bulletin(4))
    user = await nl.service.users.authenticate(nl.tokens["officer"])
    cid = collection_id("nl-customs", "c2c")
    monkeypatch.setattr(taxii_service, "MAX_SCAN", 3)
    found = await nl.service.taxii.one(user, cid, TLP_IDS["GREEN"], resource="object", filters=Filters())
    assert [i.obj["id"] for i in found.items] == [TLP_IDS["GREEN"]]
    monkeypatch.setattr(taxii_service, "SHARED_SCANS", 0)
    with pytest.raises(NotFound):
        await nl.service.taxii.one(user, cid, TLP_IDS["GREEN"], resource="object", filters=Filters())


async def test_polls_that_serve_nothing_are_audited_once_an_hour(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each TAXII read wrote a `taxii.read` entry, those that served nothing too: a platform polling
    at its token's rate limit (200 a second) added about 17 million entries a day for nothing that
    left the node (a read-only review). A read that serves nothing is now audited once per user,
    channel and resource per EMPTY_READS_EVERY; every read that serves objects is, as before."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    user = await nl.service.users.authenticate(nl.tokens["officer"])
    cid = collection_id("nl-customs", "c2c")
    newest = Filters(added_after="2999-01-01T00:00:00Z")  # nothing is newer

    async def poll(filters: Filters = newest) -> int:
        page = await nl.service.taxii.read(user, cid, resource="objects", limit=10, next_token=None, filters=filters)
        return len(page.items)

    for _ in range(5):
        assert await poll() == 0
    assert [r["objects"] for r in await taxii_reads(fed)] == [0]  # before: five entries
    await post(fed, bulletin(1))
    assert await poll(Filters()) > 0
    assert [r["objects"] > 0 for r in await taxii_reads(fed)] == [False, True]
    monkeypatch.setattr(taxii_service, "EMPTY_READS_EVERY", 0.0)
    assert await poll() == 0
    assert len(await taxii_reads(fed)) == 3


async def test_whole_channel_exports_are_built_a_few_at_a_time(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole channel's export holds its bundle in memory (up to 100,000 objects, hundreds of MB),
    and one token may hold 128 connections: ten exports at once could fill the node's memory (a
    read-only review). At most EXPORTS_AT_ONCE are built at once; the others wait, and all answer."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    servable, _ = await post_mix(fed, 2)
    user = await nl.service.users.authenticate(nl.tokens["officer"])
    taxii = nl.service.taxii
    building, most = 0, 0
    real_scan = taxii._scan

    async def slow_scan(*args: Any, **kwargs: Any) -> Any:
        nonlocal building, most
        building += 1
        most = max(most, building)
        try:
            await asyncio.sleep(0.05)
            return await real_scan(*args, **kwargs)
        finally:
            building -= 1

    monkeypatch.setattr(taxii, "_scan", slow_scan)
    bundles = await asyncio.gather(*(taxii.export(user, "c2c") for _ in range(6)))
    assert all(bulletin_ids(b["objects"]) == servable for b in bundles)
    assert most == taxii_service.EXPORTS_AT_ONCE, most  # before: 6


async def test_refused_taxii_requests_are_audited(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    objects = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/objects/"
    auth = {"Authorization": f"Bearer {fed['nl-customs'].tokens['auditor']}"}
    r = await off_loop(lambda: get(fed, objects, headers=auth))
    assert r.status_code == 404 and r.headers["Content-Type"] == TAXII

    async def rejected() -> list[dict[str, Any]]:
        async with fed["nl-customs"].service.store.read() as conn:
            rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
            entries = [json.loads(bytes(r.entry)) for r in rows]
        return [e for e in entries if e["event"] == "request.rejected" and e["path"] == objects]

    (entry,) = await rejected()
    assert entry["user"] == "auditor" and entry["status"] == 404
    assert await taxii_reads(fed) == []  # a refused read served nothing


async def test_amber_strict_leaves_only_by_the_owners_signed_rule(make_federation: MakeFederation) -> None:
    """AMBER+STRICT is withheld until the channel's owner signs a set-export change allowing it, and
    withheld again once it withdraws it; only the owner's administrator may order the change."""
    fed = await make_federation()
    strict = await post(fed, bulletin(1, "AMBER+STRICT"))
    red = await post(fed, bulletin(2, "RED"))

    async def served() -> str:
        return json.dumps(await off_loop(lambda: server(fed).default.collections[0].get_objects()))

    assert strict not in await served()
    # not the owner's administrator: refused, and the log does not move
    before = fed["nl-customs"].service.channels.state("c2c").pos
    for node, user, status in (("nl-customs", "officer", 403), ("ke-customs", "admin", 403)):
        code, problem, _ = await fed[node].api(
            "POST", "/api/v1/channels/c2c/export", user=user, body={"amber_strict": True}
        )
        assert code == status, problem
    for bad in ({"amber_strict": "yes"}, {}, {"amber_strict": True, "red": True}):
        code, _, _ = await fed["nl-customs"].api("POST", "/api/v1/channels/c2c/export", user="admin", body=bad)
        assert code == 422
    assert fed["nl-customs"].service.channels.state("c2c").pos == before

    code, view, _ = await fed["nl-customs"].api(
        "POST", "/api/v1/channels/c2c/export", user="admin", body={"amber_strict": True}
    )
    assert code == 200 and view["export_amber_strict"] is True and view["pos"] == before + 1
    text = await served()
    assert strict in text and red not in text
    marked = [o for o in json.loads(text)["objects"] if TLP_IDS["AMBER+STRICT"] in o.get("object_marking_refs", [])]
    assert marked and all(stix2validator.validate_instance(o).is_valid for o in marked)

    code, view, _ = await fed["nl-customs"].api(
        "POST", "/api/v1/channels/c2c/export", user="admin", body={"amber_strict": False}
    )
    assert code == 200 and view["export_amber_strict"] is False
    assert strict not in await served()


async def test_console_exports_a_stix_bundle_under_the_same_policy(make_federation: MakeFederation) -> None:
    import re

    import aiohttp

    from exchange.keystore import read_file
    from exchange.node.tls import client_context
    from exchange.service.users import set_password

    fed = await make_federation()
    servable, withheld = await post_mix(fed, 3)
    nl = fed["nl-customs"]
    await set_password(nl.service.store, "officer", "correct horse battery staple", actor="test")
    ctx = client_context(read_file(nl.config.keys_dir / "tls.crt").decode())
    url = nl.config.endpoint
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with http.get(url + "/console/sign-in") as resp:
            token = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "user": "officer", "password": "correct horse battery staple", "next": ""}
        async with http.post(url + "/console/sign-in", data=form) as resp:
            assert resp.status == 200
        async with http.get(url + "/console/channels/c2c") as resp:
            assert 'href="/console/channels/c2c/stix"' in await resp.text()
        async with http.get(url + "/console/channels/c2c/stix") as resp:
            assert resp.status == 200 and resp.headers["Content-Disposition"].startswith("attachment;")
            exported = json.loads(await resp.read())
        async with http.get(url + f"/console/channels/c2c/stix?bulletin={withheld[0]}") as resp:
            assert resp.status == 404 and withheld[0] not in await resp.text()
        async with http.get(url + "/console/channels/c2c/stix?bulletin=not-an-id") as resp:
            assert resp.status == 422
    assert stix2validator.validate_parsed_json(exported).is_valid
    check_stix(exported["objects"])
    assert bulletin_ids(exported["objects"]) == servable
    assert not any(w in json.dumps(exported) for w in withheld)
    assert [r["objects"] for r in await taxii_reads(fed) if r["resource"] == "export"] == [len(exported["objects"])]


# -- hostile requests (found by a read-only review) ----------------------------------------------

TAXII_MEDIA = "application/taxii+json;version=2.1"


def hostile_get(fed: Federation, path: str, headers: dict[str, str]) -> requests.Response:
    member = fed["nl-customs"]
    return requests.get(
        member.config.endpoint + path,
        headers={"Accept": TAXII_MEDIA, **headers},
        verify=str(member.config.keys_dir / "tls.crt"),
        timeout=30,
    )


async def test_hostile_requests_get_taxii_errors(make_federation: MakeFederation) -> None:
    """Found by a read-only review: a `next` past the storage positions and non-ASCII Basic
    credentials were 500s (problem+json, not a TAXII error), the first on PostgreSQL only."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    status, _, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": "x"})
    assert status == 201
    token = nl.tokens["officer"]
    coll = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/"
    bearer = {"Authorization": f"Bearer {token}"}
    cases = [
        (coll + "objects/?next=999999999999999999-99999", bearer),
        (coll + "objects/?added_after=9999-99-99T99:99:99.9999999999999Z", bearer),
        (coll + "objects/?limit=-1", bearer),
        (coll + "objects/?limit=1e3", bearer),
        (coll + "manifest/?match[version]=first,last&match[spec_version]=2.0", bearer),
        (coll + "objects/report--00000000-0000-5000-8000-000000000000/versions/", bearer),
        (coll + "objects/%00/", bearer),
        ("/taxii2/", {"Authorization": "Basic " + base64.b64encode(b"officer").decode()}),
        ("/taxii2/", {"Authorization": "Bearer \xe9"}),
        ("/taxii2/", {"Authorization": "Basic " + base64.b64encode(b"officer:\xff").decode()}),
    ]
    for path, headers in cases:
        resp = await asyncio.to_thread(hostile_get, fed, path, headers)
        assert resp.status_code < 500, (path, headers, resp.status_code, resp.text)
        if resp.status_code >= 400:
            assert resp.headers["Content-Type"] == TAXII_MEDIA, (
                path,
                headers,
                resp.status_code,
                resp.headers,
                resp.text,
            )
            assert resp.json()["http_status"] == str(resp.status_code)


async def test_basic_credentials_that_are_not_ascii_are_a_401(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    # base64.b64decode(str, validate=True) raises a plain ValueError (not binascii.Error) for non-ASCII
    resp = await asyncio.to_thread(hostile_get, fed, "/taxii2/", {"Authorization": "Basic \xe9\xe9\xe9\xe9"})
    assert resp.status_code == 401, (resp.status_code, resp.headers.get("Content-Type"), resp.text)
    assert resp.headers["Content-Type"] == TAXII_MEDIA


async def test_polling_with_added_after_when_nothing_is_newer(make_federation: MakeFederation) -> None:
    """The everyday TAXII poll: added_after past everything stored. It was a 500 on PostgreSQL
    (a storage position past its int4 column stood for "no row")."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    status, _, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": "x"})
    assert status == 201
    coll = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/"
    bearer = {"Authorization": f"Bearer {nl.tokens['officer']}"}
    first = await asyncio.to_thread(hostile_get, fed, coll + "objects/", bearer)
    assert first.status_code == 200
    last = first.headers["X-TAXII-Date-Added-Last"]
    assert last < "2099"
    # a client polling with its own clock, a little ahead of the node's last stored_at
    again = await asyncio.to_thread(hostile_get, fed, coll + "objects/?added_after=2099-01-01T00:00:00.000Z", bearer)
    assert again.status_code == 200, (again.status_code, again.text)
    assert again.json().get("objects", []) == [] and again.json()["more"] is False


async def test_a_next_token_past_int32_is_a_400(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    coll = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/"
    bearer = {"Authorization": f"Bearer {nl.tokens['officer']}"}
    resp = await asyncio.to_thread(hostile_get, fed, coll + "objects/?next=4294967296-0", bearer)
    assert resp.status_code < 500, (resp.status_code, resp.text)


async def test_paging_counts_the_collections_own_bulletins_only(make_federation: MakeFederation) -> None:
    """`next` and the position digits of `date_added` were `bulletins.n`, which counts every
    channel of the node: between two objects of one collection a reader learnt how many bulletins
    the node stored meanwhile in channels it may not read. They now count the collection's own
    (revision 0012's positions). A `next` given before (an `n`) is refused with a clear error:
    honoured, it let a reader find each bulletin's `n` by trying tokens (found by a read-only review)."""
    other = {
        "id": "c2c-other",
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read"]},
    }
    c2c = {**other, "id": "c2c", "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]}}
    fed = await make_federation(channels=[c2c, other])
    nl = fed["nl-customs"]
    first = await post(fed, bulletin(1))
    for i in range(5):  # stored between the two, in another channel
        status, body, _ = await nl.api("POST", "/api/v1/channels/c2c-other/bulletins", body=bulletin(10 + i))
        assert status == 201, body
    second = await post(fed, bulletin(2))
    bearer = {"Authorization": f"Bearer {nl.tokens['officer']}"}
    coll = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/"

    def manifest(query: str, status: int = 200) -> dict[str, Any]:
        resp = get(fed, coll + "manifest/" + query, headers=bearer)
        assert resp.status_code == status, resp.text
        return dict(resp.json())

    whole = (await off_loop(lambda: manifest("?limit=1000")))["objects"]
    report_of = {m["id"]: i for i, m in enumerate(whole) if m["id"].startswith("report--")}
    assert len(report_of) == 2
    per_bulletin = sorted(report_of.values())[1] - sorted(report_of.values())[0]
    positions = [m["date_added"][23:29] for m in whole]  # the six digits after the milliseconds
    assert set(positions[:per_bulletin]) == {"000001"} and set(positions[per_bulletin:]) == {"000002"}

    page = await off_loop(lambda: manifest(f"?limit={per_bulletin}"))
    assert page["more"] is True and page["next"] == f"{POSITIONS + 2}-0"
    rest = await off_loop(lambda: manifest(f"?next={page['next']}"))
    assert [m["id"] for m in rest["objects"]] == [m["id"] for m in whole[per_bulletin:]]

    async with nl.service.store.read() as conn:
        ns = {bid: int(n) for bid, n in await conn.execute(sa.select(bulletins.c.id, bulletins.c.n))}
    assert ns[second] - ns[first] == 6 and ns[second] < POSITIONS
    # Tokens this node gave before revision 0012 (storage position and object index): refused,
    # the same way whether or not they name a bulletin of the collection.
    for token in (f"{ns[second]}-1", f"{ns[second] - 1}-1", f"{ns[second] + 1}-0", f"{POSITIONS - 1}-0"):
        refused = await off_loop(functools.partial(manifest, f"?next={token}", 400))
        assert "before this node was upgraded" in refused["description"], refused


async def test_added_after_finds_its_start_among_what_came_since(make_federation: MakeFederation) -> None:
    """A read by added_after alone (the everyday poll) found where to start with a scan of the whole
    channel (`min(n) where stored_at >= ...`). It now searches the positions for one stored a
    minute (STAMP_SLACK) before added_after, then reads on: the same start, as long as stored_at
    follows the storage order to within that minute, which this checks with bulletins whose
    stored_at a hand edit set out of order by 30 s."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    ids = [await post(fed, bulletin(i)) for i in range(4)]
    # Stored (positions 1-4) at 10:00:00, 10:01:30, 10:01:00 (30 s out of order) and 10:05:00.
    stamps = ["2026-12-01T10:00:00.000Z", "2026-12-01T10:01:30.000Z", "2026-12-01T10:01:00.000Z"]
    stamps.append("2026-12-01T10:05:00.000Z")
    async with nl.service.store.engine.begin() as conn:
        for bid, at in zip(ids, stamps, strict=True):
            await conn.execute(sa.update(bulletins).where(bulletins.c.id == bid).values(stored_at=at))
    bearer = {"Authorization": f"Bearer {nl.tokens['officer']}"}
    coll = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/"

    def reports(added_after: str) -> list[str]:
        resp = get(fed, coll + f"objects/?added_after={added_after}", headers=bearer)
        assert resp.status_code == 200, resp.text
        return bulletin_ids(resp.json().get("objects", []))

    assert await off_loop(lambda: reports("2026-12-01T10:01:00.000Z")) == ids[1:]  # positions 2, 3, 4
    # Position 3 (10:01:00) is before 10:01:29 by less than the minute: read back past it, or 2 is missed.
    assert await off_loop(lambda: reports("2026-12-01T10:01:29.000Z")) == [ids[1], ids[3]]
    assert await off_loop(lambda: reports("2026-12-01T09:00:00.000Z")) == ids
    # Before the channel's first bulletin (a first sync), and in a year of fewer than four digits
    # (which strftime does not pad, found by review): everything.
    assert await off_loop(lambda: reports("1970-01-01T00:00:00Z")) == ids
    assert await off_loop(lambda: reports("0999-01-01T00:00:00Z")) == ids
    assert await off_loop(lambda: reports("2026-12-01T10:05:00.001Z")) == []


async def test_a_read_of_large_bulletins_is_sent_their_summaries_not_their_envelopes(
    make_federation: MakeFederation,
) -> None:
    """A page of objects needs each bulletin's summary and marks, not its envelope and content
    (megabytes with attachments). Each scan read 200 rows whole, whatever the page's limit: a
    contact point who posted large bulletins could make every `limit=1` read hold gigabytes
    (found by a read-only review). The no-onward mark is now looked for in the database."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    big = {"name": "scan.bin", "media_type": "application/octet-stream", "data": b64e(os.urandom(1 << 20))}
    ids = [await post(fed, {**bulletin(i), "attachments": [big]}) for i in range(4)]
    withheld = await post(fed, {**bulletin(9, onward=True), "attachments": [big]})
    for bid in (*ids, withheld):
        await delivered(nl, bid)
    user = await nl.service.users.authenticate(nl.tokens["officer"])
    cid = collection_id("nl-customs", "c2c")
    tracemalloc.start()
    try:
        page = await nl.service.taxii.read(
            user, cid, resource="objects", limit=1000, next_token=None, filters=Filters()
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bulletin_ids([s.obj for s in page.items]) == ids  # the no-onward one withheld, as before
    assert peak < 1 << 20, peak  # five rows of over 2.6 MiB each (envelope and content) were read whole
