"""Audit verification a run at a time (exchange.audit.batch) gives the verdicts of the general path.

- Soundness, by generated inputs: whatever the run checks accept as an entry (or as an entry
  record's line), `json.loads` reads as a JSON object carrying that index (or as that exact record).
- Agreement: bundles as the node writes them, untouched and tampered in many ways (a byte flipped,
  lines moved, entries rewritten with or without their leaf hash, irregular JSON), get the same
  report or the same error, naming the same entry, through `feed_lines` as through `feed_line`.
- The node writes each entry record's line byte for byte as `json.dumps` did, and the bulk Merkle
  helpers give the same trees as appending one leaf at a time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from exchange.audit import batch
from exchange.audit.checkpoint import Checkpoint, cosign, log_origin, sign_checkpoint, witness_name
from exchange.audit.keeper import as_bytes, entry_lines, entry_record, record_line
from exchange.audit.log import FORMAT, BundleCheck, KeyRing, Opener
from exchange.audit.tree import TreeLevels
from exchange.crypto import SigningKey, b64e, canonical_json
from exchange.errors import ExchangeError
from exchange.merkle import Frontier, leaf_hash, root_from_leaf_hashes
from exchange.store import AuditBuffer

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

NODE, WITNESS = "nl-customs", "ke-customs"
LOG_KEY, WITNESS_KEY = SigningKey.generate(), SigningKey.generate()
KEYS = KeyRing({NODE: LOG_KEY.verify_key, WITNESS: WITNESS_KEY.verify_key})
BID = "cd" * 32
AT = "2026-02-03T04:05:06.789Z"

Row = tuple[int, bytes, bytes]


def events(n: int) -> list[dict[str, Any]]:
    """Entries shaped like the node's, mostly plain, some nested, escaped, non-ASCII or idx-last."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 13
        if kind == 5:
            out.append({"event": "channel.changed", "at": AT, "channel": "c", "pos": i, "change": {"type": "invite"}})
        elif kind == 7:
            out.append({"event": "requests.refused", "at": AT, "address": "10.0.0.1", "reasons": {"401": 2}})
        elif kind == 3:  # an object of strings: still the plain form
            to = {"ke-customs": AT, NODE: AT}
            out.append({"event": "bulletin.delivered_to", "at": AT, "bulletin": BID, "to": to})
        elif kind == 9:
            out.append({"event": "bulletin.opened", "at": AT, "bulletin": BID, "user": "Zoë"})
        elif kind == 11:
            out.append({"event": "request.rejected", "at": AT, "reason": 'a "quoted"\\ reason\n', "status": 400})
        elif kind == 12:
            out.append({"event": "node.stopped", "at": AT})  # "idx" sorts last
        else:
            out.append(
                {
                    "event": "bulletin.posted",
                    "at": AT,
                    "bulletin": BID,
                    "recipients": ["ke-customs", NODE],
                    "seq": i,
                    "state": 3,
                    "tlp": "AMBER",
                    "user": f"officer-{i}",
                }
            )
    return out


def make_rows(n: int) -> list[Row]:
    buffer = AuditBuffer(0)
    for entry in events(n):
        buffer.add(entry)  # type: ignore[arg-type]
    return [(r["idx"], r["entry"], r["leaf_hash"]) for r in buffer.rows]


def note(rows: list[Row], size: int, witnessed: bool = False) -> str:
    signed = sign_checkpoint(
        Checkpoint(log_origin(NODE), size, root_from_leaf_hashes([leaf_hash(e) for _, e, _ in rows[:size]])), LOG_KEY
    )
    if witnessed:
        signed = signed.with_signatures(cosign(signed.text, witness_name(WITNESS), WITNESS_KEY, 1_700_000_000))
    return signed.render()


ROWS = make_rows(300)
NOTES = [note(ROWS, 0), note(ROWS, 37), note(ROWS, 200), note(ROWS, 256, witnessed=True)]


