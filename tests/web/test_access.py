"""The console and the API give the same answer to "may this user post here" (issue 9, must show 3).

Both ask `service.access`: a channel past its end date is refused by the API's POST (403
problem+json), is not offered by the console's compose form nor its inbox, and a forged console
POST to it is refused too; nothing is stored. A channel still open is accepted by both.
Real nodes over TLS, the console through plain HTTP requests with a session cookie.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp, utc_now
from exchange.keystore import read_file
from exchange.node.tls import client_context
from exchange.service.users import add_user
from exchange.store import AuditBuffer, audit_log, bulletins, console_sessions
from tests.conftest import DEFAULT_NODES, Federation, MakeFederation, Member

PASSWORD = "a long passphrase for tests"
NL = "nl-customs"
ENDED = "c2c-ended"  # ended on 2000-01-01
OPEN = "c2c-open"  # ends on 2999-12-31
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Console:
    """A signed-in console user, as a browser would be: a cookie jar and the page's CSRF token."""

    http: aiohttp.ClientSession
    url: str
    csrf: str

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.url + path, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def compose(self, channel: str, title: str) -> tuple[int, str, str]:
        """POST the compose form as the browser does (multipart); (status, Location, page)."""
        form = aiohttp.FormData()
        for name, value in {
            "csrf": self.csrf,
            "channel": channel,
            "kind": "alert",
            "tlp": "AMBER",
            "title": title,
            "body": "Forged or not, the service decides.",
            "language": "en",
        }.items():
            form.add_field(name, value)
        async with self.http.post(self.url + "/console/compose", data=form, allow_redirects=False) as resp:
            return resp.status, resp.headers.get("Location", ""), await resp.text()


@pytest.fixture
async def node(make_federation: MakeFederation) -> Member:
    """One Customs node with two channels it owns, one past its end date; the officer is assigned to both."""
    fed: Federation = await make_federation(nodes={NL: DEFAULT_NODES[NL]}, channels=[])
    nl = fed[NL]
    for channel, ends in ((ENDED, "2000-01-01"), (OPEN, "2999-12-31")):
        spec = {
            "id": channel,
            "title": channel,
            "policy": {"agencies": ["customs"]},
            "default_handling": {"tlp": "AMBER", "no_onward_sharing": False},
            "ends": ends,
        }
        status, body, _ = await nl.api("POST", "/api/v1/channels", user="admin", body=spec)
        assert status == 201, body
        status, body, _ = await nl.api(
            "POST", f"/api/v1/channels/{channel}/users", user="admin", body={"user": "officer"}
        )
        assert status == 200, body
    await nl.service.users.set_password("officer", PASSWORD, actor="test")
    return nl


@pytest.fixture
async def console(node: Member) -> AsyncIterator[Console]:
    ctx = client_context(read_file(node.config.keys_dir / "tls.crt").decode())
    jar = aiohttp.CookieJar(unsafe=True)  # the node is an IP address
    url = node.config.endpoint
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=jar) as http:
        async with http.get(url + "/console/sign-in") as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "user": "officer", "password": PASSWORD, "next": ""}
        async with http.post(url + "/console/sign-in", data=form) as resp:
            assert resp.status == 200 and resp.url.path == "/console/channels"
            csrf = CSRF.search(await resp.text())
        assert csrf is not None
        yield Console(http, url, csrf.group(1))


async def stored_in(member: Member, channel: str) -> int:
    async with member.service.store.read() as conn:
        query = sa.select(sa.func.count()).select_from(bulletins).where(bulletins.c.channel == channel)
        return int((await conn.execute(query)).scalar_one())


async def rejections(member: Member) -> list[dict[str, Any]]:
    """The node's audited refusals, oldest first."""
    async with member.service.store.read() as conn:
        entries = [json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]
    return [e for e in entries if e["event"] == "request.rejected"]


