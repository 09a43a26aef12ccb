"""Bulletin ids on the command line as git takes them, against real nodes: a prefix shown by `inbox`
works in `read`, `audit trace`, `forward` and `post --ref`; an ambiguous one lists its candidates
and exits 1; one too short is one error line. `inbox` lists newest first, with its filters."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from exchange.cli.main import cli
from exchange.store import bulletins
from tests.conftest import DEFAULT_NODES, Federation, MakeFederation, Member

CHANNELS = [
    {
        "id": "c2c",
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
    },
    {
        "id": "c2c-east",
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
    },
]


@pytest.fixture
async def fed(make_federation: MakeFederation) -> Federation:
    fed = await make_federation(nodes={k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")}, channels=CHANNELS)
    for member in fed.members.values():  # the officer works in both channels
        status, _, _ = await member.api(
            "POST", "/api/v1/channels/c2c-east/users", user="admin", body={"user": "officer", "assigned": True}
        )
        assert status == 200
    return fed


async def exchange(fed: Federation, *args: str, node: str = "nl-customs") -> Result:
    """Run one `exchange` command against a node of the federation, as a user would."""
    group = 2 if args[0] == "audit" else 1
    argv = [*args[:group], "--node", str(fed.folder / f"{node}.toml"), *args[group:]]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


async def post(fed: Federation, title: str, channel: str = "c2c", *extra: str) -> str:
    result = await exchange(fed, "post", "--channel", channel, "--title", title, "--json", *extra)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def shown_ids(output: str) -> list[str]:
    """The ids `inbox` prints in its table, in its order."""
    return re.findall(r"^[│|]\s*([0-9a-f]{12})\s", output, flags=re.M)


async def test_a_prefix_from_inbox_works_in_read_trace_forward_and_ref(fed: Federation) -> None:
    first = await post(fed, "Undeclared cash")
    listed = await exchange(fed, "inbox")
    assert listed.exit_code == 0, listed.output
    (prefix,) = shown_ids(listed.stdout)
    assert first.startswith(prefix)

    read = await exchange(fed, "read", prefix, "--json")
    assert read.exit_code == 0, read.output
    assert json.loads(read.stdout)["id"] == first

    eight = prefix[:8]
    forwarded = await exchange(fed, "forward", eight, "--channel", "c2c-east", "--json")
    assert forwarded.exit_code == 0, forwarded.output
    copy = json.loads(forwarded.stdout)["id"]
    shown = json.loads((await exchange(fed, "read", copy[:10], "--json")).stdout)
    assert shown["bulletin"]["references"] == [first]

    answer = await post(fed, "Re: undeclared cash", "c2c", "--kind", "feedback", "--ref", eight)
    refs = json.loads((await exchange(fed, "read", answer, "--json")).stdout)["bulletin"]["references"]
    assert refs == [first]


async def test_a_prefix_from_inbox_works_in_audit_trace(fed: Federation) -> None:
    """Needs the one line in exchange/cli/audit.py's trace_bulletin (`resolve_id`): fails until it is wired."""
    first = await post(fed, "Undeclared cash")
    (prefix,) = shown_ids((await exchange(fed, "inbox")).stdout)
    traced = await exchange(fed, "audit", "trace", prefix[:8], "--user", "auditor")
    assert f"bulletin {first} in channel c2c" in traced.stdout, traced.output


async def test_inbox_lists_newest_first_with_channel_unread_limit_and_since(fed: Federation) -> None:
    a = await post(fed, "first")
    b = await post(fed, "second", "c2c-east")
    c = await post(fed, "third")
    newest = await exchange(fed, "inbox", "--json", node="ke-customs")
    assert newest.exit_code == 0, newest.output
    items = json.loads(newest.stdout)["items"]
    # ke-customs received them: wait until all three are there (no fixed sleep).
    for _ in range(200):
        if len(items) == 3:
            break
        await asyncio.sleep(0.05)
        items = json.loads((await exchange(fed, "inbox", "--json", node="ke-customs")).stdout)["items"]
    assert [i["id"] for i in items] == [c, b, a]
    assert all(i["unread"] for i in items)

    only_c2c = json.loads((await exchange(fed, "inbox", "--channel", "c2c", "--json", node="ke-customs")).stdout)
    assert [i["id"] for i in only_c2c["items"]] == [c, a]

    assert (await exchange(fed, "read", b[:8], node="ke-customs")).exit_code == 0
    unread = json.loads((await exchange(fed, "inbox", "--unread", "--json", node="ke-customs")).stdout)
    assert [i["id"] for i in unread["items"]] == [c, a]

    page = json.loads((await exchange(fed, "inbox", "--limit", "2", "--json", node="ke-customs")).stdout)
    assert [i["id"] for i in page["items"]] == [c, b]
    rest = await exchange(fed, "inbox", "--limit", "2", "--before", str(page["next"]), "--json", node="ke-customs")
    assert [i["id"] for i in json.loads(rest.stdout)["items"]] == [a]

    created = {i["id"]: i["created"] for i in items}
    since = json.loads((await exchange(fed, "inbox", "--since", created[b], "--json", node="ke-customs")).stdout)
    assert [i["id"] for i in since["items"]] == [c, b]
    future = json.loads((await exchange(fed, "inbox", "--since", "9999-01-01", "--json", node="ke-customs")).stdout)
    assert future["items"] == []
    human = await exchange(fed, "inbox", "--limit", "2", node="ke-customs")
    assert shown_ids(human.stdout) == [c[:12], b[:12]] and f"more: --before {page['next']}" in human.stdout


