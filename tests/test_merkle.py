"""Tests for exchange.merkle: transparency-dev RFC 9162 vectors and generated trees."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parent / "vectors" / "transparency-dev-merkle"
# Only inclusion/ and consistency/ hold RFC 9162 proofs; subtreeinclusion/ and
# subtreeconsistency/ hold (start, end) subtree proofs of a scheme not implemented here.
KINDS = ("inclusion", "consistency")


def _vector_params() -> list[Any]:
    # The vectors are part of the repository (with their licence): missing them is a broken checkout.
    assert VECTORS.is_dir(), f"transparency-dev vectors not found at {VECTORS}"
    files = sorted(f for kind in KINDS for f in (VECTORS / kind).rglob("*.json"))
    return [pytest.param(f, id=f.relative_to(VECTORS).as_posix()) for f in files]


VECTOR_FILES = _vector_params()


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _check_vector(path: Path) -> None:
    """Run one vector file through the verifier; ProofError propagates."""
    data = json.loads(path.read_text())
    proof = [_b64(p) for p in data["proof"] or []]  # "proof": null means an empty proof
    kind = path.relative_to(VECTORS).parts[0]
    if kind == "inclusion":
        verify_inclusion(
            _b64(data["leafHash"]),
            data["leafIdx"],
            data["treeSize"],
            proof,
            _b64(data["root"]),
        )
    else:
        verify_consistency(
            data["size1"],
            data["size2"],
            proof,
            _b64(data["root1"]),
            _b64(data["root2"]),
        )


@pytest.mark.parametrize("path", VECTOR_FILES)
def test_vector(path: Path) -> None:
    want_err = json.loads(path.read_text())["wantErr"]
    assert isinstance(want_err, bool)
    if want_err:
        with pytest.raises(ProofError):
            _check_vector(path)
    else:
        _check_vector(path)


def test_vector_set_is_complete() -> None:
    if not VECTORS.is_dir():
        pytest.skip(f"transparency-dev vectors not found at {VECTORS}")
    files: list[Path] = [p.values[0] for p in VECTOR_FILES]
    happy = [f for f in files if json.loads(f.read_text())["wantErr"] is False]
    assert len(files) >= 190
    assert {f.relative_to(VECTORS).parts[0] for f in happy} == set(KINDS)


RFC6962_INPUTS = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
RFC6962_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in RFC6962_INPUTS]


def test_empty_root() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert Frontier().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_rfc6962_example_roots(size: int) -> None:
    leaves = RFC6962_LEAVES[:size]
    assert root_from_leaf_hashes(leaves).hex() == RFC6962_ROOTS[size - 1]
    frontier = Frontier.from_hashes(leaves)
    assert frontier.size == size
    assert frontier.root().hex() == RFC6962_ROOTS[size - 1]


def test_hash_domain_separation() -> None:
    assert leaf_hash(b"").hex() == RFC6962_ROOTS[0]
    assert node_hash(RFC6962_LEAVES[0], RFC6962_LEAVES[1]).hex() == RFC6962_ROOTS[1]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _flip(value: bytes, at: int = 0) -> bytes:
    return value[:at] + bytes([value[at] ^ 0x01]) + value[at + 1 :]


def _variants(proof: list[bytes]) -> Iterator[list[bytes]]:
    """Yield `proof` with one byte flipped, one hash dropped, or one hash added."""
    for i in range(len(proof)):
        yield [*proof[:i], _flip(proof[i], i % 32), *proof[i + 1 :]]
        yield [*proof[:i], *proof[i + 1 :]]
    yield [*proof, EMPTY_ROOT]
    yield [EMPTY_ROOT, *proof]


SIZES = [*range(1, 65), 127, 128, 129, 1000, 1025]


@pytest.mark.parametrize("size", SIZES)
def test_generated_inclusion_proofs(size: int) -> None:
    leaves = _leaves(size)
    root = root_from_leaf_hashes(leaves)
    indices = range(size) if size <= 64 else [0, 1, size // 2, size - 2, size - 1]
    for index in indices:
        proof = inclusion_proof(leaves, index)
        verify_inclusion(leaves[index], index, size, proof, root)
        assert root_from_inclusion(leaves[index], index, size, proof) == root
        for bad in _variants(proof):
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], index, size, bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, proof, _flip(root, 31))
        with pytest.raises(ProofError):
            verify_inclusion(_flip(leaves[index]), index, size, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index ^ 1, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[0], size, size, inclusion_proof(leaves, 0), root)


@pytest.mark.parametrize("size", SIZES)
def test_generated_consistency_proofs(size: int) -> None:
    leaves = _leaves(size)
    root2 = root_from_leaf_hashes(leaves)
    old_sizes = range(1, size + 1) if size <= 64 else [1, 2, 3, size // 2, size - 1, size]
    for old in old_sizes:
        root1 = root_from_leaf_hashes(leaves[:old])
        proof = consistency_proof(leaves, old)
        assert (proof == []) == (old == size)
        verify_consistency(old, size, proof, root1, root2)
        for bad in _variants(proof):
            with pytest.raises(ProofError):
                verify_consistency(old, size, bad, root1, root2)
        with pytest.raises(ProofError):
            verify_consistency(old, size, proof, _flip(root1, 7), root2)
        with pytest.raises(ProofError):
            verify_consistency(old, size, proof, root1, _flip(root2, 31))
        if old < size:
            with pytest.raises(ProofError):
                verify_consistency(old, size, proof, root2, root1)
            with pytest.raises(ProofError):
                verify_consistency(old + 1, size, proof, root1, root2)


def test_consistency_edge_cases() -> None:
    leaves = _leaves(5)
    root = root_from_leaf_hashes(leaves)
    verify_consistency(5, 5, [], root, root)
    bad_cases: list[tuple[int, int, list[bytes], bytes, bytes]] = [
        (0, 0, [], EMPTY_ROOT, EMPTY_ROOT),  # a proof from size 0 is always rejected
        (0, 5, [], EMPTY_ROOT, root),
        (5, 4, [], root, root),
        (5, 5, [root], root, root),
        (4, 5, [], root, root),
        (4, 5, [b"short"], root, root),
    ]
    for size1, size2, proof, root1, root2 in bad_cases:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof, root1, root2)
    with pytest.raises(ValueError):
        consistency_proof(leaves, 0)
    with pytest.raises(ValueError):
        consistency_proof(leaves, 6)
    with pytest.raises(ValueError):
        inclusion_proof(leaves, 5)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[0], -1, 5, inclusion_proof(leaves, 0), root)


def test_frontier_matches_root_for_sizes_0_to_100() -> None:
    leaves = _leaves(100)
    frontier = Frontier()
    assert frontier.root() == root_from_leaf_hashes([])
    for n, leaf in enumerate(leaves, start=1):
        frontier.append(leaf)
        assert frontier.size == n
        assert len(frontier.hashes) == n.bit_count()
        assert frontier.root() == root_from_leaf_hashes(leaves[:n])
        restored = Frontier(frontier.size, frontier.hashes)
        assert restored.root() == frontier.root()


def test_frontier_resumes_after_restore() -> None:
    leaves = _leaves(77)
    saved = Frontier.from_hashes(leaves[:40])
    resumed = Frontier(saved.size, saved.hashes)
    resumed.extend(leaves[40:])
    assert resumed.root() == root_from_leaf_hashes(leaves)


def test_frontier_rejects_bad_state() -> None:
    with pytest.raises(ValueError):
        Frontier(3, [EMPTY_ROOT])
    with pytest.raises(ValueError):
        Frontier(1, [b"short"])
    with pytest.raises(ValueError):
        Frontier(-1, [])
    with pytest.raises(ValueError):
        Frontier().append(b"short")


@pytest.mark.slow
def test_million_leaves_streaming() -> None:
    n = 1_000_000
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    frontier = Frontier.from_hashes(iter(leaves))
    assert frontier.size == n
    assert len(frontier.hashes) == n.bit_count()
    root = root_from_leaf_hashes(leaves)
    assert frontier.root() == root
    index = 765_432
    verify_inclusion(leaves[index], index, n, inclusion_proof(leaves, index), root)