def bundle(rows: list[Row] = ROWS, notes: list[str] = NOTES, size: int | None = None) -> list[bytes]:
    """A full export's lines, entries written as the node writes them."""
    header = {"type": "header", "format": FORMAT, "node": NODE, "origin": log_origin(NODE), "complete": True}
    head = {**header, "size": len(rows) if size is None else size, "exported_at": AT, "filter": None, "roster": None}
    lines = [json.dumps(head).encode()] + [record_line({"type": "checkpoint", "note": n}) for n in notes]
    lines += entry_lines(rows).split(b"\n")[:-1]
    return [*lines, record_line({"type": "end", "entries": len(rows)})]


def verdict(lines: list[bytes], *, runs: bool, chunk: int = 97, opener: Opener = map) -> tuple[Any, ...]:
    """What verifying the lines gives: the report's figures, or the error, its detail and entry."""
    check = BundleCheck(keys=KEYS, opener=opener)
    try:
        if runs:
            for start in range(0, len(lines), chunk):
                check.feed_lines(lines[start : start + chunk])
        else:
            for line in lines:
                check.feed_line(line)
        report = check.finish(quorum=1)
    except ExchangeError as exc:
        return type(exc).__name__, exc.detail, getattr(exc, "index", None)
    return "ok", report.entries, report.root, report.tail, [(c.size, c.witnesses) for c in report.checkpoints]


def same_verdict(lines: list[bytes]) -> tuple[Any, ...]:
    slow = verdict(lines, runs=False)
    for chunk in (1, 7, 97, 5000):
        assert verdict(lines, runs=True, chunk=chunk) == slow, (chunk, slow)
    return slow


# -- soundness of the run checks, on generated input ------------------------------------------------

