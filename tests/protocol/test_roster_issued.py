"""A roster version issued in the future (docs/protocol.md, 6a.4): refused by a receiver whose clock
is more than ISSUED_AHEAD behind it. It was taken, and then every successor that `exchange roster
propose` makes (issued now) broke the history rule "issued is not earlier than version N's": the
chain froze (no revocation, no rotation) until that date.
"""

from __future__ import annotations

import datetime as dt

import pytest

from exchange import errors
from exchange.clock import timestamp
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rosterchain import ISSUED_AHEAD, TrustedRoster, accept_chain, accept_first
from exchange.protocol.rostermigration import propose
from tests.protocol.test_roster_chain import BOTH, CHAIN, NOW, refused, trusted
from tests.vectors.make_roster_vectors import signed


def v4_issued(at: dt.datetime) -> SignedRosterV2:
    return signed(propose(CHAIN[3].roster, timestamp(at), timestamp(at + dt.timedelta(days=180))), BOTH)


def test_a_version_issued_years_ahead_is_refused_and_the_next_one_issued_now_is_taken() -> None:
    held = trusted(3)
    refused(held, [v4_issued(NOW + dt.timedelta(days=3650))], errors.RosterInvalid)
    assert accept_chain(held, [v4_issued(NOW)], NOW).version == 4  # what the proposer makes next


def test_a_clock_a_few_minutes_behind_still_takes_a_fresh_version() -> None:
    held = trusted(3)
    assert accept_chain(held, [v4_issued(NOW + ISSUED_AHEAD)], NOW).version == 4
    refused(held, [v4_issued(NOW + ISSUED_AHEAD + dt.timedelta(seconds=1))], errors.RosterInvalid)


def test_a_first_version_from_the_future_is_refused_too() -> None:
    """Out of band (a node's first import) or as the first of a chain: the same rule."""
    issued = dt.datetime.fromisoformat(CHAIN[1].roster.issued.replace("Z", "+00:00"))
    early = issued - ISSUED_AHEAD - dt.timedelta(minutes=1)
    with pytest.raises(errors.RosterInvalid, match="after this node's clock"):
        TrustedRoster.bootstrap(CHAIN[1], early)
    with pytest.raises(errors.RosterInvalid, match="after this node's clock"):
        accept_first(TrustedRoster.restore(CHAIN[1]), [], early)
    with pytest.raises(errors.RosterInvalid, match="version 2 is issued"):  # a later one of the chain
        accept_first(TrustedRoster.restore(CHAIN[1]), [CHAIN[2]], issued)
