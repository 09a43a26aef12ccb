"""An officer who leaves is locked out at once (`exchange users disable`), from the attacker's
side, on real nodes over TLS, SQLite and PostgreSQL: the API token is refused as an unknown one
is (401 problem+json), a console session already open is signed out at its next page, the console
password is refused with the same page as a wrong one, and a long poll and a live inbox stop
without handing out the next bulletin, and within seconds when none comes. `exchange users
enable` gives a new token, the old one staying refused; the last enabled admin cannot be
disabled; `users list` shows who is disabled.

Before `disable` existed, none of this could be done: rotating the token left console sessions
alive, setting a password left the token valid (found by a read-only review).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from typing import Any

import aiohttp
import sqlalchemy as sa

from exchange.node.tls import client_context
from exchange.service.follow import RECHECK
from exchange.service.sessions import Sessions
from exchange.service.users import User
from exchange.store import audit_log
from tests.conftest import Federation, MakeFederation, Member, console_session
from tests.test_cli_bad_input import one_line_error, run

PASSWORD = "a long passphrase for tests"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def exchange(*args: str) -> tuple[int, str, str]:
    """The `exchange` command in a process of its own, as an administrator runs it beside the node."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "exchange.cli", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def users(fed: Federation, *args: str) -> tuple[int, str, str]:
    command, *rest = args
    return await exchange("users", command, "--node", str(fed.folder / "nl-customs.toml"), *rest)


async def post(member: Member, title: str) -> str:
    status, posted, _ = await member.api(
        "POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": title}
    )
    assert status == 201, posted
    return str(posted["id"])


async def signin_page(member: Member, user: str, password: str) -> tuple[int, str]:
    """A sign-in attempt from a fresh browser: its status and page, with what varies per attempt
    (the form's CSRF token, the name typed back into the field) taken out."""
    ctx = client_context((member.config.keys_dir / "tls.crt").read_text())
    async with aiohttp.ClientSession(
        base_url=member.config.endpoint,
        connector=aiohttp.TCPConnector(ssl=ctx),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as http:
        async with http.get("/console/sign-in") as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "user": user, "password": password, "next": ""}
        async with http.post("/console/sign-in", data=form, allow_redirects=False) as resp:
            page = (await resp.text()).replace(token.group(1), "CSRF").replace(f'value="{user}"', 'value="NAME"')
            return resp.status, page


async def audited(member: Member, kind: str) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        entries = [json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]
    return [e for e in entries if e["event"] == kind]


