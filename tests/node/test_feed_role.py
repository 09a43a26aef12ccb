"""The `feed` role: an analysts' platform's user, that takes what may leave the node (TAXII
collections and STIX exports, docs/stix.md) and nothing else.

Before it, a platform was given a contact point's token, and that token read every bulletin of its
channels in full through the client API, TLP:RED and no-onward-sharing ones with their attachments,
and could post in them: the rule of what leaves bound the TAXII routes, not the credential (found
by a read-only review). Real nodes over HTTPS, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import aiohttp
import pytest

from exchange.errors import Forbidden
from exchange.node.tls import client_context
from exchange.protocol.stix import collection_id
from exchange.service.sessions import Sessions
from exchange.service.taxii import Filters
from tests.conftest import MakeFederation, console_session
from tests.node.test_taxii import bulletin, bulletin_ids, post

PASSWORD = "a long and secret passphrase 42"


async def test_a_feed_takes_what_may_leave_the_node_and_nothing_else(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    users = nl.service.users
    token = await users.add("platform", "feed", actor="test")
    await users.assign("platform", "c2c", assigned=True, actor="test")
    green = await post(fed, bulletin(1))
    red = await post(fed, bulletin(2, "RED"))

    # What may leave: the TAXII collection and the STIX export, withheld bulletins left out.
    feed = await users.authenticate(token)
    cid = collection_id("nl-customs", "c2c")
    assert [c.id for c in nl.service.taxii.collections(feed)] == [cid]
    page = await nl.service.taxii.read(feed, cid, resource="objects", limit=100, next_token=None, filters=Filters())
    assert bulletin_ids([i.obj for i in page.items]) == [green]
    status, exported, _ = await nl.api("GET", "/api/v1/channels/c2c/stix", token=token)
    assert status == 200 and bulletin_ids(exported["objects"]) == [green], exported

    # Nothing else: the client API refuses it (403), whatever the route, the withheld bulletin too.
    for method, path, body in (
        ("GET", "/api/v1/bulletins", None),
        ("GET", f"/api/v1/bulletins/{red}", None),
        ("GET", f"/api/v1/bulletins/{green}", None),
        ("GET", "/api/v1/channels", None),
        ("GET", "/api/v1/channels/c2c", None),
        ("POST", "/api/v1/channels/c2c/bulletins", {"kind": "alert", "title": "from the platform"}),
        ("GET", "/api/v1/whoami", None),
        ("GET", "/api/v1/audit/log", None),
    ):
        status, answer, _ = await nl.api(method, path, token=token, body=body)
        assert status == 403 and "feed" in answer["detail"], (path, status, answer)

    # Nor the console, whatever its password: the sign-in form says why (403).
    await users.set_password("platform", PASSWORD, actor="test")
    with pytest.raises(Forbidden, match="no console"):
        await Sessions(nl.service.store).sign_in("platform", PASSWORD, "127.0.0.1")
    ctx = client_context((nl.config.keys_dir / "tls.crt").read_text())
    async with aiohttp.ClientSession(
        base_url=nl.config.endpoint, connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with http.get("/console/sign-in") as resp:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert csrf is not None
        form = {"csrf": csrf.group(1), "user": "platform", "password": PASSWORD, "next": ""}
        async with http.post("/console/sign-in", data=form, allow_redirects=False) as resp:
            assert resp.status == 403 and "has no console" in await resp.text()

    # The administrator's console shows it with its channels, not as one who administers the node.
    await users.set_password("admin", PASSWORD, actor="test")
    async with console_session(nl, "admin", PASSWORD) as http, http.get("/console/admin") as resp:
        admin_page = await resp.text()
    row = admin_page.split('id="user-platform"', 1)[1].split("</tr>", 1)[0]
    assert "c2c" in row and "administers the node" not in row, row
