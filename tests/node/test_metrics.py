"""`GET /metrics` (issue 14): a real node's figures in the Prometheus text format, for a local
administrator only, read back with prometheus-client's own parser (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from exchange.keystore import read_file
from exchange.node.tls import client_context
from tests.conftest import MakeFederation, Member, eventually


async def scrape(member: Member, user: str | None = "admin") -> tuple[int, str]:
    ctx = client_context(read_file(member.config.keys_dir / "tls.crt").decode())
    headers = {"Authorization": f"Bearer {member.tokens[user]}"} if user else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(member.config.endpoint + "/metrics", headers=headers) as resp,
    ):
        return resp.status, await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_for_operators(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]

    async def swept() -> bool:  # else ke's first catch-up may pull a post, and receipt it itself
        return fed["ke-customs"].service.catchup.sweeps >= 1

    # The sender's `delivered` counts what it pushed: a post pulled by the reader's first sweep
    # instead (the CI run at 1309e2a: queued 0, delivered 2) is delivered, but not counted there.
    await eventually(swept, 30, "ke-customs' first catch-up sweep")
    body: dict[str, Any] = {"kind": "alert", "title": "metrics", "indicators": {"airports": ["NBO"]}}
    for _ in range(3):
        status, posted, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body=body)
        assert status == 201, posted

    peer = (("peer", "ke-customs"),)
    seen: dict[str, Any] = {}

    async def delivered() -> bool:
        # Both together: the sender counts a batch delivered just after its receipts are stored,
        # so a scrape in between sees the queue empty and the count one batch short.
        got = samples((await scrape(nl))[1])
        seen.update(
            queued=got.get(("exchange_outbox_queued", peer)), delivered=got.get(("exchange_outbox_delivered", peer))
        )
        return seen["queued"] == 0 and (seen["delivered"] or 0) >= 3

    try:
        await eventually(delivered, 30, "the queue to empty")
    except AssertionError as e:  # say what was seen, and the sender's own account, should it time out
        sender = nl.service.outbox.senders["ke-customs"].status.as_dict()
        raise AssertionError(f"{e}: last scrape {seen}, sender {sender}") from None
    status, text = await scrape(nl)
    assert status == 200
    got = samples(text)
    assert got[("exchange_bulletins_stored", (("channel", "c2c"),))] == 3
    assert got[("exchange_outbox_delivered", (("peer", "ke-customs"),))] >= 3
    assert got[("exchange_peer_backoff_seconds", (("peer", "ke-customs"),))] == 0
    assert ("exchange_peer_last_success_age_seconds", (("peer", "ke-customs"),)) in got
    assert got[("exchange_audit_log_entries", ())] > 0
    assert got[("exchange_roster_version", ())] >= 1
    post_route = (("method", "POST"), ("route", "/api/v1/channels/{channel}/bulletins"), ("status", "2xx"))
    assert got[("exchange_http_requests_total", post_route)] == 3
    assert (
        got[("exchange_http_request_duration_seconds_count", (("route", "/api/v1/channels/{channel}/bulletins"),))] >= 3
    )
    assert got[("process_resident_memory_bytes", ())] > 10 * 1024 * 1024
    # bounded labels: an unknown path is one "(unmatched)" route, whatever its text
    await nl.api("GET", "/api/v1/no-such-thing-12345")
    assert (
        "exchange_http_requests_total",
        (("method", "GET"), ("route", "(unmatched)"), ("status", "4xx")),
    ) in samples((await scrape(nl))[1])
    assert not any("no-such-thing" in k[1][1][1] for k in samples((await scrape(nl))[1]) if len(k[1]) == 3)


async def test_metrics_only_for_administrators(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    assert (await scrape(nl, "officer"))[0] == 403
    assert (await scrape(nl, "auditor"))[0] == 403
    assert (await scrape(nl, None))[0] == 401