def offered(compose_page: str) -> list[str]:
    """The channels the compose form's select offers."""
    select = re.search(r'<select id="channel" name="channel".*?</select>', compose_page, re.S)
    assert select is not None
    return re.findall(r'<option value="([^"]+)"', select.group(0))


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # the rule does not depend on the database
async def test_a_channel_past_its_end_date_is_refused_by_the_api_and_the_console_alike(
    node: Member, console: Console
) -> None:
    service = node.service
    officer = await service.users.get("officer")
    assert service.channels.state(ENDED).ends == "2000-01-01"

    # The one rule, asked directly: refused here, allowed there.
    assert not service.access.may_post(officer, ENDED)
    assert service.access.may_post(officer, OPEN)
    assert service.access.postable_channels(officer) == [OPEN]

    # The API refuses the post with 403 problem+json, naming the end date.
    body = {"kind": "alert", "title": "Refused by the API", "body": "past the end date"}
    status, problem, ctype = await node.api("POST", f"/api/v1/channels/{ENDED}/bulletins", body=body)
    assert (status, ctype) == (403, "application/problem+json")
    assert problem["status"] == 403 and "ended on 2000-01-01" in problem["detail"]

    # The console does not offer the channel: not in the compose form, even when asked for it,
    # and its inbox (still readable) has no compose link.
    status, page = await console.get(f"/console/compose?channel={ENDED}")
    assert status == 200 and offered(page) == [OPEN]
    status, page = await console.get(f"/console/channels/{ENDED}")
    assert status == 200 and "Compose a bulletin" not in page
    status, page = await console.get(f"/console/channels/{OPEN}")
    assert status == 200 and "Compose a bulletin" in page

    # A forged console POST to it is refused with the same 403, as an HTML page, and audited.
    status, _, page = await console.compose(ENDED, "Refused by the console")
    assert status == 403 and "ended on 2000-01-01" in page
    refused = [(e["method"], e["path"], e["status"], e["user"]) for e in await rejections(node)]
    assert refused == [
        ("POST", f"/api/v1/channels/{ENDED}/bulletins", 403, "officer"),
        ("POST", "/console/compose", 403, "officer"),
    ]

    # Nothing was stored.
    assert await stored_in(node, ENDED) == 0

    # A channel still open is accepted by both.
    body["title"] = "Accepted by the API"
    status, posted, _ = await node.api("POST", f"/api/v1/channels/{OPEN}/bulletins", body=body)
    assert status == 201, posted
    status, location, _ = await console.compose(OPEN, "Accepted by the console")
    assert status == 303 and location.startswith(f"/console/channels/{OPEN}?posted=")
    assert await stored_in(node, OPEN) == 2

    # One's own post from the console is not unread for oneself (marked in the post's own transaction).
    status, page = await console.get(f"/console/channels/{OPEN}")
    rows = dict(
        (title, state)
        for state, title in re.findall(r'<tr class="(\w+)">.*?<th scope="row"><a [^>]*>([^<]+)<', page, re.S)
    )
    assert rows == {"Accepted by the console": "read", "Accepted by the API": "unread"}

    # The banner "posted, signed and queued" shows for that post; a link naming an id that is no
    # post of this node's does not make the page claim one (found by a read-only review).
    banner = "Your bulletin is posted, signed and queued"
    assert banner in (await console.get(location))[1]
    assert banner not in (await console.get(f"/console/channels/{OPEN}?posted={'ab' * 32}"))[1]


# -- the live inbox follows the rights as they are now ---------------------------------------------


async def _second_officer_posts(node: Member, title: str) -> None:
    if "officer2" not in node.tokens:
        node.tokens["officer2"] = await add_user(node.service.store, "officer2", "contact-point", actor="test")
        status, body, _ = await node.api(
            "POST", f"/api/v1/channels/{OPEN}/users", user="admin", body={"user": "officer2"}
        )
        assert status == 200, body
    body = {"kind": "alert", "title": title, "body": "x"}
    status, answer, _ = await node.api("POST", f"/api/v1/channels/{OPEN}/bulletins", user="officer2", body=body)
    assert status == 201, answer


async def _stream_while(
    node: Member, console: Console, during: Callable[[], Awaitable[None]], seconds: float = 3.0
) -> str:
    """What the console's live inbox (/console/events) sends while `during` runs and `seconds` after."""
    received = bytearray()
    async with console.http.get(console.url + "/console/events", allow_redirects=False) as resp:
        assert resp.status == 200, await resp.text()

        async def reader() -> None:
            async for chunk in resp.content.iter_any():
                received.extend(chunk)

        task = asyncio.create_task(reader())
        await _second_officer_posts(node, "BEFORE")
        await asyncio.sleep(1.5)
        await during()
        await asyncio.sleep(seconds)
        task.cancel()
    return received.decode()


async def test_the_live_inbox_stops_sending_a_channel_to_an_officer_taken_off_it(
    node: Member, console: Console
) -> None:
    """It streamed new titles for up to 5 minutes after the officer lost the channel (found by a
    read-only review): the stream held the user as it was when it opened."""

    async def unassign_then_post() -> None:
        body = {"user": "officer", "assigned": False}
        status, answer, _ = await node.api("POST", f"/api/v1/channels/{OPEN}/users", user="admin", body=body)
        assert status == 200, answer
        assert (await console.get(f"/console/channels/{OPEN}"))[0] == 403
        await _second_officer_posts(node, "SECRET-AFTER-UNASSIGN")

    seen = await _stream_while(node, console, unassign_then_post)
    assert "BEFORE" in seen  # the stream worked until then
    assert "SECRET-AFTER-UNASSIGN" not in seen


