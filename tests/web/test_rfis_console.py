"""Requests for information in the console (issue 17, must-show 3), in Debian's chromium: the
officer of the aviation-security node sees a request past its due date as overdue, one not yet due
as open, and an answered one with who answered, reached from the channel's inbox."""

from __future__ import annotations

import datetime as dt
from typing import Any

from playwright.async_api import expect

from tests.conftest import Federation, eventually
from tests.test_console import C2A, PASSWORD, fed, goto, new_page, post_by_api, sign_in

__all__ = ["fed"]


async def test_overdue_open_and_answered_requests(fed: Federation, browser: Any) -> None:
    nl, gb, ke = fed["nl-customs"], fed["gb-avsec"], fed["ke-customs"]
    today = dt.datetime.now(dt.UTC).date()
    rfi = {"kind": "request-for-information", "handling": {"tlp": "AMBER", "no_onward_sharing": False}}
    late = await post_by_api(
        nl, C2A, title="Who consigned AWB 176-00000011?", due=str(today - dt.timedelta(days=2)), **rfi
    )
    await post_by_api(nl, C2A, title="Routing of KQ1116 next week?", due=str(today + dt.timedelta(days=5)), **rfi)
    asked = await post_by_api(nl, C2A, title="Seen toner cartridges with wiring?", **rfi)

    async def held_by(member: Any, n: int) -> bool:
        status, board, _ = await member.api("GET", f"/api/v1/channels/{C2A}/rfis")
        return status == 200 and len(board["items"]) == n

    await eventually(lambda: held_by(ke, 3), 30, "the requests at ke-customs")
    await post_by_api(ke, C2A, kind="feedback", title="Yes, at NBO last week", references=[asked])

    async def answered() -> bool:
        status, board, _ = await gb.api("GET", f"/api/v1/channels/{C2A}/rfis")
        return status == 200 and board["answered"] == 1

    await eventually(answered, 30, "the answer at gb-avsec")
    page = await new_page(browser)
    await sign_in(page, gb, "officer", PASSWORD)
    await goto(page, gb, f"/console/channels/{C2A}")
    await page.get_by_role("link", name="Requests for information: open, overdue, answered").click()
    await expect(page.get_by_role("heading", name="Requests for information")).to_be_visible()
    await expect(page.locator("p.lead")).to_have_text("1 open, 1 overdue, 1 answered")
    overdue = page.locator("tr.rfi-overdue")
    await expect(overdue).to_contain_text("Overdue")
    await expect(overdue).to_contain_text("Who consigned AWB 176-00000011?")
    await expect(overdue.locator("a").first).to_have_attribute("href", f"/console/bulletins/{late}")
    await expect(page.locator("tr.rfi-open")).to_contain_text("Routing of KQ1116 next week?")
    answered_row = page.locator("tr.rfi-answered")
    await expect(answered_row).to_contain_text("Answered")
    await expect(answered_row).to_contain_text("ke-customs")  # the answering administration
