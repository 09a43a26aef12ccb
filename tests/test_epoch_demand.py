"""An epoch record fetched on demand for a received v2 envelope (docs/protocol.md, 15.8 rule 4):
each source asked once, a failed find not tried again for a while, and only for an author who
may post and read in the state it cites. Real nodes over mutual TLS."""

from __future__ import annotations

from collections import Counter

import pytest

from exchange.clock import timestamp
from exchange.crypto import b64d
from exchange.model import NodeId
from exchange.protocol.envelope_v2 import build_envelope_v2, envelope_v2_bytes, sign_envelope_v2
from exchange.protocol.epoch_model import EnvelopeV2
from exchange.service.epoch_demand import RECHECK_SECONDS
from tests.conftest import MakeFederation, Member, eventually
from tests.test_epoch_attacks import admin, arrives, batch, count, note, post, refused, rejections, started

FOUR = ("nl-customs", "ke-customs", "de-customs", "fr-customs")


def citing(author: Member, n: int, seq: int) -> EnvelopeV2:
    """`author`'s envelope under the epoch it holds, signed again as citing epoch `n` instead."""
    book = author.service.epochs
    epoch = book.latest("c2c")
    assert epoch is not None
    key = book.key("c2c", epoch.n)
    assert key is not None
    built = build_envelope_v2(
        note("cites another epoch"),
        state=author.service.channels.state("c2c"),
        epoch=epoch,
        epoch_key=key,
        author=NodeId(author.id),
        key=author.service.keys.signing,
        seq=seq,
        created=timestamp(),
    )
    header = built.header.model_copy(update={"epoch": built.header.epoch.model_copy(update={"n": n})})
    header.__dict__.pop("canonical", None)  # cached JCS of the header copied
    return sign_envelope_v2(header, b64d(built.ciphertext), author.service.keys.signing)


def epoch_fetches(member: Member, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The nodes `member` asks for epoch records, in order."""
    transport = member.service.epochs.transport
    fetch, asked = transport.fetch, []

    async def counted(node: NodeId, path: str) -> object:
        if "/epochs?" in path:
            asked.append(str(node))
        return await fetch(node, path)

    monkeypatch.setattr(transport, "fetch", counted)
    return asked


async def test_an_epoch_no_member_holds_is_asked_of_each_source_once_and_not_again_on_a_retry(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ke-customs signs an envelope citing epoch 10**12. Before, de-customs pulled epochs from the
    pusher, the owner and every member in turn, the pusher and the owner twice, for it and again
    for each retry of the 503 (found by a read-only review). Now each source is asked once, and
    not again while the failed find is remembered."""
    fed = await started(make_federation, *FOUR)
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    first = await post(ke, "first")
    await arrives(de, first["id"])
    asked = epoch_fetches(de, monkeypatch)
    de.service.epochs.misses.recheck = 3600.0  # the owner alone is asked again after this (below)
    env = citing(ke, 10**12, seq=77)
    before = await count(de)
    status, body, _ = await de.fed_post(ke, batch(env))
    assert status == 503 and "StateUnavailable" in str(body), (status, body)
    assert Counter(asked) == {"ke-customs": 1, "nl-customs": 1, "fr-customs": 1}, asked
    assert asked[:2] == ["ke-customs", "nl-customs"]  # the pusher, then the owner, then the members
    # The sender's retry, and the same envelope three times in one transaction: no new fetch.
    status, body, _ = await de.fed_post(ke, batch(env))
    assert status == 503 and "when last asked" in str(body), (status, body)
    thrice = b'{"txn":"t3","envelopes":[' + b",".join([envelope_v2_bytes(env)] * 3) + b"]}"
    status, body, _ = await de.fed_post(ke, thrice)
    assert status == 503, (status, body)
    assert len(asked) == 3, asked
    assert await count(de) == before
    # Once the interval is over, the sources are asked again.
    de.service.epochs.misses.seconds = 0.0
    status, _, _ = await de.fed_post(ke, batch(env))
    assert status == 503 and len(asked) == 6, asked
    # A real post still comes: the epoch it cites is held.
    later = await post(ke, "later")
    await arrives(de, later["id"])
    assert nl.service.epochs.latest("c2c") is not None


async def test_a_flood_of_envelopes_each_citing_another_unknown_epoch_costs_one_round_of_fetches(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ke-customs, a member with post and read, signs envelopes each citing an epoch number of its
    own that nobody holds. Before, each number cost de-customs a round of fetches from every
    source. A round takes every record any source has after the latest held, so once one failed,
    no later number is held either: the numbers after it are answered 503 at once, with no fetch,
    nothing stored; and a bulletin under the epoch held still comes. An epoch the owner makes
    next is not kept out by the made-up numbers: the owner alone is asked again, at most every
    RECHECK_SECONDS, and the first bulletin under it comes (epochs are not fetched ahead here)."""
    fed = await started(make_federation, *FOUR)
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    first = await post(ke, "first")
    await arrives(de, first["id"])
    latest = de.service.epochs.latest("c2c")
    assert latest is not None
    asked = epoch_fetches(de, monkeypatch)
    de.service.epochs.misses.recheck = 3600.0
    before = await count(de)
    for i, n in enumerate((latest.n + 5, latest.n + 1, latest.n + 6, 10**6, 10**12)):
        status, body, _ = await de.fed_post(ke, batch(citing(ke, n, seq=100 + i)))
        assert status == 503 and "StateUnavailable" in str(body), (n, status, body)
    assert Counter(asked) == {"ke-customs": 1, "nl-customs": 1, "fr-customs": 1}, asked
    assert await count(de) == before
    later = await post(ke, "later")
    await arrives(de, later["id"])
    # The owner makes the next epoch (a reader removed), which the miss covers: asked of it alone.
    de.service.epochs.misses.recheck = RECHECK_SECONDS
    await admin(nl, "remove", "fr-customs")
    pos = nl.service.channels.state("c2c").pos

    async def removed() -> bool:
        return ke.service.channels.state("c2c").pos == pos

    await eventually(removed, what="fr-customs' removal at ke-customs")
    after = await post(ke, "under the next epoch")
    await arrives(de, after["id"])
    held = de.service.epochs.latest("c2c")
    assert held is not None and held.n == latest.n + 1
    assert asked.count("nl-customs") >= 2 and asked.count("fr-customs") == 1, asked  # no second round


async def test_an_author_without_post_in_the_cited_state_makes_no_fetch(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fr-customs, a reader without `post` now, signs an envelope citing an epoch nobody holds:
    refused for rule 7 (4xx, audited, nothing stored) before any epoch is fetched for it."""
    fed = await started(make_federation, *FOUR)
    nl, fr, de = fed["nl-customs"], fed["fr-customs"], fed["de-customs"]
    first = await post(nl, "first")
    await arrives(de, first["id"])
    await arrives(fr, first["id"])
    body = {"node": "fr-customs", "rights": ["read"]}
    status, answer, _ = await nl.api("POST", "/api/v1/channels/c2c/rights", user="admin", body=body)
    assert status == 200, answer
    pos = nl.service.channels.state("c2c").pos

    async def demoted() -> bool:
        return all(m.service.channels.state("c2c").pos == pos for m in (de, fr))

    await eventually(demoted, what="fr-customs' demotion at de-customs and fr-customs")
    asked = epoch_fetches(de, monkeypatch)
    audited = await rejections(de)
    await refused(de, fr, citing(fr, 10**12, seq=5), "lacks the post right in the cited channel state")
    assert asked == []
    assert await rejections(de) == audited + 1
