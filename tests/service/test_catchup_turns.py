"""Catch-up's timed sweep asks a few members of each channel in turn (exchange.service.catchup):
its cost does not grow with the channel, every member is still asked within a bounded number of
sweeps, and members start their turns at different places so no member serves every sweep."""

from __future__ import annotations

import math
from dataclasses import dataclass

from exchange.model import NodeId
from exchange.service.catchup import CatchUp

MEMBERS = [f"n{i:03d}" for i in range(12)]


@dataclass
class State:
    channel: str
    members: dict[str, frozenset[str]]

    def rights(self, node: str) -> frozenset[str]:
        return self.members.get(node, frozenset())


class Book:
    def __init__(self, *states: State) -> None:
        self.states = states

    def all(self) -> tuple[State, ...]:
        return self.states


def catchup(me: str, book: Book, peers: int) -> tuple[CatchUp, list[tuple[str, str]]]:
    asked: list[tuple[str, str]] = []
    node = CatchUp(NodeId(me), None, book, None, None, None, 300.0, peers)  # type: ignore[arg-type]

    async def pull(peer: str, channel: str) -> int:
        asked.append((peer, channel))
        return 0

    node.pull = pull  # type: ignore[method-assign]
    return node, asked


def member(*rights: str) -> frozenset[str]:
    return frozenset(rights)


async def test_a_sweep_asks_peers_members_of_each_channel_and_all_within_a_bounded_number_of_sweeps() -> None:
    big = State("global", {m: member("read", "post") for m in MEMBERS})
    small = State("region", {m: member("read") for m in ("n000", "n001", "n002", "n005")})
    node, asked = catchup("n005", Book(big, small), peers=3)
    await node.sweep()
    assert [c for _, c in asked].count("global") == 3  # not 11
    assert sorted(p for p, c in asked if c == "region") == ["n000", "n001", "n002"]  # 3 others: all of them
    assert all(p != "n005" for p, _ in asked)
    for _ in range(math.ceil(11 / 3) - 1):
        await node.sweep()
    assert {p for p, c in asked if c == "global"} == set(MEMBERS) - {"n005"}
    first = [p for p, c in asked if c == "global"][:3]
    assert first == ["n006", "n007", "n008"]  # after its own place in the list


async def test_members_start_their_turns_at_different_places() -> None:
    big = State("global", {m: member("read") for m in MEMBERS})
    firsts: list[list[str]] = []
    for me in MEMBERS:
        node, asked = catchup(me, Book(big), peers=2)
        await node.sweep()
        firsts.append([p for p, _ in asked])
    served = [p for first in firsts for p in first]
    assert max(served.count(m) for m in MEMBERS) == 2  # each member serves 2 of the 12 first sweeps


async def test_a_channel_this_node_does_not_read_is_not_swept() -> None:
    posting = State("post-only", {m: member("post") for m in MEMBERS[:3]} | {"n100": member("read")})
    node, asked = catchup("n000", Book(posting), peers=4)
    await node.sweep()
    assert asked == []