async def twin(member: Member, bid: str, tail: str) -> str:
    """Store a copy of bulletin `bid` under an id that shares its first 8 characters: ids are hashes,
    so two real ones sharing 32 bits are too rare to post in a test."""
    other = bid[:8] + tail * 56
    async with member.service.store.read() as conn:
        row = (await conn.execute(sa.select(bulletins).where(bulletins.c.id == bid))).one()._asdict()

    async def job(conn: Any, audit: Any) -> None:
        copy = {k: v for k, v in row.items() if k not in ("n", "channel_pos")} | {"id": other, "seq": row["seq"] + 1000}
        await conn.execute(sa.insert(bulletins).values(copy))

    await member.service.store.write(job)
    return other


async def test_an_ambiguous_prefix_lists_the_candidates_and_exits_1(fed: Federation) -> None:
    bid = await post(fed, "Toner cartridges")
    other = await twin(fed["nl-customs"], bid, "0" if bid[8] != "0" else "1")
    for command in (["read", bid[:8]], ["forward", bid[:8], "--channel", "c2c-east"]):
        result = await exchange(fed, *command)
        assert result.exit_code == 1
        assert f"error: bulletin id {bid[:8]} is ambiguous" in result.output
        assert "hint: the candidates are:" in result.output
        for candidate in (bid, other):
            assert re.search(
                rf"hint:   {candidate[:12]}\S*  c2c  nl-customs  .*  alert  Toner cartridges", result.output
            )
        assert "Traceback" not in result.output
    # A longer prefix that only one of them has is unique again.
    read = await exchange(fed, "read", bid[:9], "--json")
    assert read.exit_code == 0 and json.loads(read.stdout)["id"] == bid


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("abc1234", "error: 'abc1234' is too short: give at least 8 hex characters of a bulletin id (HTTP 422)"),
        ("not-an-id", "error: 'not-an-id' is not a bulletin id: 8 to 64 lower-case hexadecimal characters (HTTP 422)"),
        ("0123abcd", "error: no bulletin id begins with 0123abcd in the bulletins you may see"),
    ],
)
async def test_a_prefix_that_names_nothing_is_one_error_line(fed: Federation, given: str, message: str) -> None:
    for command in (
        ["read", given],
        ["forward", given, "--channel", "c2c-east"],
        ["post", "--title", "t", "--ref", given, "--channel", "c2c"],
    ):
        result = await exchange(fed, *command)
        assert result.exit_code == 1
        assert result.output.strip() == message


async def test_the_prefix_look_up_sees_only_the_users_channels(fed: Federation) -> None:
    """A prefix is resolved among the bulletins the user may read: no probing of others' channels."""
    nl = fed["nl-customs"]
    bid = await post(fed, "Only for c2c-east", "c2c-east")
    status, _, _ = await nl.api(
        "POST", "/api/v1/channels/c2c-east/users", user="admin", body={"user": "officer", "assigned": False}
    )
    assert status == 200
    status, found, _ = await nl.api("GET", f"/api/v1/bulletin-ids?prefix={bid[:8]}")
    assert (status, found) == (200, {"prefix": bid[:8], "matches": [], "more": False})
    status, found, _ = await nl.api("GET", f"/api/v1/bulletin-ids?prefix={bid[:8]}", user="auditor")
    assert status == 200
    assert found["matches"] == [
        {
            "id": bid,
            "channel": "c2c-east",
            "author": "nl-customs",
            "created": found["matches"][0]["created"],
            "kind": None,
            "title": None,
        }
    ]
    status, _, ctype = await nl.api("GET", "/api/v1/bulletin-ids?prefix=abc", user="officer")
    assert (status, ctype) == (422, "application/problem+json")


async def test_post_no_onward_sharing_without_tlp_is_refused_not_dropped(fed: Federation) -> None:
    """It was dropped (found by a read-only review): the CLI said "posted", and the bulletin went
    out with the channel's default handling, forwardable and served over TAXII. Now one error
    line, exit 1, nothing posted; with --tlp it is kept."""
    nl = fed["nl-customs"]
    before = await stored_count(nl)
    refused = await exchange(fed, "post", "--channel", "c2c", "--title", "t", "--no-onward-sharing")
    assert (
        refused.exit_code == 1
        and refused.output == "error: --no-onward-sharing needs --tlp: give the TLP it goes with\n"
    )
    assert await stored_count(nl) == before
    posted = await exchange(
        fed, "post", "--channel", "c2c", "--title", "t", "--tlp", "GREEN", "--no-onward-sharing", "--json"
    )
    assert posted.exit_code == 0, posted.output
    shown = await exchange(fed, "read", json.loads(posted.stdout)["id"], "--json")
    assert shown.exit_code == 0, shown.output  # (once in CI, under load: an empty stdout, its error unseen)
    assert json.loads(shown.stdout)["bulletin"]["handling"] == {"tlp": "GREEN", "no_onward_sharing": True}


async def stored_count(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(bulletins))).scalar_one())
