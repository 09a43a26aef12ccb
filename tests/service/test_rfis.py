"""Requests for information with a due date (issue 17): the board of a channel says which are open,
overdue and answered, and by whom, at the author's node and at a reader's, over real nodes (SQLite
and PostgreSQL). `due` is only for requests, and a bulletin without one keeps its old payload."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from exchange.model import Bulletin
from tests.conftest import Federation, MakeFederation, eventually

TODAY = dt.datetime.now(dt.UTC).date()


def rfi(title: str, due: dt.date | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "request-for-information", "title": title, "body": "Who shipped it?"}
    if due is not None:
        body["due"] = due.isoformat()
    return body


async def post(fed: Federation, node: str, body: dict[str, Any]) -> str:
    status, posted, _ = await fed[node].api("POST", "/api/v1/channels/c2c/bulletins", body=body)
    assert status == 201, posted
    return str(posted["id"])


async def board(fed: Federation, node: str) -> dict[str, Any]:
    status, got, _ = await fed[node].api("GET", "/api/v1/channels/c2c/rfis")
    assert status == 200, got
    return dict(got)


async def test_open_overdue_and_answered_requests(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    late = await post(fed, "nl-customs", rfi("Consignee of AWB 176-00000011?", TODAY - dt.timedelta(days=1)))
    later = await post(fed, "nl-customs", rfi("Routing of flight KL1234?", TODAY + dt.timedelta(days=7)))
    undated = await post(fed, "nl-customs", rfi("Any seizures of toner cartridges?", None))
    await post(fed, "nl-customs", {"kind": "alert", "title": "an alert, not a request"})

    async def arrived() -> bool:
        return len((await board(fed, "ke-customs"))["items"]) == 3

    await eventually(arrived, 30, "the requests at the reader")
    answer = {"kind": "feedback", "title": "Consignee found", "references": [undated]}
    answered_by = await post(fed, "ke-customs", answer)

    async def answered() -> bool:
        count: int = (await board(fed, "nl-customs"))["answered"]
        return count == 1

    await eventually(answered, 30, "the answer at the author")
    got = await board(fed, "nl-customs")
    states = {i["id"]: i["state"] for i in got["items"]}
    assert states == {late: "overdue", later: "open", undated: "answered"}
    assert (got["open"], got["overdue"], got["answered"]) == (1, 1, 1)
    (line,) = [i for i in got["items"] if i["id"] == undated]
    assert [(a["id"], a["author"], a["kind"]) for a in line["answers"]] == [(answered_by, "ke-customs", "feedback")]
    assert [i["id"] for i in got["items"]] == [undated, later, late]  # newest first
    assert {i["due"] for i in got["items"]} == {
        None,
        (TODAY + dt.timedelta(days=7)).isoformat(),
        (TODAY - dt.timedelta(days=1)).isoformat(),
    }


async def test_due_is_refused_where_it_does_not_belong(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    for body in (
        {"kind": "alert", "title": "x", "due": TODAY.isoformat()},
        rfi("bad date", None) | {"due": "2026-02-30"},
        rfi("bad shape", None) | {"due": "tomorrow"},
    ):
        status, problem, _ = await fed["nl-customs"].api("POST", "/api/v1/channels/c2c/bulletins", body=body)
        assert status == 422, problem
    assert (await board(fed, "nl-customs"))["items"] == []
    status, _, _ = await fed["nl-customs"].api("GET", "/api/v1/channels/c2c/rfis", user="auditor")
    assert status == 403
    status, _, _ = await fed["nl-customs"].api("GET", "/api/v1/channels/elsewhere/rfis")
    assert status in (403, 404)


def test_a_bulletin_without_due_keeps_its_payload() -> None:
    handling = {"tlp": "AMBER", "no_onward_sharing": False}
    plain = Bulletin.model_validate({"kind": "request-for-information", "title": "t", "handling": handling})
    assert "due" not in plain.payload()
    dated = Bulletin.model_validate(
        {"kind": "request-for-information", "title": "t", "handling": handling, "due": "2027-01-31"}
    )
    assert dated.payload()["due"] == "2027-01-31"
    with pytest.raises(ValidationError, match="only a request-for-information"):
        Bulletin.model_validate({"kind": "feedback", "title": "t", "handling": handling, "due": "2027-01-31"})
