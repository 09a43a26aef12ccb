"""The live inbox, in Debian's chromium: an officer at the aviation-security node has a channel's
inbox open; a bulletin posted at the Customs node appears in it with a notification (kind, TLP,
title), without a reload. Pages still work with JavaScript off."""

from __future__ import annotations

from typing import Any

from playwright.async_api import expect

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