async def test_a_disabled_officer_is_locked_out_everywhere_at_once(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    for user in ("officer", "admin"):
        await nl.service.users.set_password(user, PASSWORD, actor="test")
    old_token = nl.tokens["officer"]
    status, page, _ = await nl.api("GET", "/api/v1/follow?wait=0")
    assert status == 200, page

    async with (
        console_session(nl, "officer", PASSWORD) as officer,
        console_session(nl, "admin", PASSWORD) as admin,
        officer.get(f"/console/events?after={page['next']}") as live,
    ):
        assert live.status == 200 and live.content_type == "text/event-stream"
        assert await asyncio.wait_for(live.content.readuntil(b"\n\n"), 10) == b": keep-alive\n\n"
        waiting = asyncio.create_task(nl.api("GET", f"/api/v1/follow?after={page['next']}&wait=20"))
        await asyncio.sleep(0.3)
        assert not waiting.done()

        code, out, err = await users(fed, "disable", "officer")  # another process, as on the node's host
        assert (code, out) == (0, ""), err

        # The next bulletin of the officer's channel reaches neither follower: both stop.
        bid = await post(ke, "after the officer left")
        status, problem, ctype = await waiting
        assert (status, ctype) == (401, "application/problem+json"), problem
        rest = await asyncio.wait_for(live.content.read(), 20)
        assert b"event: signed-out" in rest and bid.encode() not in rest

        # The open console session is signed out at its next page; the admin's is not touched.
        async with officer.get("/console/channels", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/console/sign-in")
        async with admin.get("/console/admin", allow_redirects=False) as resp:
            assert resp.status == 200
            assert re.search(r'id="user-officer".*?>disabled<', await resp.text(), re.S)

    # The token is refused as a made-up one is: nothing tells that the user exists.
    status, problem, ctype = await nl.api("GET", "/api/v1/bulletins", token=old_token)
    assert (status, ctype) == (401, "application/problem+json")
    assert (status, problem) == (await nl.api("GET", "/api/v1/bulletins", token="x" * 43))[:2]
    status, me, _ = await nl.api("GET", "/api/v1/whoami", user="auditor")  # other users' tokens work
    assert (status, me["user"]) == (200, "auditor")

    # The password is refused with the very page a wrong password gets, and a name that is no user's.
    refused = await signin_page(nl, "officer", PASSWORD)
    assert refused[0] == 401 and "Wrong user name or password." in refused[1]
    assert refused == await signin_page(nl, "admin", "not the admin's password")
    assert refused == await signin_page(nl, "nobody", PASSWORD)

    [entry] = await audited(nl, "user.disabled")
    assert (entry["user"], entry["actor"]) == ("officer", "cli")
    code, out, _ = await users(fed, "list")
    assert code == 0 and re.search(r"^officer\tcontact-point\tdisabled since \d{4}-\d\d-\d\dT", out, re.M), out
    assert "admin\tadmin\n" in out
    code, out, _ = await users(fed, "list", "--json")
    shown = {u["name"]: u["disabled_at"] for u in json.loads(out)}
    assert shown["officer"] == entry["at"] and shown["admin"] is None


async def test_a_disabled_officers_waiting_followers_stop_within_seconds_with_no_bulletin(
    make_federation: MakeFederation,
) -> None:
    """Nothing is posted: the long poll (asked to wait 20 s) is answered 401 and the live inbox
    says signed-out within RECHECK seconds of the disabling, not at the end of the wait."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    await nl.service.users.set_password("officer", PASSWORD, actor="test")
    status, page, _ = await nl.api("GET", "/api/v1/follow?wait=0")
    assert status == 200, page
    async with (
        console_session(nl, "officer", PASSWORD) as officer,
        officer.get(f"/console/events?after={page['next']}") as live,
    ):
        assert await asyncio.wait_for(live.content.readuntil(b"\n\n"), 10) == b": keep-alive\n\n"
        waiting = asyncio.create_task(nl.api("GET", f"/api/v1/follow?after={page['next']}&wait=20"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        code, out, err = await users(fed, "disable", "officer")
        assert (code, out) == (0, ""), err
        disabled = asyncio.get_running_loop().time()
        status, problem, ctype = await asyncio.wait_for(waiting, RECHECK + 5)
        assert (status, ctype) == (401, "application/problem+json"), problem
        rest = await asyncio.wait_for(live.content.read(), RECHECK + 5)
        assert b"event: signed-out" in rest
        assert asyncio.get_running_loop().time() - disabled < RECHECK + 5  # not the 20 s wait


async def test_enable_gives_a_new_token_and_the_old_one_stays_refused(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    await nl.service.users.set_password("officer", PASSWORD, actor="test")
    old_token = nl.tokens["officer"]
    assert (await users(fed, "disable", "officer"))[0] == 0

    code, out, err = await users(fed, "enable", "officer")
    assert code == 0, err
    new_token = out.strip()
    assert len(out.splitlines()) == 1 and new_token != old_token
    assert "no console password" in err and "exchange users password" in err
    status, page, _ = await nl.api("GET", "/api/v1/bulletins", token=new_token)
    assert status == 200, page
    assert (await nl.api("GET", "/api/v1/bulletins", token=old_token))[0] == 401
    # The old password does not come back: the console needs a new one.
    assert (await signin_page(nl, "officer", PASSWORD))[0] == 401
    await nl.service.users.set_password("officer", PASSWORD + " anew", actor="test")
    async with (
        console_session(nl, "officer", PASSWORD + " anew") as officer,
        officer.get("/console/channels", allow_redirects=False) as resp,
    ):
        assert resp.status == 200
    [entry] = await audited(nl, "user.enabled")
    assert (entry["user"], entry["actor"]) == ("officer", "cli")


async def test_the_last_enabled_admin_cannot_be_disabled(make_federation: MakeFederation) -> None:
    """And the commands' other refusals: one line, a non-zero exit, nothing changed."""
    fed = await make_federation(start=False)
    node = str(fed.folder / "nl-customs.toml")
    one_line_error(await run("users", "disable", "--node", node, "admin"), "last enabled admin")
    assert (await run("users", "add", "--node", node, "deputy", "--role", "admin")).exit_code == 0
    assert (await run("users", "disable", "--node", node, "admin")).exit_code == 0
    one_line_error(await run("users", "disable", "--node", node, "deputy"), "'deputy' is the node's last enabled admin")
    one_line_error(await run("users", "disable", "--node", node, "admin"), "disabled already")
    one_line_error(await run("users", "token", "--node", node, "admin"), "disabled", "users enable")
    one_line_error(await run("users", "password", "--node", node, "admin", "--generate"), "disabled", "users enable")
    one_line_error(await run("users", "enable", "--node", node, "deputy"), "not disabled")
    one_line_error(await run("users", "disable", "--node", node, "nobody"), "no user 'nobody'")
    one_line_error(await run("users", "enable", "--node", node, "nobody"), "no user 'nobody'")
    assert (await run("users", "enable", "--node", node, "admin")).exit_code == 0
    assert (await run("users", "disable", "--node", node, "deputy")).exit_code == 0  # admin is enabled again
    listed = await run("users", "list", "--node", node)
    lines = dict(line.split("\t", 1) for line in listed.output.splitlines())
    assert lines["admin"] == "admin" and lines["deputy"].startswith("admin\tdisabled since ")


async def test_a_session_a_racing_sign_in_wrote_after_the_disabling_is_refused(make_federation: MakeFederation) -> None:
    """A sign-in whose password was checked just before the disabling commits writes its session
    just after it: the session is refused at its first request, as the user is disabled."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    sessions = Sessions(nl.service.store)
    await nl.service.users.disable("officer", actor="test")
    late = await sessions.open(User("officer", "contact-point", frozenset({"c2c"})), "127.0.0.1")
    assert await sessions.find(late.secret) is None


async def test_an_administrator_disables_and_enables_an_officer_on_the_console(make_federation: MakeFederation) -> None:
    """The administration page's buttons do what `users disable` and `users enable` do, as the
    signed-in administrator (audited with its name); a contact point cannot use them, the last
    enabled admin cannot disable itself, and a value that is neither 0 nor 1 is refused."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    for user in ("officer", "admin"):
        await nl.service.users.set_password(user, PASSWORD, actor="test")
    old_token = nl.tokens["officer"]

    async def form(http: aiohttp.ClientSession, page: str = "/console/admin") -> str:
        async with http.get(page) as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        return token.group(1)

    async def disabling(http: aiohttp.ClientSession, name: str, value: str) -> tuple[int, str]:
        data = {"csrf": await form(http), "disabled": value}
        async with http.post(f"/console/admin/users/{name}/disabled", data=data, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async with (
        console_session(nl, "officer", PASSWORD) as officer,
        console_session(nl, "admin", PASSWORD) as admin,
    ):
        async with admin.get("/console/admin") as resp:
            row = re.search(r'<tr id="user-officer">.*?</tr>', await resp.text(), re.S)
        assert row is not None and 'name="disabled" value="1"' in row.group(0) and "Disable<" in row.group(0)
        # A contact point may not, whatever it posts: refused, nothing changed.
        status, page = await disabling(officer, "admin", "1")
        assert status == 403, page[-300:]
        # Neither 0 nor 1: refused, nothing changed.
        assert (await disabling(admin, "officer", "yes"))[0] == 422
        assert (await nl.api("GET", "/api/v1/bulletins", token=old_token))[0] == 200
        # The last enabled admin cannot lock itself out, here either.
        status, page = await disabling(admin, "admin", "1")
        assert status == 409 and "last enabled admin" in page, page[-300:]

        status, _ = await disabling(admin, "officer", "1")
        assert status == 303
        async with officer.get("/console/channels", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/console/sign-in")
        assert (await nl.api("GET", "/api/v1/bulletins", token=old_token))[0] == 401
        assert (await signin_page(nl, "officer", PASSWORD))[0] == 401
        async with admin.get("/console/admin") as resp:
            row = re.search(r'<tr id="user-officer">.*?</tr>', await resp.text(), re.S)
        assert row is not None and ">disabled<" in row.group(0) and "since " in row.group(0)
        assert 'name="disabled" value="0"' in row.group(0) and "Enable<" in row.group(0)
        assert (await disabling(admin, "nobody", "1"))[0] == 404

        status, _ = await disabling(admin, "officer", "0")
        assert status == 303
        # Enabled with a new token, not shown here, and no password until one is set.
        assert (await nl.api("GET", "/api/v1/bulletins", token=old_token))[0] == 401
        assert (await signin_page(nl, "officer", PASSWORD))[0] == 401
        assert (await nl.service.users.get("officer")).disabled_at is None

    assert [(e["user"], e["actor"]) for e in await audited(nl, "user.disabled")] == [("officer", "admin")]
    assert [(e["user"], e["actor"]) for e in await audited(nl, "user.enabled")] == [("officer", "admin")]
    rejected = [
        (e["status"], e.get("user"), e["path"].rsplit("/", 2)[-2])
        for e in await audited(nl, "request.rejected")
        if e["method"] == "POST" and e["path"].endswith("/disabled")
    ]
    assert rejected == [
        (403, "officer", "admin"),
        (422, "admin", "officer"),
        (409, "admin", "admin"),
        (404, "admin", "nobody"),
    ]
