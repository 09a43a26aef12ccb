"""The web console in a real browser (Debian's chromium driven by Playwright) against real nodes over TLS.

1. A contact point at a Customs node posts to the Customs + aviation channel; a contact point at
   the aviation node sees it unread and opens it; an auditor at the first node traces it across
   nodes, open receipt included.
2. The console enforces the API's rules: auditors never see a bulletin's content, a contact point
   sees only their channels, a form without its CSRF token is refused, wrong passwords are
   refused and then rate-limited.
3. With EXCHANGE_SCREENSHOTS=1 the first test writes the main pages to docs/screenshots/.

The browser trusts the node's self-signed certificate through `ignore_https_errors`: the node's
certificate is pinned for partner nodes (the roster), not for browsers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from playwright.async_api import expect

from exchange.cli.main import cli
from exchange.config import NodeConfig
from exchange.errors import Unauthorized
from exchange.keystore import read_file
from exchange.node.tls import client_context
from exchange.provision import init_federation
from exchange.service.users import add_user, assign, set_password, verify_password
from exchange.store import Store, audit_log, bulletins, console_sessions, receipts
from tests.conftest import (
    DEFAULT_NODES,
    Federation,
    MakeFederation,
    Member,
    console_session,
    eventually,
    write_federation,
)

SCREENSHOTS = os.environ.get("EXCHANGE_SCREENSHOTS") == "1"
SHOTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PASSWORD = "a long passphrase for tests"
C2A = "c2a-air-cargo-security"
C2C = "c2c-cargo-fraud"
NODES = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "gb-avsec", "wco-rilo")}
CHANNELS = [
    {
        "id": C2A,
        "owner": "nl-customs",
        "agencies": ["customs", "aviation-security", "international"],
        "members": {
            "nl-customs": ["read", "post", "admin"],
            "ke-customs": ["read", "post"],
            "gb-avsec": ["read", "post"],
            "wco-rilo": ["read", "post"],
        },
    },
    {
        "id": C2C,
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
    },
]
TITLE = "IED components concealed in toner cartridges"
BODY = "Consignments routed via NBO; X-ray images show wiring inside toner cartridges."
XRAY = bytes(range(256)) * 8  # stands in for an X-ray image: every byte value


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def fed(make_federation: MakeFederation) -> Federation:
    """The four sample administrations, a Customs + aviation channel and a Customs-only one."""
    federation = await make_federation(nodes=NODES, channels=CHANNELS)
    for node, user in (
        ("nl-customs", "officer"),
        ("nl-customs", "auditor"),
        ("nl-customs", "admin"),
        ("gb-avsec", "officer"),
    ):
        await set_password(federation[node].service.store, user, PASSWORD, actor="test")
    return federation


Shot = Callable[[Any, str], Awaitable[None]]


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Shot:
    """shot(page, name): with EXCHANGE_SCREENSHOTS=1 (and on SQLite only), write docs/screenshots/name.png."""
    wanted = SCREENSHOTS and "sqlite" in request.node.name

    async def take(page: Any, name: str) -> None:
        if wanted:
            SHOTS_DIR.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS_DIR / f"{name}.png"), full_page=True)

    return take


async def new_page(browser: Any) -> Any:
    context = await browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    return await context.new_page()


async def sign_in(page: Any, member: Member, user: str, password: str = PASSWORD) -> None:
    await page.goto(member.config.endpoint + "/console/")
    await page.get_by_label("User name").fill(user)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def goto(page: Any, member: Member, path: str) -> Any:
    return await page.goto(member.config.endpoint + path)


async def holds(member: Member, bid: str) -> bool:
    async with member.service.store.read() as conn:
        return (await conn.scalar(sa.select(bulletins.c.id).where(bulletins.c.id == bid))) is not None


async def count(member: Member, table: sa.Table) -> int:
    async with member.service.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def audit_events(member: Member) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        return [json.loads(r) for r in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]


async def assert_labelled(page: Any) -> None:
    """Every visible form control has a label (its own, aria-label or aria-labelledby)."""
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                           && !e.getAttribute('aria-labelledby') && !(e.tagName === 'BUTTON' && e.innerText.trim()))
              .map(e => e.outerHTML)"""
    )
    assert unlabelled == []


