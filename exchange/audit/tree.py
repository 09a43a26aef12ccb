"""Inclusion and consistency proofs from stored perfect-subtree hashes, in O(log n) per proof.

`exchange.merkle` builds proofs from the full list of leaf hashes, hashing O(n) nodes per
proof. A node serving proofs for a large log keeps, level by level, the root of every complete
perfect subtree (`TreeLevels`, about 64 bytes per entry) so any subtree root the RFC 9162
algorithms ask for is a fold of at most log2(n) stored hashes. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from exchange.merkle import EMPTY_ROOT, HASH_SIZE, node_hash

RootOf = Callable[[int, int], bytes]  # (lo, hi) -> MTH of leaves [lo, hi)


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class TreeLevels:
    """Every complete perfect subtree's root, by level; level 0 holds the leaf hashes."""

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @property
    def size(self) -> int:
        """Leaves stored."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append a leaf hash; each completed pair is hashed into the level above, like a carry."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError("leaf hashes must be 32 bytes")
        self._levels[0] += leaf_hash
        self._size += 1
        count, level = self._size, 0
        while not count & 1:
            below = self._levels[level]
            parent = node_hash(bytes(below[-64:-32]), bytes(below[-32:]))
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level + 1] += parent
            count >>= 1
            level += 1

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append leaf hashes: the same levels as appending them one by one, hashed a level at a time."""
        if leaf_hashes and set(map(len, leaf_hashes)) != {HASH_SIZE}:
            raise ValueError("leaf hashes must be 32 bytes")
        self._levels[0] += b"".join(leaf_hashes)
        self._size += len(leaf_hashes)
        sha256, level = hashlib.sha256, 0
        while True:
            below = self._levels[level]
            done = len(self._levels[level + 1]) // HASH_SIZE if level + 1 < len(self._levels) else 0
            pairs = len(below) // (2 * HASH_SIZE)
            if pairs == done:
                return
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            block = bytes(below[done * 2 * HASH_SIZE : pairs * 2 * HASH_SIZE])
            self._levels[level + 1] += b"".join(
                [sha256(b"\x01" + block[i : i + 2 * HASH_SIZE]).digest() for i in range(0, len(block), 2 * HASH_SIZE)]
            )
            level += 1

    def node(self, level: int, index: int) -> bytes:
        """The root of the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level)."""
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def root(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range that is a node of an RFC 9162 tree (lo aligned to its split).

        The range is cut from the left into the largest aligned perfect subtrees, which are
        exactly the binary digits of hi - lo, and folded from the right.
        """
        if not 0 <= lo < hi <= self._size:
            raise ValueError(f"range [{lo}, {hi}) is not within the {self._size} stored leaves")
        blocks: list[bytes] = []
        while lo < hi:
            level = (hi - lo).bit_length() - 1
            while lo & ((1 << level) - 1):
                level -= 1
            blocks.append(self.node(level, lo >> level))
            lo += 1 << level
        node = blocks[-1]
        for left in reversed(blocks[:-1]):
            node = node_hash(left, node)
        return node

    def root_at(self, size: int) -> bytes:
        """The root of the tree of the first `size` leaves."""
        return EMPTY_ROOT if size == 0 else self.root(0, size)


def inclusion_path(index: int, size: int, root_of: RootOf) -> list[bytes]:
    """RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} out of range for tree size {size}")
    proof: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(root_of(lo + k, hi))
            hi = lo + k
        else:
            proof.append(root_of(lo, lo + k))
            lo += k
    proof.reverse()
    return proof


def consistency_path(old_size: int, size: int, root_of: RootOf) -> list[bytes]:
    """RFC 9162 §2.1.4.1 consistency proof from `old_size` to `size` (0 < old_size <= size)."""
    if not 0 < old_size <= size:
        raise ValueError(f"old size {old_size} out of range for tree size {size}")
    proof: list[bytes] = []
    lo, hi, m, complete = 0, size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(root_of(lo + k, hi))
            hi = lo + k
        else:
            proof.append(root_of(lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(root_of(lo, hi))
    proof.reverse()
    return proof
