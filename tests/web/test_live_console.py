"""The live inbox, in Debian's chromium: an officer at the aviation-security node has a channel's
inbox open; a bulletin posted at the Customs node appears in it with a notification (kind, TLP,
title), without a reload. Pages still work with JavaScript off. When the session ends under an
open inbox, the page says so instead of looking live."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from playwright.async_api import expect
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp, utc_now
from exchange.store import AuditBuffer, console_sessions
from tests.conftest import Federation
from tests.test_console import C2A, PASSWORD, fed, goto, new_page, post_by_api, sign_in

__all__ = ["fed"]


async def test_a_new_bulletin_appears_in_the_open_inbox_with_a_notification(fed: Federation, browser: Any) -> None:
    nl, gb = fed["nl-customs"], fed["gb-avsec"]
    page = await new_page(browser)
    await sign_in(page, gb, "officer", PASSWORD)
    await goto(page, gb, f"/console/channels/{C2A}")
    await expect(page.locator("#inbox-empty")).to_be_visible()
    status, rows = page.locator("#live-status"), page.locator("table.inbox tbody tr")
    assert await status.is_hidden() and await rows.count() == 0
    await page.evaluate("() => { window.notReloaded = true; }")

    for n, (title, tlp) in enumerate((("Toner cartridges with wiring, AMS to NBO", "AMBER"), ("Second", "GREEN")), 1):
        bid = await post_by_api(nl, C2A, title=title, handling={"tlp": tlp, "no_onward_sharing": False})
        await expect(status).to_be_visible(timeout=30_000)
        await expect(status).to_contain_text(f"TLP:{tlp}", timeout=30_000)
        await expect(status).to_contain_text(title)
        await expect(status).to_contain_text("New alert")
        await expect(rows).to_have_count(n, timeout=30_000)
        await expect(rows.first).to_contain_text(title)
        await expect(rows.first.locator("a")).to_have_attribute("href", f"/console/bulletins/{bid}")
    await expect(page.locator("#inbox-empty")).to_be_hidden()
    assert await page.evaluate("() => window.notReloaded === true")  # the same page: no reload


async def test_the_inbox_works_without_javascript(fed: Federation, browser: Any) -> None:
    nl, gb = fed["nl-customs"], fed["gb-avsec"]
    await post_by_api(nl, C2A, title="Seen after a reload")
    context = await browser.new_context(ignore_https_errors=True, java_script_enabled=False)
    page = await context.new_page()
    await sign_in(page, gb, "officer", PASSWORD)
    for _ in range(60):
        await goto(page, gb, f"/console/channels/{C2A}")
        if await page.locator("table.inbox tbody tr").count():
            break
        await page.wait_for_timeout(500)
    await expect(page.locator("table.inbox")).to_contain_text("Seen after a reload")
    await context.close()


async def test_the_open_inbox_says_when_the_session_has_ended(fed: Federation, browser: Any) -> None:
    """An inbox left open past the idle timeout: the next bulletin is not shown, the page says the
    session has ended and offers to sign in again, and the browser stops reconnecting."""
    nl, gb = fed["nl-customs"], fed["gb-avsec"]
    page = await new_page(browser)
    await sign_in(page, gb, "officer", PASSWORD)
    await goto(page, gb, f"/console/channels/{C2A}")
    status = page.locator("#live-status")
    await post_by_api(nl, C2A, title="Seen while signed in")
    await expect(status).to_contain_text("Seen while signed in", timeout=30_000)

    async def away(conn: AsyncConnection, audit: AuditBuffer) -> None:  # 31 minutes, not waited for
        await conn.execute(
            sa.update(console_sessions).values(last_seen=timestamp(utc_now() - dt.timedelta(minutes=31)))
        )

    await gb.service.store.write(away)
    await post_by_api(nl, C2A, title="Not for an ended session")
    await expect(status).to_contain_text("Your session has ended. Please sign in again.", timeout=30_000)
    await expect(status).to_have_class("alert error")
    await expect(status.get_by_role("link", name="Sign in")).to_have_attribute(
        "href", f"/console/sign-in?next=%2Fconsole%2Fchannels%2F{C2A}"
    )
    await expect(page.locator("table.inbox")).not_to_contain_text("Not for an ended session")
