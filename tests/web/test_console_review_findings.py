"""Four console findings of a read-only review, on real nodes over TLS (SQLite and PostgreSQL).

1. A form whose named charset (unicode_escape) decodes to lone surrogates gave a 500 on sign-in,
   password and compose forms, and "add user" created the user before its password failed, so
   that it could neither sign in nor be added again. Now: 422, nothing stored; and a user and its
   console password are added in one transaction.
2. An answer to a TLP:RED or no-onward bulletin carried that bulletin's title under the channel's
   default TLP (AMBER), no-onward unticked: posted as offered, the title went out to every feed.
   Now the answer starts with the stricter handling.
3. A feed's sign-in, refused with its correct password (a feed has no console), was audited nowhere.
4. A link (`/console/admin?changed=c2c`) made the admin page claim a channel change nobody made.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from exchange.errors import InvalidInput
from exchange.model import Bulletin
from exchange.service.sessions import Sessions
from exchange.service.users import add_user, set_password
from exchange.store import bulletins, user_passwords, users
from tests.conftest import Federation
from tests.node.test_taxii import bulletin
from tests.web import test_hostile_console as hostile
from tests.web.test_hostile_console import CSRF, PASSWORD, audit_since, stored, tls

fed, console = hostile.fed, hostile.console  # the fixtures: nl-customs with passwords, signed-in users

ESCAPED = "application/x-www-form-urlencoded; charset=unicode_escape"
SURROGATE = "\\ud800" + "a" * 20  # decoded by unicode_escape to a lone surrogate and 20 letters


async def test_forms_that_decode_to_lone_surrogates_get_a_422_and_store_nothing(fed: Federation, console: Any) -> None:
    nl = fed["nl-customs"]
    url = nl.config.endpoint
    before = await stored(nl)
    async with aiohttp.ClientSession(connector=tls(nl), cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url + "/console/sign-in") as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        for body in (f"user=officer&password={SURROGATE}", f"user=off{SURROGATE}&password={PASSWORD}"):
            data = f"csrf={token.group(1)}&{body}".encode()
            async with http.post(
                url + "/console/sign-in", data=data, headers={"Content-Type": ESCAPED}, allow_redirects=False
            ) as resp:
                assert resp.status == 422, (body, await resp.text())
    assert await stored(nl) == before
    admin, officer = await console("admin"), await console("officer")
    before = await stored(nl)  # with their sessions
    forms = [
        (admin, "/console/admin/users", f"name=newbie&role=contact-point&password={SURROGATE}"),
        (admin, "/console/admin/users/officer/password", f"password={SURROGATE}"),
        (officer, "/console/account/password", f"current={SURROGATE}&new={PASSWORD}x&again={PASSWORD}x"),
        (officer, "/console/compose", f"channel=c2c&kind=alert&tlp=AMBER&title={SURROGATE}"),
    ]
    for who, path, body in forms:
        size = nl.service.store.audit_size
        status, page, _ = await who.post(path, f"csrf={who.csrf}&{body}".encode(), ESCAPED)
        assert status == 422, (path, status, page[-400:])
        assert [e["status"] for e in await audit_since(nl, size) if e["event"] == "request.rejected"] == [422]
        assert await stored(nl) == before, path
    # The good case next to it: the same user added with a plain form.
    form = {"csrf": admin.csrf, "name": "newbie", "role": "contact-point", "password": PASSWORD}
    assert (await admin.post("/console/admin/users", form))[0] == 303
    async with nl.service.store.read() as conn:
        assert await conn.scalar(sa.select(user_passwords.c.user).where(user_passwords.c.user == "newbie")) == "newbie"


async def test_a_user_whose_password_fails_is_not_left_behind(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    nl = fed["nl-customs"]
    admin = await nl.service.users.get("admin")

    def broken(password: str) -> str:
        raise InvalidInput("the hash failed")

    monkeypatch.setattr("exchange.service.users.hash_password", broken)
    with pytest.raises(InvalidInput):
        await Sessions(nl.service.store).add_person(admin, "newbie", "contact-point", PASSWORD)
    async with nl.service.store.read() as conn:
        assert await conn.scalar(sa.select(users.c.name).where(users.c.name == "newbie")) is None


def offered(page: str) -> tuple[str, bool]:
    """The TLP selected in a compose form, and whether no-onward sharing is ticked."""
    tlp = re.search(r'<option value="([A-Z+]+)" selected>', page)
    assert tlp is not None
    onward = re.search(r'<input type="checkbox" id="no_onward_sharing"[^>]*>', page)
    assert onward is not None
    return tlp.group(1), " checked" in onward.group(0)


async def test_an_answer_starts_with_the_stricter_handling_of_what_it_answers(fed: Federation, console: Any) -> None:
    nl = fed["nl-customs"]
    author = await nl.service.users.get("officer")
    red = await nl.service.post(author, "c2c", Bulletin.model_validate(bulletin(1, "RED", onward=True)))
    green = await nl.service.post(author, "c2c", Bulletin.model_validate(bulletin(2, "GREEN")))
    officer = await console("officer")
    status, page, _ = await officer.get(f"/console/compose?reply={red.id}")
    assert status == 200 and "Re: bulletin 1 RED" in page
    assert offered(page) == ("RED", True)  # before: the channel's AMBER, unticked
    # The good case: an answer to a less restricted bulletin keeps the channel's default.
    status, page, _ = await officer.get(f"/console/compose?reply={green.id}")
    default = nl.service.channels.state("c2c").default_handling.tlp
    assert default in ("AMBER", "AMBER+STRICT")  # stricter than GREEN: the channel's is kept
    assert status == 200 and offered(page) == (default, False)
    # A stored label that is no TLP (the row edited by hand): the answer starts at the strictest.
    async with nl.service.store.engine.begin() as conn:
        await conn.execute(sa.update(bulletins).where(bulletins.c.id == green.id).values(tlp="PURPLE"))
    status, page, _ = await officer.get(f"/console/compose?reply={green.id}")
    assert status == 200 and offered(page) == ("RED", False)


async def test_a_feeds_refused_sign_in_is_audited(fed: Federation) -> None:
    nl = fed["nl-customs"]
    await add_user(nl.service.store, "platform", "feed", actor="test")
    await set_password(nl.service.store, "platform", PASSWORD, actor="test")
    size = nl.service.store.audit_size
    url = nl.config.endpoint
    async with aiohttp.ClientSession(connector=tls(nl), cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url + "/console/sign-in") as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "user": "platform", "password": PASSWORD, "next": ""}
        async with http.post(url + "/console/sign-in", data=form, allow_redirects=False) as resp:
            assert resp.status == 403
    rejected = [e for e in await audit_since(nl, size) if e["event"] == "request.rejected"]
    assert [(e["status"], e.get("user")) for e in rejected] == [(403, "platform")]  # before: nothing


async def test_a_channel_change_is_claimed_only_after_one(fed: Federation, console: Any) -> None:
    admin = await console("admin")
    said = "The owner node has signed the change"
    assert said not in (await admin.get("/console/admin?changed=c2c"))[1]  # before: claimed
    form = {"csrf": admin.csrf, "node": "ke-customs", "rights": ["read", "post"]}
    async with admin.http.post(admin.url + "/console/admin/channels/c2c/rights", data=form) as resp:  # redirects
        assert resp.status == 200 and resp.url.path == "/console/admin"
        assert said in await resp.text()
    assert said not in (await admin.get("/console/admin?changed=c2c"))[1]  # said once