async def test_the_live_inbox_of_a_signed_out_session_ends(node: Member, console: Console) -> None:
    async def sign_out_then_post() -> None:
        data = {"csrf": console.csrf}
        async with console.http.post(console.url + "/console/sign-out", data=data, allow_redirects=False) as resp:
            assert resp.status == 303
        await _second_officer_posts(node, "SECRET-AFTER-SIGNOUT")

    seen = await _stream_while(node, console, sign_out_then_post)
    assert "BEFORE" in seen
    assert "SECRET-AFTER-SIGNOUT" not in seen


# -- the live inbox does not keep a session alive ---------------------------------------------------

IDLE = dt.timedelta(minutes=30)  # SessionSettings.session_idle, the console's default


async def last_seen(member: Member) -> str:
    async with member.service.store.read() as conn:
        return str((await conn.execute(sa.select(console_sessions.c.last_seen))).scalar_one())


async def unused_for(member: Member, idle: dt.timedelta) -> str:
    """The session's last use set `idle` ago, as if the officer had left the workstation then (the
    30 minutes themselves are not waited for)."""
    stamp = timestamp(utc_now() - idle)

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        await conn.execute(sa.update(console_sessions).values(last_seen=stamp))

    await member.service.store.write(job)
    return stamp


async def test_an_open_live_inbox_does_not_keep_an_idle_session_alive(node: Member, console: Console) -> None:
    """An inbox left open on an unattended workstation stayed signed in until the 8-hour cap (found
    by a read-only review): the stream's check of the session at each keep-alive counted as use.
    Only the officer's own requests are use; the stream checks the session, and ends with it."""
    aged = await unused_for(node, IDLE - dt.timedelta(minutes=2))
    async with console.http.get(console.url + "/console/events", allow_redirects=False) as resp:
        assert resp.status == 200, await resp.text()
        # The first keep-alive comes after the stream has checked the session (and opening it did too).
        assert await asyncio.wait_for(resp.content.readline(), 10) == b": keep-alive\n"
        assert await last_seen(node) == aged  # neither counted as use

        assert (await console.get(f"/console/channels/{OPEN}"))[0] == 200
        assert await last_seen(node) > aged  # the officer's own request does

        await unused_for(node, IDLE + dt.timedelta(seconds=1))  # nobody touched the page since
        # The stream ends at its next keep-alive (every 15 s), and tells the page why.
        rest = await asyncio.wait_for(resp.content.read(), 30)
    assert rest.endswith(b"event: signed-out\ndata: {}\n\n"), rest
    async with node.service.store.read() as conn:
        assert (await conn.execute(sa.select(console_sessions))).all() == []  # the session is gone
    status, _ = await console.get(f"/console/channels/{OPEN}")
    assert status == 303  # to the sign-in page
    async with console.http.get(console.url + "/console/events", allow_redirects=False) as resp:
        assert resp.status == 303  # a reconnection is refused: the page does not look live any more


async def test_a_channels_live_inbox_takes_up_from_the_newest_of_all_the_officers_channels(
    node: Member, console: Console
) -> None:
    """The inbox of a channel with nothing newer than the others' bulletins (here: none at all)
    started its live stream, which follows every channel the officer reads, at that channel's
    newest: 0 for an empty one. Each load of the page then replayed the other channels' bulletins
    as "New alert", the whole store's for an empty channel (found by a read-only review)."""
    await _second_officer_posts(node, "Older than the page")
    await _second_officer_posts(node, "Also older than the page")
    newest = int(await node.service.follow.head(await node.service.users.get("officer")))
    assert newest > 0

    status, page = await console.get(f"/console/channels/{ENDED}")  # no bulletin in it
    assert status == 200, page
    after = re.search(r'data-live-after="(\d+)"', page)
    assert after is not None and int(after.group(1)) == newest  # before: 0

    # What the stream sends from there: a keep-alive, not the older bulletins as new.
    async with console.http.get(console.url + f"/console/events?after={after.group(1)}") as resp:
        assert resp.status == 200
        assert await asyncio.wait_for(resp.content.readline(), 20) == b": keep-alive\n"


async def test_a_form_refused_for_its_token_does_not_keep_the_session_alive(node: Member, console: Console) -> None:
    """A POST with a wrong CSRF token refreshed the session's idle time before it was refused, so
    a page on a sibling host auto-posting forms kept an officer's idle session alive (found by a
    read-only review). Refused, it changes nothing; with the token, it is the officer's use."""
    aged = await unused_for(node, dt.timedelta(minutes=10))
    form = {"csrf": "0" * 64}
    async with console.http.post(console.url + "/console/sign-out", data=form, allow_redirects=False) as resp:
        assert resp.status == 403, await resp.text()
    assert await last_seen(node) == aged  # before: refreshed

    async with console.http.post(
        console.url + "/console/sign-out", data={"csrf": console.csrf}, allow_redirects=False
    ) as resp:
        assert resp.status in (200, 303), await resp.text()
