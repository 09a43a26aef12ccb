"""RFC 9162 Merkle tree maths for the audit log (pure: no I/O, no clock)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from exchange.errors import ProofError as ProofError  # its home is errors; imported from here too

HASH_SIZE = 32
Subtree = tuple[bytes, int]  # the root of an aligned perfect subtree, and its height
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaf_hashes(entries: Iterable[bytes]) -> list[bytes]:
    """Return the leaf hash of each entry, in order (one comprehension: no call per entry)."""
    sha256 = hashlib.sha256
    return [sha256(b"\x00" + e).digest() for e in entries]


def parent_hashes(children: Sequence[bytes]) -> list[bytes]:
    """Return node_hash(children[2i], children[2i + 1]) for each pair; an odd last child is left out."""
    sha256, pairs = hashlib.sha256, zip(children[0::2], children[1::2], strict=False)
    return [sha256(b"\x01" + left + right).digest() for left, right in pairs]


def perfect_root(leaves: Sequence[bytes]) -> bytes:
    """Return the root of a perfect subtree from its leaf hashes: a power of two of them."""
    level = leaves
    if len(level) & (len(level) - 1) or not level:
        raise ValueError("a perfect subtree has a power of two leaves")
    while len(level) > 1:
        level = parent_hashes(level)
    return level[0]


def _split(n: int) -> int:
    """Return the largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(leaves: Sequence[bytes]) -> bytes:
    """Return MTH of the leaf hashes (EMPTY_ROOT for none), O(n) time, no recursion.

    Pairing adjacent nodes level by level and promoting a lone last node unchanged
    yields exactly the RFC 9162 split-at-largest-power-of-two tree.
    """
    level = list(leaves)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


class Frontier:
    """Compact range [0, size): roots of its perfect subtrees, largest first.

    Holds popcount(size) <= log2(size) + 1 hashes, so a log of any size is appended
    to and rooted in O(log n) memory; each append costs amortised O(1) hashes.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Restore a frontier from a stored `size` and its subtree roots `hashes`."""
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} needs {max(size, 0).bit_count()} hashes")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("frontier hashes must be 32 bytes")
        self._size = size
        self._hashes = list(hashes)

    @classmethod
    def from_hashes(cls, leaf_hashes: Iterable[bytes]) -> Frontier:
        """Build a frontier by appending each of the given leaf hashes in order."""
        frontier = cls()
        frontier.extend(leaf_hashes)
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Perfect-subtree roots, left to right; persist them with `size`."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash, merging equal subtrees like a binary counter carry."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError("leaf hashes must be 32 bytes")
        node, carry = leaf_hash, self._size
        while carry & 1:
            node = node_hash(self._hashes.pop(), node)
            carry >>= 1
        self._hashes.append(node)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append each of the given leaf hashes in order.

        Same result as appending them one by one, but hashed a perfect subtree at a time: the
        largest aligned block that fits is rooted level by level, then merged like one carry.
        """
        leaves = list(leaf_hashes)
        if leaves and set(map(len, leaves)) != {HASH_SIZE}:
            raise ValueError("leaf hashes must be 32 bytes")
        done = 0
        while done < len(leaves):
            aligned = (self._size & -self._size).bit_length() - 1 if self._size else 62
            height = min(aligned, (len(leaves) - done).bit_length() - 1)
            self._push(perfect_root(leaves[done : done + (1 << height)]), height)
            done += 1 << height

    def push_subtree(self, root: bytes, height: int) -> None:
        """Append the root of a perfect subtree of 2**height leaves hashed elsewhere; the size so
        far must be a multiple of 2**height (else the subtree would not be one of the tree's)."""
        if len(root) != HASH_SIZE or height < 0 or self._size & ((1 << height) - 1):
            raise ValueError(f"a subtree of height {height} cannot be appended at size {self._size}")
        self._push(root, height)

    def _push(self, node: bytes, height: int) -> None:
        """Append the root of a perfect subtree of 2**height leaves; the size must be a multiple of it."""
        carry = self._size >> height
        while carry & 1:
            node = node_hash(self._hashes.pop(), node)
            carry >>= 1
        self._hashes.append(node)
        self._size += 1 << height

    def root(self) -> bytes:
        """Return the RFC 9162 root of the leaves so far (EMPTY_ROOT if none)."""
        if not self._hashes:
            return EMPTY_ROOT
        node = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            node = node_hash(left, node)
        return node


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the RFC 9162 §2.1.3.1 inclusion path of leaves[index], leaf to root."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"index {index} out of range for tree size {len(leaves)}")
    proof: list[bytes] = []
    lo, hi = 0, len(leaves)
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(root_from_leaf_hashes(leaves[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(root_from_leaf_hashes(leaves[lo : lo + k]))
            lo += k
    proof.reverse()
    return proof


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the RFC 9162 §2.1.4.1 consistency proof from old_size to len(leaves).

    Requires 0 < old_size <= len(leaves); the proof is empty when the sizes are equal.
    """
    if not 0 < old_size <= len(leaves):
        raise ValueError(f"old_size {old_size} out of range for tree size {len(leaves)}")
    proof: list[bytes] = []
    lo, hi, m, complete = 0, len(leaves), old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(root_from_leaf_hashes(leaves[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(root_from_leaf_hashes(leaves[lo : lo + k]))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(root_from_leaf_hashes(leaves[lo:hi]))
    proof.reverse()
    return proof


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("proof elements must be 32 bytes")


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Return the root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-4)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    if len(leaf_hash) != HASH_SIZE:
        raise ProofError("leaf hash must be 32 bytes")
    _check_proof_hashes(proof)
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check leaf_hash is at index in the tree (size, root); else raise ProofError."""
    if root_from_inclusion(leaf_hash, index, size, proof) != root:
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that root2 extends root1 (RFC 9162 §2.1.4.2); raise ProofError if not.

    Equal sizes need an empty proof and equal roots (compared as given, whatever their
    length). A proof from size 0 is always rejected, as the transparency-dev vectors
    require: an empty tree proves nothing.
    """
    if not 0 <= size1 <= size2:
        raise ProofError(f"invalid tree sizes {size1} -> {size2}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError("sizes are equal but the proof is not empty")
        if root1 != root2:
            raise ProofError("sizes are equal but the roots differ")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    _check_proof_hashes(proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != root1:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != root2:
        raise ProofError("consistency proof does not lead to the new root")
