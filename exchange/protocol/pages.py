"""Partners' pages of envelopes (docs/protocol.md 11.6) as a node reads them: checked for shape
before anything is taken from them, so a hostile page is a named refusal, not a TypeError or a
KeyError in the loop that asked. Pure."""

from __future__ import annotations

from typing import Any

from exchange.errors import InvalidInput, StateUnavailable
from exchange.model import INT32_MAX


def checked_page(page: Any, peer: str, after: int, limit: int) -> dict[str, Any]:
    """A partner's catch-up page (docs/protocol.md 11.6) as this node reads it, or InvalidInput
    (the sweep goes on to the next partner): an object of at most `limit` `items` (the number
    asked; objects with a string `id` and an `envelope`), `next` (a position from `after` to
    INT32_MAX) and `more`; a page that says there is more must move the cursor on, or a partner
    could keep the puller asking for ever."""
    if isinstance(page, dict):
        items, position, more = page.get("items"), page.get("next"), page.get("more")
        if (
            isinstance(items, list)
            and len(items) <= limit
            and all(isinstance(i, dict) and isinstance(i.get("id"), str) and "envelope" in i for i in items)
            and type(position) is int
            and isinstance(more, bool)
            and after <= position <= INT32_MAX
            and (position > after or not more)
        ):
            return page
    raise InvalidInput(
        f"{peer} sent a catch-up page that is malformed, holds more than the {limit} items asked, "
        f"or does not move on from {after}"
    )


def gap_items(page: Any, source: str, limit: int) -> list[dict[str, Any]]:
    """The items of `source`'s page of one author's stream (11.6, `author` and `after_seq`), at
    most `limit`, each an object with an integer `seq` and an `envelope`; else StateUnavailable,
    as for a malformed log (the push that needed it is retried; a sweep goes on to the next
    partner), rather than a TypeError or KeyError that ended the push with a 500 or the sweep."""
    items = page.get("items") if isinstance(page, dict) else None
    if (
        isinstance(items, list)
        and len(items) <= limit
        and all(isinstance(i, dict) and type(i.get("seq")) is int and "envelope" in i for i in items)
    ):
        return items
    raise StateUnavailable(f"{source} sent a malformed page of an author's stream")


__all__ = ["checked_page", "gap_items"]
