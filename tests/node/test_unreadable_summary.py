"""A bulletin row whose stored summary cannot be read (the database edited by hand, or damaged), on
real nodes, SQLite and PostgreSQL. One such row made the whole inbox, search and client API list an
internal error for every user. It is now listed as an unreadable summary (its kind says so), the
other rows as before; TAXII, webhooks and STIX exports withhold it, since the node cannot say what
it is; opening it checks it against its signed envelope as any read does."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from exchange.protocol.stix import collection_id
from exchange.store import bulletins
from tests.conftest import MakeFederation, console_session, free_port
from tests.node.test_taxii import bulletin, bulletin_ids, get, off_loop, post
from tests.node.test_webhooks import Receiver

PASSWORD = "a long passphrase for tests"
ALERT = {"kind": "alert", "title": "x"}
DAMAGE: dict[str, dict[str, str | None]] = {
    "not JSON": {"summary": "{not json"},
    "not an object": {"summary": "[1, 2]"},
    "nested past any parser's depth": {"summary": "[" * 100_000 + "]" * 100_000},
    "an unknown kind": {"summary": json.dumps({"kind": "memo", "title": "x"})},
    "a title that is not text": {"summary": json.dumps({"kind": "alert", "title": ["x"]})},
    # shaped like a summary but not as its readers expect (STIX patterns, requests' answers)
    "an indicator that is not text": {"summary": json.dumps(ALERT | {"indicators": {"flights": [7]}})},
    "indicators as a list": {"summary": json.dumps(ALERT | {"indicators": [1]})},
    "a reference that is a list": {"summary": json.dumps(ALERT | {"references": [["a"]]})},
    "a due date that is a number": {"summary": json.dumps(ALERT | {"due": 7})},
    # a row kept without a summary or search text (before revision 0005) whose content is damaged
    "no summary, content not JSON": {"summary": None, "search_text": None, "content": "{not json"},
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_row_whose_summary_cannot_be_read_is_listed_as_such_and_never_leaves(
    make_federation: MakeFederation, damage: str
) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        status, _, _ = await nl.api("POST", "/api/v1/channels/c2c/webhooks", user="admin", body={"url": url})
        assert status == 201
        await nl.service.webhooks.close()  # announced only when this test asks, after the damage
        bids = [await post(fed, bulletin(i)) for i in range(3)]
        async with nl.service.store.engine.begin() as conn:
            await conn.execute(sa.update(bulletins).where(bulletins.c.id == bids[1]).values(**DAMAGE[damage]))

        status, listed, _ = await nl.api("GET", "/api/v1/bulletins")
        assert status == 200, listed
        kinds = {b["id"]: b["kind"] for b in listed["items"]}
        assert kinds == {bids[0]: "alert", bids[1]: "unreadable", bids[2]: "alert"}, listed
        status, found, _ = await nl.api("GET", "/api/v1/bulletins?q=bulletin")
        assert status == 200, found
        status, ids, _ = await nl.api("GET", f"/api/v1/bulletin-ids?prefix={bids[1][:8]}")
        bare = DAMAGE[damage]["summary"] is None
        kind = None if bare else "unreadable"  # this list shows summaries only
        assert status == 200 and [m.get("kind") for m in ids["matches"]] == [kind], ids

        await nl.service.users.set_password("officer", PASSWORD, actor="test")
        async with console_session(nl, "officer", PASSWORD) as http:
            for page in ("/console/channels", "/console/channels/c2c", "/console/search?q=bulletin"):
                async with http.get(page) as resp:
                    text = await resp.text()
                    # a row without search text whose content cannot be read matches no search
                    listed_here = page == "/console/channels/c2c" or (page.startswith("/console/search") and not bare)
                    assert resp.status == 200 and ("Unreadable summary" in text) == listed_here, page

        auth = {"Authorization": f"Bearer {nl.tokens['officer']}"}
        objects = f"/taxii2/exchange/collections/{collection_id('nl-customs', 'c2c')}/objects/"
        r = await off_loop(lambda: get(fed, objects, headers=auth))
        assert r.status_code == 200 and bulletin_ids(r.json()["objects"]) == [bids[0], bids[2]], r.text
        status, bundle, _ = await nl.api("GET", "/api/v1/channels/c2c/stix")
        assert status == 200 and bulletin_ids(bundle["objects"]) == [bids[0], bids[2]]

        assert await nl.service.webhooks.deliver_due() == 2
        assert receiver.ids() == [bids[0], bids[2]]
    finally:
        await receiver.stop()
