"""Small-order X25519 keys (docs/protocol.md, 6 step 3, and 14): an authority must not list one, so a
node refuses a v1 roster, a roster v2 version and a join request that carry one, with SmallOrderKey
(a v2 version: RosterInvalid caused by it). Every shared secret with such a key is zero (RFC 7748,
section 6.1), so nothing could ever be sealed for that node."""

from __future__ import annotations

import pytest

from exchange.crypto import b64e
from exchange.crypto.keys import EncryptionKey
from exchange.errors import RosterInvalid, SmallOrderKey
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import RosterV2
from exchange.protocol.rosterchain import check_document
from exchange.protocol.rostermigration import sign_join_request, verify_join_request
from tests.protocol.test_envelope_rules import AUTHORITY, NODES, entry, signed_roster
from tests.protocol.test_roster_chain import CHAIN
from tests.protocol.test_roster_join import request
from tests.vectors.make_vectors import signing_key, tls_cert

P = 2**255 - 19


def u(value: int) -> bytes:
    return value.to_bytes(32, "little")


# libsodium's blocklist (crypto_scalarmult/curve25519/ref10, has_small_order) and one with the
# unused top bit set, which RFC 7748 says a receiver masks: 0, 1, the two points of order 8,
# p - 1, p, p + 1, and the first order-8 point with bit 255 set.
ORDER_8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
SMALL_ORDER = [
    u(0),
    u(1),
    ORDER_8,
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    u(P - 1),
    u(P),
    u(P + 1),
    ORDER_8[:31] + bytes([ORDER_8[31] | 0x80]),
]
IDS = ["0", "1", "order-8", "order-8'", "p-1", "p", "p+1", "order-8-top-bit"]


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=IDS)
def test_a_small_order_key_is_named(raw: bytes) -> None:
    with pytest.raises(SmallOrderKey, match="small order"):
        EncryptionKey(raw).check_order()


def test_an_ordinary_key_passes() -> None:
    for node in NODES:
        EncryptionKey(Federation.verify(signed_roster(), AUTHORITY.verify_key).encryption_key(node).raw).check_order()


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=IDS)
def test_a_v1_roster_listing_one_is_refused(raw: bytes) -> None:
    entries = [entry(n) for n in NODES]
    entries[1] |= {"encryption_key": b64e(raw), "encryption_kid": EncryptionKey(raw).kid}
    with pytest.raises(SmallOrderKey, match=entries[1]["id"]):
        Federation.verify(signed_roster(entries), AUTHORITY.verify_key)
    Federation.verify(signed_roster(), AUTHORITY.verify_key)  # the same roster without it is accepted


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=IDS)
def test_a_roster_v2_version_listing_one_is_refused(raw: bytes) -> None:
    doc = CHAIN[1].roster.model_dump(mode="json")
    key = next(k for k in doc["nodes"][0]["keys"] if k["use"] == "encryption")
    key |= {"key": b64e(raw), "kid": EncryptionKey(raw).kid}
    with pytest.raises(RosterInvalid, match="small order") as caught:
        check_document(RosterV2.model_validate(doc))
    assert isinstance(caught.value.__cause__, SmallOrderKey)
    check_document(CHAIN[1].roster)  # the version as signed is accepted


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=IDS)
def test_a_join_request_carrying_one_is_refused(raw: bytes) -> None:
    good = request()
    verify_join_request(good)
    details = good.request.model_dump(include={"federation", "id", "name", "country", "agency", "endpoint"})
    bad = sign_join_request(
        details,
        good.request.made,
        signing_key("fr-customs/join"),
        EncryptionKey(raw),
        tls_cert("fr-customs-join").encode(),
    )
    with pytest.raises(SmallOrderKey, match="join request of fr-customs"):
        verify_join_request(bad)