async def post_by_api(member: Member, channel: str, **fields: Any) -> str:
    body = {"kind": "alert", "title": TITLE, "body": BODY, **fields}
    status, answer, _ = await member.api("POST", f"/api/v1/channels/{channel}/bulletins", body=body)
    assert status == 201, answer
    return str(answer["id"])


# -- 1. end to end across nodes -------------------------------------------------------------------


async def test_post_at_customs_open_at_aviation_trace_at_customs(fed: Federation, browser: Any, shot: Shot) -> None:
    nl, gb = fed["nl-customs"], fed["gb-avsec"]

    # A contact point at the Dutch Customs node posts to the Customs + aviation channel.
    officer = await new_page(browser)
    await goto(officer, nl, "/console/")
    await expect(officer.get_by_role("heading", name="Sign in")).to_be_visible()
    await shot(officer, "sign-in")
    # By keyboard alone: the user name field has the focus, Tab moves on, Enter sends.
    await officer.keyboard.type("officer")
    await officer.keyboard.press("Tab")
    await officer.keyboard.type(PASSWORD)
    await officer.keyboard.press("Enter")
    await expect(officer.get_by_role("heading", name="Your channels")).to_be_visible()
    await officer.get_by_role("link", name=C2A).click()
    await officer.get_by_role("link", name="Compose a bulletin").click()
    await officer.get_by_label("Kind").select_option("threat-bulletin")
    await officer.get_by_label("Title").fill(TITLE)
    await officer.get_by_label("Text").fill(BODY)
    await officer.get_by_label("Traffic Light Protocol label").select_option("AMBER")
    await officer.get_by_label("Air waybill numbers").fill("176-12345675, 17612345686")
    await officer.get_by_label("HS codes").fill("8443.99")
    await officer.get_by_label("Airports").fill("nbo ams")
    await officer.get_by_label("Flights").fill("KQ100")
    await officer.get_by_label("Companies and consignees").fill("Toner Logistics Ltd")
    await officer.get_by_label("Files").set_input_files(
        [{"name": "xray-cartridge.png", "mimeType": "image/png", "buffer": XRAY}]
    )
    await assert_labelled(officer)
    await shot(officer, "compose")
    await officer.get_by_role("button", name="Sign, encrypt and post").click()
    await expect(officer.get_by_role("status")).to_contain_text("Your bulletin is posted")
    href = await officer.get_by_role("link", name="Open it").get_attribute("href")
    bid = href.rsplit("/", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{64}", bid)

    # A contact point at the aviation security node sees it, unread, and opens it.
    await eventually(lambda: holds(gb, bid), what="the bulletin at gb-avsec")
    aviation = await new_page(browser)
    await sign_in(aviation, gb, "officer")
    await expect(aviation.get_by_role("heading", name="Your channels")).to_be_visible()
    await expect(aviation.locator("tr.unread")).to_contain_text(C2A)
    await shot(aviation, "channels")
    await aviation.get_by_role("link", name=C2A).click()
    row = aviation.locator("tr", has_text=TITLE)
    await expect(row).to_contain_text("Unread")
    await shot(aviation, "inbox")
    await row.get_by_role("link", name=TITLE).click()
    await expect(aviation.get_by_role("heading", name=TITLE)).to_be_visible()
    await expect(aviation.locator(".tlp-banner")).to_contain_text("TLP:AMBER")
    await expect(aviation.locator("#signature")).to_contain_text("Signature verified")
    await expect(aviation.locator("#signature")).to_contain_text("Test nl-customs")
    await expect(aviation.locator(".body")).to_have_text(BODY)
    await expect(aviation.locator("dl.indicators")).to_contain_text("176-12345686")  # typed without the dash
    await expect(aviation.locator("dl.indicators")).to_contain_text("NBO")
    # The attachment travelled encrypted with the bulletin and downloads byte for byte.
    async with aviation.expect_download() as download_info:
        await aviation.get_by_role("link", name="xray-cartridge.png").click()
    download = await download_info.value
    assert download.suggested_filename == "xray-cartridge.png"
    assert Path(await download.path()).read_bytes() == XRAY
    await shot(aviation, "bulletin")

    # It answers with feedback that refers to the bulletin: references show both ways.
    await aviation.get_by_role("link", name="Answer or give feedback").click()
    await expect(aviation.get_by_label("Reply or feedback to")).to_have_value(bid)
    await aviation.get_by_label("Text").fill("Screened 14 consignments at LHR; one positive.")
    await aviation.get_by_role("button", name="Sign, encrypt and post").click()
    await expect(aviation.get_by_role("status")).to_contain_text("Your bulletin is posted")
    await goto(aviation, gb, f"/console/channels/{C2A}")
    await expect(aviation.locator("tr", has_text=TITLE).first).not_to_contain_text("Unread")

    # The open receipt travels back to the author node, whose contact point sees it with the answer.
    async def opened_receipt_home() -> bool:
        async with nl.service.store.read() as conn:
            found = await conn.scalar(
                sa.select(receipts.c.at).where(
                    receipts.c.bulletin_id == bid, receipts.c.node == "gb-avsec", receipts.c.status == "opened"
                )
            )
        return found is not None

    await eventually(opened_receipt_home, what="gb-avsec's opened receipt at nl-customs")
    await eventually(lambda: count_referrers(nl, bid), what="the answer at nl-customs")
    await goto(officer, nl, f"/console/bulletins/{bid}")
    receipt_row = officer.locator("table.receipts tr", has_text="gb-avsec")
    await expect(receipt_row.locator("td").nth(1)).to_contain_text("UTC")  # opened, with its time
    await expect(officer.locator("section", has_text="Referred to by")).to_contain_text("Re: " + TITLE)
    await shot(officer, "bulletin-author")

    # The search finds it by an indicator, without opening it.
    await goto(officer, nl, "/console/search?q=176-12345675")
    await expect(officer.locator("table.list tbody tr")).to_have_count(1)
    await shot(officer, "search")

    # An auditor at the first node traces it across the nodes, open receipt included.
    auditor = await new_page(browser)
    await sign_in(auditor, nl, "auditor")
    await expect(auditor.get_by_role("heading", name="Audit log")).to_be_visible()
    await expect(auditor.locator("table.audit")).to_contain_text("bulletin.opened_by")
    await assert_labelled(auditor)
    await shot(auditor, "audit-log")
    await auditor.get_by_role("link", name="Trace", exact=True).click()
    await auditor.get_by_label("Bulletin id").fill(bid)
    await auditor.get_by_role("button", name="Trace").click()
    lanes = auditor.locator("table.lanes")
    await expect(lanes.locator("thead")).to_contain_text("gb-avsec")
    await expect(lanes).to_contain_text("bulletin.posted")
    await expect(lanes).to_contain_text("signed receipt from gb-avsec: opened 20")  # in nl-customs's log
    await expect(lanes).to_contain_text("opened by officer")  # gb-avsec's own, proven log
    chain = auditor.locator("table.chain tr", has_text="gb-avsec")
    await expect(chain.locator("td").nth(3)).to_contain_text("opened by officer")
    await expect(auditor.locator("body")).not_to_contain_text(BODY)
    await shot(auditor, "trace")

    # An entry's inclusion proof, and the checkpoint and witness status.
    await auditor.locator("table.lanes a").first.click()
    await expect(auditor.locator(".proof")).to_contain_text("Proven")
    await shot(auditor, "audit-entry")
    await auditor.get_by_role("link", name="Checkpoints").click()
    await expect(auditor.locator("#latest-title")).to_be_visible()
    await auditor.get_by_role("button", name="Sign a checkpoint now and ask the witnesses").click()
    await expect(auditor.get_by_role("status")).to_contain_text("gb-avsec co-signed")
    await shot(auditor, "checkpoints")

    # An administrator sees membership, users and partners.
    admin = await new_page(browser)
    await sign_in(admin, nl, "admin")
    await expect(admin.get_by_role("heading", name="Administration of nl-customs")).to_be_visible()
    await assert_labelled(admin)
    await shot(admin, "admin")
    await admin.get_by_role("link", name="Partners").click()
    await expect(admin.locator("table.list")).to_contain_text("gb-avsec")
    await shot(admin, "peers")


async def count_referrers(member: Member, bid: str) -> bool:
    async with member.service.store.read() as conn:
        rows = await conn.scalars(sa.select(bulletins.c.content).where(bulletins.c.content.contains(bid)))
        return any(bid in json.loads(c).get("references", []) for c in rows)


# -- 2. the same rules as the API -----------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # the rules do not depend on the database
async def test_console_enforces_the_api_rules(fed: Federation, browser: Any, shot: Shot) -> None:
    nl, gb = fed["nl-customs"], fed["gb-avsec"]
    in_c2a = await post_by_api(nl, C2A)
    in_c2c = await post_by_api(nl, C2C, title="Undervalued electronics via AMS", body="Declared 90% below market.")
    store = nl.service.store
    await add_user(store, "clerk", "contact-point")
    await assign(store, "clerk", C2C, assigned=True, actor="test")
    await set_password(store, "clerk", PASSWORD, actor="test")

    # An auditor never sees a bulletin body, even by typing the URLs.
    auditor = await new_page(browser)
    await sign_in(auditor, nl, "auditor")
    await expect(auditor.get_by_role("heading", name="Audit log")).to_be_visible()
    for path in (
        f"/console/bulletins/{in_c2a}",
        f"/console/channels/{C2A}",
        "/console/search?q=toner",
        "/console/compose",
    ):
        response = await goto(auditor, nl, path)
        assert response.status == 403, path
        await expect(auditor.locator("h1")).to_contain_text("Forbidden")
        await expect(auditor.locator("body")).not_to_contain_text(BODY)
        await expect(auditor.locator("body")).not_to_contain_text(TITLE)
    await shot(auditor, "error-403")
    await goto(auditor, nl, f"/console/audit/trace?bulletin={in_c2a}")
    await expect(auditor.locator("table.lanes")).to_contain_text("bulletin.posted")
    await expect(auditor.locator("body")).not_to_contain_text(TITLE)
    await expect(auditor.locator("body")).not_to_contain_text(BODY)

    # A contact point sees only their own channels.
    clerk = await new_page(browser)
    await sign_in(clerk, nl, "clerk")
    await expect(clerk.get_by_role("heading", name="Your channels")).to_be_visible()
    await expect(clerk.get_by_role("link", name=C2C)).to_be_visible()
    await expect(clerk.locator("main")).not_to_contain_text(C2A)
    assert (await goto(clerk, nl, f"/console/channels/{C2A}")).status == 403
    assert (await goto(clerk, nl, f"/console/bulletins/{in_c2a}")).status == 404
    await expect(clerk.locator("body")).not_to_contain_text(BODY)
    await goto(clerk, nl, "/console/search?q=toner")
    await expect(clerk.get_by_role("status")).to_contain_text("No bulletin matches")
    assert (await goto(clerk, nl, f"/console/bulletins/{in_c2c}")).status == 200
    for path in ("/console/admin", "/console/audit", "/console/audit/trace"):
        assert (await goto(clerk, nl, path)).status == 403, path
    aviation = await new_page(browser)
    await sign_in(aviation, gb, "officer")
    await expect(aviation.get_by_role("link", name=C2A)).to_be_visible()
    await expect(aviation.locator("main")).not_to_contain_text(C2C)

    # A form without its CSRF token is refused, and nothing is posted.
    officer = await new_page(browser)
    await sign_in(officer, nl, "officer")
    await goto(officer, nl, f"/console/compose?channel={C2A}")
    await officer.get_by_label("Title").fill("Forged")
    await officer.locator("form.compose input[name=csrf]").evaluate("e => e.remove()")
    before = await count(nl, bulletins)
    await officer.get_by_role("button", name="Sign, encrypt and post").click()
    await expect(officer.locator("h1")).to_contain_text("Forbidden")
    await expect(officer.locator(".detail")).to_contain_text("security token")
    assert await count(nl, bulletins) == before
    # ... and so is a POST from another site, even with a session cookie.
    forged = await officer.request.post(
        nl.config.endpoint + "/console/sign-out", form={"csrf": "guess"}, headers={"Origin": "https://evil.example"}
    )
    assert forged.status == 403
    await goto(officer, nl, "/console/channels")
    await expect(officer.get_by_role("heading", name="Your channels")).to_be_visible()  # still signed in

    # An administrator changes a member's rights through ChannelBook, as the API does.
    admin = await new_page(browser)
    await sign_in(admin, nl, "admin")
    wco = admin.locator(f"#channel-{C2A} tr", has_text="wco-rilo")
    await wco.get_by_label("post").uncheck()
    await wco.get_by_role("button", name="Save rights").click()
    await expect(admin.get_by_role("status")).to_contain_text(f"Channel {C2A} changed")
    assert nl.service.channels.state(C2A).rights("wco-rilo") == {"read"}

    # Wrong passwords are refused, then sign-in is rate-limited, even with the right password.
    guesser = await new_page(browser)
    for _ in range(5):
        await sign_in(guesser, nl, "admin", "not the password")
        await expect(guesser.get_by_role("alert")).to_contain_text("Wrong user name or password")
    await sign_in(guesser, nl, "admin")
    await expect(guesser.get_by_role("alert")).to_contain_text("Too many failed sign-ins")
    await shot(guesser, "sign-in-limited")
    events = [e for e in await audit_events(nl) if e["event"].startswith("console.signin")]
    assert [e["event"] for e in events].count("console.signin_failed") == 5
    assert events[-1]["event"] == "console.signin_throttled" and events[-1]["user"] == "admin"

    # Problems are HTML pages with their status in the console; the API keeps problem+json.
    missing = await goto(officer, nl, "/console/no-such-page")
    assert missing.status == 404
    await expect(officer.locator("h1")).to_contain_text("Not Found")
    status, body, ctype = await nl.api("GET", "/api/v1/bulletins/" + "0" * 64)
    assert (status, ctype) == (404, "application/problem+json") and body["status"] == 404


# -- sessions and cookies, without a browser ------------------------------------------------------


async def test_session_cookie_expiry_and_sign_out(fed: Federation) -> None:
    nl = fed["nl-customs"]
    ctx = client_context(read_file(nl.config.keys_dir / "tls.crt").decode())
    jar = aiohttp.CookieJar(unsafe=True)  # the node is an IP address
    url = nl.config.endpoint
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=jar) as http:
        async with http.get(url + "/console/sign-in") as resp:
            page = await resp.text()
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.content_type == "text/html"
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        form = {"csrf": token.group(1), "user": "officer", "password": PASSWORD, "next": ""}
        async with http.post(url + "/console/sign-in", data=form, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/console/channels"
            cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("__Host-exchange-console="))
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
        session = cookie.split(";")[0].split("=", 1)[1]
        async with nl.service.store.read() as conn:
            stored = list(await conn.scalars(sa.select(console_sessions.c.id_hash)))
        assert session not in stored and len(stored) == 1  # only its hash is kept

        async with http.get(url + "/console/channels", allow_redirects=False) as resp:
            assert resp.status == 200
            csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            assert csrf is not None

        # Idle for longer than allowed: the session is over.
        async def job(conn: Any, audit: Any) -> None:
            await conn.execute(sa.update(console_sessions).values(last_seen="2000-01-01T00:00:00.000Z"))

        await nl.service.store.write(job)
        async with http.get(url + "/console/channels", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/console/sign-in?next=")
        assert await count(nl, console_sessions) == 0

        # A refused POST is an HTML page, and the refusal is audited.
        async with http.post(url + "/console/compose", data={"title": "x"}, allow_redirects=False) as resp:
            assert resp.status == 401 and resp.content_type == "text/html"
        last = (await audit_events(nl))[-1]
        assert last["event"] == "request.rejected" and last["path"] == "/console/compose" and last["status"] == 401

        # Signing in again, then out: the old cookie opens nothing any more.
        async with http.get(url + "/console/sign-in") as resp:
            token = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert token is not None
        form["csrf"] = token.group(1)
        async with http.post(url + "/console/sign-in", data=form) as resp:
            page = await resp.text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        async with http.post(url + "/console/sign-out", data={"csrf": csrf.group(1)}, allow_redirects=False) as resp:
            assert resp.status == 303
        assert await count(nl, console_sessions) == 0


# -- passwords for the sample federation and from the command line --------------------------------


def test_sample_passwords_and_the_users_password_command(tmp_path: Path) -> None:
    folder = tmp_path / "nodes"
    write_federation(folder, {"nl-customs": ("NL", "customs")}, [], {})
    report = asyncio.run(init_federation(folder, sample_passwords=True))
    assert "console password for officer at nl-customs" in report.created
    cfg = NodeConfig.load(folder / "nl-customs.toml", environ={})
    path = cfg.keys_dir / "passwords" / "officer"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert asyncio.run(init_federation(folder, sample_passwords=True)).created == []  # idempotent

    async def signs_in(name: str, password: str) -> bool:
        store = await Store.open(cfg.database_url)
        try:
            return (await verify_password(store, name, password)).name == name
        except Unauthorized:
            return False
        finally:
            await store.close()

    assert asyncio.run(signs_in("officer", path.read_text().strip()))
    assert not asyncio.run(signs_in("officer", "a wrong password, long enough"))
    result = CliRunner().invoke(
        cli, ["users", "password", "--node", str(folder / "nl-customs.toml"), "auditor", "--generate"]
    )
    assert result.exit_code == 0, result.output
    assert asyncio.run(signs_in("auditor", result.output.strip()))
    short = CliRunner().invoke(
        cli, ["users", "password", "--node", str(folder / "nl-customs.toml"), "auditor"], input="short\nshort\n"
    )
    assert short.exit_code == 1 and "at least 12 characters" in short.output


async def test_the_partners_page_says_when_a_partner_is_catching_up(fed: Federation) -> None:
    """A partner being served full catch-up pages is shown as catching up, with when pushes to it
    resume, worked out when the page is shown (exchange.service.sender); the others stay in sync."""
    nl = fed["nl-customs"]
    async with console_session(nl, "admin", PASSWORD) as http:

        async def row_of(peer: str, lang: str = "en") -> str:
            async with http.get("/console/peers", headers={"Accept-Language": lang}) as resp:
                assert resp.status == 200
                page = await resp.text()
            return next(r for r in page.split("<tr") if f"<code>{peer}</code>" in r)

        assert "in sync" in await row_of("ke-customs")
        async with http.get("/console/peers") as resp:  # no roster v2 version held: said so
            assert "runs on its version 1 roster file" in await resp.text()
        nl.service.outbox.peer_pulled("ke-customs", more=True)  # served a full catch-up page
        held = await row_of("ke-customs")
        assert "catching up" in held and "pushes resume by" in held and "in sync" not in held
        assert "en rattrapage" in await row_of("ke-customs", "fr")
        assert "in sync" in await row_of("gb-avsec")
        nl.service.outbox.peer_pulled("ke-customs", more=False)  # a page that is not full: the hold ends
        assert "catching up" not in await row_of("ke-customs")