FRAGMENTS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b'"idx":',
    b'"idx":5',
    b'"idx":5,',
    b'"idx":05,',
    b'"idx":5.0,',
    b'"idx":-5,',
    b'"\\u0069dx":5,',
    b'"idx" :5,',
    b"5",
    b"0",
    b"-",
    b".",
    b"e",
    b"1" * 31,
    b"true",
    b"null",
    b"NaN",
    b"a",
    b"\\",
    b'\\"',
    b" ",
    b"\n",
    b"\t",
    b"\x00",
    b"\x7f",
    "é".encode(),
    b"\xff",
    b'"a":',
    b'"a":"b"',
    b'"x":"y",',
    b'"l":[1,"2",true],',
    b'"o":{"idx":5},',
]
fragments = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map(b"".join)
json_scalar = st.one_of(
    st.integers(-(2**40), 2**40), st.text(max_size=6), st.booleans(), st.none(), st.sampled_from(["idx", '"idx":5'])
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.sampled_from(["idx", "ke-customs"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def entry_like(draw: st.DrawFn) -> bytes:
    """A canonical entry carrying idx 5, often with fragments cut in, or fragments alone."""
    body = draw(st.dictionaries(st.sampled_from(["a", "at", "idy", "z", "user"]), json_value, max_size=4))
    text = canonical_json({**body, "idx": draw(st.sampled_from([5, 5, 5, 4, 50]))})
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(fragments) + text[at + cut :]
    return draw(st.one_of(st.just(text), fragments.map(lambda f: b"{" + f + b"}")))


@PROPERTY
@given(entry_like())
def test_what_the_run_checks_accept_json_loads_reads_as_an_object_with_that_index(text: bytes) -> None:
    if batch.plain_prefix(5, [text]) == 1:
        body = json.loads(text)
        assert isinstance(body, dict) and type(body["idx"]) is int and body["idx"] == 5, text
    assert batch.plain_prefix(4, [canonical_json({"a": 1, "idx": 4}), text]) in (1, 2)
    assert batch.plain_prefix(4, [canonical_json({"idx": 4, "z": [1, "a"]}), text]) in (1, 2)


@PROPERTY
@given(entry_like(), st.sampled_from([b"A" * 43, b'A"' + b"B" * 41, b"A\\" + b"B" * 41]), fragments)
def test_what_the_line_checks_accept_is_exactly_that_entry_record(entry: bytes, other: bytes, noise: bytes) -> None:
    """Taken with the checks `take_run` adds: the entry's plain form, and its leaf hash's encoding."""
    escaped = json.dumps(entry.decode("utf-8", "replace"), ensure_ascii=False)[1:-1].encode()
    for text in (escaped, entry, escaped + noise, noise + escaped):
        line = batch.ENTRY_HEAD % 5 + text + batch.LEAF_FIELD + other + b'"}'
        entries, _ = batch.plain_entry_lines(5, [line], 0, 1)
        if not entries:
            continue
        for stored in (b64e(leaf_hash(entries[0])).encode(), other):
            line = batch.ENTRY_HEAD % 5 + text + batch.LEAF_FIELD + stored + b'"}'
            entries, leaves = batch.plain_entry_lines(5, [line, line], 0, 2)
            plain = batch.plain_prefix(5, entries[:1]) == 1
            if plain and batch.matching_prefix([leaf_hash(entries[0])], leaves, encoded=True) == 1:
                record = json.loads(line)
                assert record == {
                    "type": "entry",
                    "idx": 5,
                    "entry": entries[0].decode(),
                    "leaf_hash": leaves[0].decode(),
                }
                assert list(record) == ["type", "idx", "entry", "leaf_hash"]


def test_the_leaf_hash_must_be_its_one_canonical_encoding() -> None:
    digest = leaf_hash(b"x")
    text = b64e(digest).encode()
    assert batch.matching_prefix([digest], [text], encoded=True) == 1
    last = text[-1:]
    other = b"A" if last != b"A" else b"B"  # the same bytes would need the padding bits set
    for wrong in (text[:-1] + other, text.upper(), text.replace(b"-", b"+"), b"=" * 43):
        if wrong != text:
            assert batch.matching_prefix([digest], [wrong], encoded=True) == 0
    assert batch.matching_prefix([digest, digest], [digest, leaf_hash(b"y")], encoded=False) == 1


def test_leaf_hashes_encoded_a_run_at_a_time_stop_at_the_first_wrong_one() -> None:
    digests = [leaf_hash(b"%d" % i) for i in range(50)]
    texts = [b64e(d).encode() for d in digests]
    assert batch.matching_prefix(digests, texts, encoded=True) == 50
    for k in (0, 17, 49):
        for wrong in (texts[k][:-1] + (b"B" if texts[k][-1:] == b"A" else b"A"), texts[k][:42], texts[k] + b"A"):
            assert batch.matching_prefix(digests, [*texts[:k], wrong, *texts[k + 1 :]], encoded=True) == k


@PROPERTY
@given(st.lists(entry_like(), min_size=1, max_size=6), st.sampled_from([b"", b"x", b'"', b"\\", b"\n"]))
def test_entry_run_is_plain_entry_lines_cut_where_plain_prefix_stops(texts: list[bytes], noise: bytes) -> None:
    """`feed_lines` takes runs with `entry_run`, which checks each text once for both."""
    lines = []
    for i, text in enumerate(texts):
        entry = text.replace(b'"idx":5', b'"idx":%d' % (5 + i))
        escaped = json.dumps(entry.decode("utf-8", "replace"), ensure_ascii=False)[1:-1].encode()
        if i == len(texts) - 1:
            escaped += noise
        lines.append(batch.ENTRY_HEAD % (5 + i) + escaped + batch.LEAF_FIELD + b64e(leaf_hash(entry)).encode() + b'"}')
    entries, stored = batch.plain_entry_lines(5, lines, 0, len(lines))
    count = batch.plain_prefix(5, entries)
    assert batch.entry_run(5, lines, 0, len(lines)) == (entries[:count], stored[:count])


# -- agreement on whole bundles -----------------------------------------------------------------------


def test_an_untouched_bundle_verifies_the_same_both_ways() -> None:
    outcome = same_verdict(bundle())
    assert outcome[0] == "ok" and outcome[1] == 300 and outcome[3] == 300 - 256
    assert same_verdict(bundle(ROWS[:256]))[3] == 0


def _forged(rows: list[Row], k: int, text: bytes, leaf: bool) -> list[Row]:
    out = list(rows)
    out[k] = (k, text, leaf_hash(text) if leaf else rows[k][2])
    return out


def _texts(k: int) -> list[bytes]:
    """Entry k rewritten into JSON that breaks one of the rules the checks rely on."""
    body = json.loads(ROWS[k][1])
    plain = canonical_json(body)
    return [
        canonical_json({**body, "user": "someone-else"}),
        plain.replace(b'"idx":%d' % k, b'"idx":%d.0' % k),
        plain.replace(b'"idx":%d' % k, b'"idx":0%d' % k),
        plain.replace(b'"idx":%d' % k, b'"idx":%d' % (k + 1)),
        plain.replace(b'"idx":%d,' % k, b'"idx":%d,"idx":%d,' % (k, k + 1)),
        plain.replace(b'"idx":%d,' % k, b'"idx":%d,"idx":%d,' % (k + 1, k)),
        plain.replace(b'"idx":%d,' % k, b'"o":{"idx":%d},' % k),
        plain.replace(b'"idx":%d,' % k, b'"\\u0069dx":%d,' % k),
        plain.replace(b'"idx":%d,' % k, b'"idx": %d,' % k),
        plain.replace(b'"idx":%d,' % k, b'"idx":%d,"n":%s,' % (k, b"9" * 5000)),
        plain[:-1],
        plain + b" ",
        b"[" + plain + b"]",
        plain.replace(b'"at"', b'"a\\u0074"'),
        plain.replace(b'"at"', b'"at\x01"'),
        plain.replace(b'"at"', '"\u00e5t"'.encode()),
    ]


@pytest.mark.parametrize("k", [0, 36, 37, 100, 199, 255, 299])
@pytest.mark.parametrize("leaf", [False, True])
def test_rewritten_entries_get_the_same_verdict_both_ways(k: int, leaf: bool) -> None:
    for text in _texts(k):
        outcome = same_verdict(bundle(_forged(ROWS, k, text, leaf)))
        if not (leaf and k >= 256):  # after the last checkpoint, a valid entry with its leaf hash passes
            assert outcome[0] != "ok", text


def _line_edits(lines: list[bytes], rng: random.Random) -> list[Callable[[list[bytes]], list[bytes]]]:
    first = 1 + len(NOTES)
    k = rng.randrange(first, len(lines) - 1)

    def at(fn: Callable[[bytes], bytes]) -> Callable[[list[bytes]], list[bytes]]:
        return lambda ls: [*ls[:k], fn(ls[k]), *ls[k + 1 :]]

    def flip(line: bytes) -> bytes:
        pos = rng.randrange(len(line))
        return line[:pos] + bytes([line[pos] ^ (1 << rng.randrange(8))]) + line[pos + 1 :]

    return [
        at(flip),
        at(lambda line: line.replace(b'"leaf_hash"', b'"leaf_hash":"x","leaf_hash"')),
        at(lambda line: line[:-1] + b',"proof":[]}'),
        at(lambda line: line.replace(b'"type":"entry"', b'"type":"checkpoint"')),
        at(lambda line: line.replace(b"\\u00eb", b"\\u00EB")),
        at(lambda line: line + b" "),
        at(lambda line: b" " + line),
        at(lambda line: line.replace(b'\\"', b"\\u0022", 1)),
        at(lambda line: line.replace(b'",', b'\\\\",', 1)),
        at(lambda line: b""),
        lambda ls: [*ls[:k], *ls[k + 1 :]],
        lambda ls: [*ls[:k], ls[k], *ls[k:]],
        lambda ls: [*ls[:k], ls[k + 1], ls[k], *ls[k + 2 :]] if k + 2 < len(ls) else ls[:k],
        lambda ls: ls[:-1],
        lambda ls: [*ls[:k], ls[-1], *ls[k:]],
    ]


@pytest.mark.parametrize("seed", range(20))
def test_tampered_bundles_get_the_same_verdict_both_ways(seed: int) -> None:
    rng = random.Random(seed)
    lines = bundle()
    for edit in _line_edits(lines, rng):
        same_verdict(edit(lines))


def test_a_bundle_whose_tail_was_deleted_or_whose_checkpoints_are_odd_gets_the_same_verdict() -> None:
    assert same_verdict(bundle(ROWS[:250]))[0] == "BadEntry"
    assert same_verdict(bundle(ROWS, [*NOTES, note(ROWS, 300), note(ROWS, 300, witnessed=True)]))[0] == "ok"
    mismatched = _forged(ROWS, 40, canonical_json({**json.loads(ROWS[40][1]), "user": "x"}), True)
    assert same_verdict(bundle(mismatched))[2] == 37  # located between checkpoints 37 and 200


def _broken(line: bytes) -> bytes:
    """A checkpoint record's line with its last signature line's bits changed (still base64)."""
    return line[:-8] + (b"A" if line[-8:-7] != b"A" else b"B") + line[-7:]


def _other_root(size: int) -> bytes:
    rows = _forged(ROWS, 5, canonical_json({**json.loads(ROWS[5][1]), "user": "x"}), True)
    return record_line({"type": "checkpoint", "note": note(rows, size)})


CHECKPOINT_EDITS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "out of order": lambda ls: [ls[0], ls[1], ls[3], ls[2], *ls[4:]],
    "a log signature broken": lambda ls: [*ls[:3], _broken(ls[3]), *ls[4:]],
    "a cosignature broken": lambda ls: [*ls[:4], _broken(ls[4]), *ls[5:]],
    "a split view": lambda ls: [*ls[:3], _other_root(37), *ls[3:]],
    "not JSON after a broken one": lambda ls: [*ls[:2], _broken(ls[2]), b"{not json", *ls[3:]],
    "out of order after a broken one": lambda ls: [ls[0], _broken(ls[1]), ls[3], ls[2], *ls[4:]],
    "a checkpoint after the entries": lambda ls: [*ls[:-1], ls[2], ls[-1]],
    "the same checkpoint twice": lambda ls: [*ls[:4], ls[4], *ls[4:]],
    "a checkpoint line whose type is not": lambda ls: [*ls[:2], ls[2][:-1] + b',"type":"entry"}', *ls[3:]],
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_EDITS))
def test_checkpoints_opened_on_threads_get_the_line_by_line_verdict(name: str) -> None:
    lines = CHECKPOINT_EDITS[name](bundle())
    slow = verdict(lines, runs=False)
    with ThreadPoolExecutor(3) as pool:
        for chunk in (1, 3, 97):
            assert verdict(lines, runs=True, chunk=chunk, opener=pool.map) == slow, (name, chunk)
    if name != "the same checkpoint twice":
        assert slow[0] != "ok", name


# -- what the node writes, and the bulk Merkle helpers ------------------------------------------------


@PROPERTY
@given(st.lists(st.one_of(entry_like(), st.binary(max_size=40)), max_size=6), st.booleans())
def test_entry_lines_are_byte_for_byte_the_json_encoders(entries: list[bytes], short_leaf: bool) -> None:
    rows = [(i * 7, e, leaf_hash(e)[: 31 if short_leaf and i == 2 else 32]) for i, e in enumerate(entries)]
    assert entry_lines(rows) == b"".join(record_line(entry_record(*row)) + b"\n" for row in rows)
    if rows:  # a tampered SQLite row may hold text where bytes belong
        odd: list[tuple[int, Any, Any]] = [*rows[:-1], (rows[-1][0], rows[-1][1].decode("latin-1"), "x")]
        expected = [record_line(entry_record(i, as_bytes(e), as_bytes(h))) + b"\n" for i, e, h in odd]
        assert entry_lines(odd) == b"".join(expected)


@pytest.mark.parametrize("seed", range(20))
def test_bulk_appends_give_the_trees_of_one_by_one_appends(seed: int) -> None:
    rng = random.Random(seed)
    leaves = [leaf_hash(bytes([i % 256, i // 256])) for i in range(rng.randrange(1, 700))]
    one, bulk, levels, bulk_levels = Frontier(), Frontier(), TreeLevels(), TreeLevels()
    for h in leaves:
        one.append(h)
        levels.append(h)
    done = 0
    while done < len(leaves):
        step = rng.choice([0, 1, 2, 3, 5, 8, 64, 100])
        bulk.extend(leaves[done : done + step])
        bulk_levels.extend(leaves[done : done + step])
        done += step
    assert (bulk.size, bulk.hashes) == (one.size, one.hashes)
    assert bulk.root() == root_from_leaf_hashes(leaves)
    assert all(bulk_levels.root_at(n) == levels.root_at(n) for n in range(len(leaves) + 1))
    with pytest.raises(ValueError):
        bulk.extend([b"short"])
    with pytest.raises(ValueError):
        bulk_levels.extend([b"short"])
