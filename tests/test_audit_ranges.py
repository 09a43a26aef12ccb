"""A bundle file verified in ranges, on several processes (exchange.audit.ranges,
exchange.cli.verify_ranges), gives exactly the one-core verdict: the same report for a sound log,
and for a tampered one the same error naming the same entry (the ranges give up and the file is
checked line by line). Real worker processes, started as the CLI starts them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.progress import Progress

from exchange.audit.checkpoint import Checkpoint, cosign, log_origin, sign_checkpoint, witness_name
from exchange.audit.keeper import entry_lines, record_line
from exchange.audit.log import FORMAT, BundleCheck, KeyRing, LogVerifier
from exchange.audit.ranges import BLOCK, BLOCK_HEIGHT, RangeCheck, cover, entry_index
from exchange.cli import audit as cli_audit, range_worker, verify_ranges
from exchange.cli.audit import verify_bundle
from exchange.cli.lines import READ_SIZE
from exchange.cli.main import cli
from exchange.cli.quorum import finish_with_quorum
from exchange.crypto import SigningKey, canonical_json
from exchange.errors import ExchangeError, InvalidInput
from exchange.merkle import Frontier, leaf_hash, leaf_hashes, perfect_root, root_from_leaf_hashes
from exchange.store import AuditBuffer

NODE, WITNESS = "nl-customs", "ke-customs"
LOG_KEY, WITNESS_KEY = SigningKey.generate(), SigningKey.generate()
KEYS = KeyRing({NODE: LOG_KEY.verify_key, WITNESS: WITNESS_KEY.verify_key})
AT = "2026-02-03T04:05:06.789Z"
SIZE = 5 * BLOCK + 77  # three workers: ranges from 0, 2 * BLOCK and 4 * BLOCK
CUTS = (0, 100, BLOCK, 2 * BLOCK + 5, 4 * BLOCK, SIZE - 40, SIZE)  # inside blocks and on their edges

Row = tuple[int, bytes, bytes]


def plain_rows(n: int) -> list[Row]:
    """Entries in the plain form, as the node writes most of them."""
    buffer = AuditBuffer(0)
    for i in range(n):
        to = {"ke-customs": AT, NODE: AT} if i % 5 == 0 else "ke-customs"
        entry: dict[str, Any] = {"event": "bulletin.delivered_to", "at": AT, "bulletin": f"{i:064x}", "to": to}
        buffer.add(entry)  # type: ignore[arg-type]
    return [(r["idx"], r["entry"], r["leaf_hash"]) for r in buffer.rows]


ROWS = plain_rows(SIZE)


def note(rows: list[Row], size: int, witnessed: bool = False) -> str:
    root = root_from_leaf_hashes([leaf_hash(e) for _, e, _ in rows[:size]])
    signed = sign_checkpoint(Checkpoint(log_origin(NODE), size, root), LOG_KEY)
    if witnessed:
        signed = signed.with_signatures(cosign(signed.text, witness_name(WITNESS), WITNESS_KEY, 1_700_000_000))
    return signed.render()


def bundle_lines(rows: list[Row], cuts: tuple[int, ...] = CUTS) -> list[bytes]:
    """A full export's lines as the node writes them, each checkpoint signed over `rows`."""
    head = {"type": "header", "format": FORMAT, "node": NODE, "origin": log_origin(NODE), "complete": True}
    head |= {"size": len(rows), "exported_at": AT, "filter": None, "roster": None}
    notes = [note(rows, size, witnessed=size == cuts[-1]) for size in cuts]
    lines = [json.dumps(head).encode(), *(record_line({"type": "checkpoint", "note": n}) for n in notes)]
    lines += entry_lines(rows).split(b"\n")[:-1]
    return [*lines, record_line({"type": "end", "entries": len(rows)})]


LINES = bundle_lines(ROWS)
FIRST = 1 + len(CUTS)  # the line of entry 0


@pytest.fixture
def small_logs_in_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logs of a few blocks are cut into ranges too (in this process, which plans them)."""
    monkeypatch.setattr(verify_ranges, "PARALLEL_FROM", 0)
    monkeypatch.setattr(verify_ranges, "PER_WORKER", BLOCK)


@pytest.fixture
def write(tmp_path: Path) -> Iterator[Callable[[list[bytes]], Path]]:
    count = iter(range(1000))

    def to_file(lines: list[bytes]) -> Path:
        path = tmp_path / f"bundle-{next(count)}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return path

    yield to_file


def verdict(path: Path, workers: int) -> tuple[Any, ...]:
    """The report's figures, or the error's type, detail and entry."""
    try:
        report = verify_bundle(path, KEYS, quorum=1, workers=workers)
    except ExchangeError as exc:
        return type(exc).__name__, exc.detail, getattr(exc, "index", None)
    return "ok", report.entries, report.root, report.tail, [(c.size, c.witnesses) for c in report.checkpoints]


def in_ranges(path: Path) -> Any:
    """The report of the ranges alone (None if they gave up)."""
    check = BundleCheck(keys=KEYS)
    return verify_ranges.verify_in_ranges(path, check, lambda c: finish_with_quorum(c, 1, None), workers=3)


# -- a sound log ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_a_sound_log_in_ranges_gives_the_one_core_report(write: Callable[[list[bytes]], Path]) -> None:
    path = write(LINES)
    assert [(s.first, s.stop > s.start) for s in planned(path, 3)[0]] == [
        (0, True),
        (2 * BLOCK, True),
        (4 * BLOCK, True),
    ]
    report = in_ranges(path)
    assert report is not None, "the ranges gave up on a sound log"
    one_core = verdict(path, 1)
    assert one_core[0] == "ok" and one_core[1] == SIZE
    assert verdict(path, 3) == one_core
    assert (report.entries, report.root, report.tail) == one_core[1:4]


def planned(path: Path, workers: int) -> Any:
    """The ranges a file is cut into, or None."""
    with path.open("rb") as fh:
        return verify_ranges.plan(fh, BundleCheck(keys=KEYS), workers)


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_the_cli_takes_a_number_of_workers(write: Callable[[list[bytes]], Path]) -> None:
    path = write(LINES)
    runs = [CliRunner().invoke(cli, ["audit", "verify", "--bundle", str(path), "--workers", n]) for n in ("1", "2")]
    # No keys given and the bundle carries no roster: refused, in the same words whatever the workers.
    assert [r.exit_code for r in runs] == [1, 1] and runs[0].output == runs[1].output
    assert "roster" in runs[0].output
    zero = CliRunner().invoke(cli, ["audit", "verify", "--bundle", str(path), "--workers", "0"])
    assert zero.exit_code == 2 and "--workers" in zero.output


def test_small_logs_partial_bundles_and_one_worker_stay_on_one_core(write: Callable[[list[bytes]], Path]) -> None:
    path = write(LINES)
    assert planned(path, 3) is None  # fewer than PARALLEL_FROM entries
    partial = [line.replace(b'"complete": true', b'"complete": false') for line in LINES]
    verify_ranges.PARALLEL_FROM, saved = 0, verify_ranges.PARALLEL_FROM
    try:
        assert planned(write(partial), 3) is None
        assert planned(path, 1) is None
    finally:
        verify_ranges.PARALLEL_FROM = saved


# -- tampered logs --------------------------------------------------------------------------------------


def _forged(rows: list[Row], k: int, fields: dict[str, Any], *, leaf: bool = True) -> list[Row]:
    text = canonical_json({**json.loads(rows[k][1]), **fields})
    out = list(rows)
    out[k] = (k, text, leaf_hash(text) if leaf else rows[k][2])
    return out


def _at(k: int, edit: Callable[[bytes], bytes]) -> Callable[[list[bytes]], list[bytes]]:
    """Edit the line of entry k."""
    return lambda ls: [*ls[: FIRST + k], edit(ls[FIRST + k]), *ls[FIRST + k + 1 :]]


EDITS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "a byte changed": _at(3 * BLOCK + 7, lambda line: line.replace(b"ke-customs", b"ke-customz", 1)),
    "a line deleted": lambda ls: [*ls[: FIRST + 2 * BLOCK], *ls[FIRST + 2 * BLOCK + 1 :]],
    "two lines swapped": lambda ls: [*ls[: FIRST + 10], ls[FIRST + 11], ls[FIRST + 10], *ls[FIRST + 12 :]],
    "a line repeated": lambda ls: [*ls[: FIRST + 4 * BLOCK], ls[FIRST + 4 * BLOCK], *ls[FIRST + 4 * BLOCK :]],
    "a checkpoint among the entries": lambda ls: [*ls[: FIRST + BLOCK + 3], ls[2], *ls[FIRST + BLOCK + 3 :]],
    "a blank line": lambda ls: [*ls[: FIRST + 3 * BLOCK], b"", *ls[FIRST + 3 * BLOCK :]],
    "a stored leaf hash changed": _at(2 * BLOCK + 1, lambda line: line[:-10] + b"AAAAAAAA" + line[-2:]),
    "no end record": lambda ls: ls[:-1],
    "a line after the end": lambda ls: [*ls, ls[-2]],
    "the end miscounts": lambda ls: [*ls[:-1], record_line({"type": "end", "entries": SIZE - 1})],
    "a forger's entry inside a checkpoint": lambda _: (
        bundle_lines(ROWS)[:FIRST] + bundle_lines(_forged(ROWS, 3 * BLOCK + 9, {"bulletin": "ff" * 32}))[FIRST:]
    ),
    "the last entries rewritten": lambda _: (
        bundle_lines(ROWS)[:FIRST] + bundle_lines(_forged(ROWS, SIZE - 3, {"bulletin": "ee" * 32}))[FIRST:]
    ),
    "the tail deleted": lambda ls: [
        *ls[: FIRST + 4 * BLOCK + 2],
        record_line({"type": "end", "entries": 4 * BLOCK + 2}),
    ],
}


@pytest.mark.usefixtures("small_logs_in_ranges")
@pytest.mark.parametrize("name", sorted(EDITS))
def test_a_tampered_log_gets_the_one_core_verdict_in_ranges(name: str, write: Callable[[list[bytes]], Path]) -> None:
    path = write(EDITS[name](LINES))
    one_core = verdict(path, 1)
    assert (one_core[0] == "ok") == (name == "a blank line"), name  # skipped by every reader, so not tampering
    assert verdict(path, 3) == one_core


def _irregular(rows: list[Row]) -> list[Row]:
    """Some entries as the node writes them, but not in the plain form (checked line by line)."""
    for k, fields in (
        (2 * BLOCK + 50, {"user": "Zoë", "change": {"a": [1, {"b": None}]}}),
        (3 * BLOCK, {"reason": 'a "quoted"\\ reason\n'}),
        (SIZE - 1, {"nested": [[1]]}),
    ):
        rows = _forged(rows, k, fields)
    return rows


IRREGULAR = _irregular(ROWS)


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_entries_not_in_the_plain_form_are_checked_line_by_line_in_their_range(
    write: Callable[[list[bytes]], Path],
) -> None:
    lines = bundle_lines(IRREGULAR)
    path = write([*lines[: FIRST + 7], b"", *lines[FIRST + 7 :]])  # a blank line, skipped by every reader
    assert in_ranges(path) is not None
    assert verdict(path, 3) == verdict(path, 1) and verdict(path, 1)[0] == "ok"


@pytest.mark.usefixtures("small_logs_in_ranges")
@pytest.mark.parametrize("seed", range(12))
def test_lines_tampered_at_random_get_the_one_core_verdict(seed: int, write: Callable[[list[bytes]], Path]) -> None:
    rng = random.Random(seed)
    lines = bundle_lines(IRREGULAR)
    k = FIRST + rng.choice([2 * BLOCK + 50, 3 * BLOCK, SIZE - 1, rng.randrange(SIZE)])
    line = lines[k]

    def flip() -> bytes:
        p = rng.randrange(len(line))
        return line[:p] + bytes([line[p] ^ (1 << rng.randrange(8))]) + line[p + 1 :]

    edits: list[Callable[[], bytes]] = [
        flip,
        lambda: line.replace(b'"leaf_hash"', b'"proof":[],"size":1,"leaf_hash"'),
        lambda: line.replace(b'"idx":', b'"idx":true,"x":', 1),
        lambda: line.replace(b'"type":"entry"', b'"type":"end"'),
        lambda: line[:-3] + b'A"}',  # a stored leaf hash not canonical, or not the entry's
        lambda: line.replace(b'"entry":"', b'"entry":"\\ud800', 1),
    ]
    for edit in edits:
        path = write([*lines[:k], edit(), *lines[k + 1 :]])
        one_core = verdict(path, 1)
        assert verdict(path, 3) == one_core


def _member(line: bytes, text: bytes) -> bytes:
    """An entry record's line with one more member, `text`, before its leaf hash."""
    return line.replace(b',"leaf_hash"', b',"x":' + text + b',"leaf_hash"', 1)


DEEP = {
    "a line nested past the bound": lambda ls: [
        *ls[: FIRST + 9],
        _member(ls[FIRST + 9], b"[" * 985 + b"]" * 985),
        *ls[FIRST + 10 :],
    ],
    "a line nested just within it": lambda ls: [
        *ls[: FIRST + 9],
        _member(ls[FIRST + 9], b"[" * 127 + b"]" * 127),
        *ls[FIRST + 10 :],
    ],
    "a header line in UTF-16": lambda ls: [ls[0].decode().encode("utf-16-be") + b"\x00", *ls[1:]],
    "a checkpoint line in UTF-16": lambda ls: [ls[0], ls[1], ls[2].decode().encode("utf-16-be"), *ls[3:]],
}


@pytest.mark.usefixtures("small_logs_in_ranges")
@pytest.mark.parametrize("name", sorted(DEEP))
def test_nesting_and_encodings_get_the_one_core_verdict_whatever_the_stack(
    name: str, write: Callable[[list[bytes]], Path]
) -> None:
    path = write(DEEP[name](LINES))
    one_core = verdict(path, 1)
    assert (one_core[0] == "ok") == name.endswith("within it"), one_core
    assert verdict(path, 3) == one_core


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_an_entry_nested_past_the_bound_is_named(write: Callable[[list[bytes]], Path]) -> None:
    deep = b"[" * 200 + b"]" * 200
    rows = list(ROWS)
    text = rows[50][1][:-1] + b',"z":' + deep + b"}"
    rows[50] = (50, text, leaf_hash(text))
    path = write(bundle_lines(rows))
    assert verdict(path, 1) == ("BadEntry", "entry 50: is nested deeper than 128 levels", 50)
    assert verdict(path, 3) == verdict(path, 1)


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_a_line_longer_than_a_read_is_left_to_one_core(write: Callable[[list[bytes]], Path]) -> None:
    k = FIRST + 3 * BLOCK + 3
    padded = LINES[k] + b" " * (READ_SIZE + 10)  # JSON allows the spaces: one core takes it
    path = write([*LINES[:k], padded, *LINES[k + 1 :]])
    assert in_ranges(path) is None
    assert verdict(path, 3) == verdict(path, 1) and verdict(path, 1)[0] == "ok"


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_a_bundle_from_a_pipe_is_verified_on_one_core(tmp_path: Path, write: Callable[[list[bytes]], Path]) -> None:
    fifo = tmp_path / "bundle.fifo"
    os.mkfifo(fifo)
    data = write(LINES).read_bytes()
    feeder = threading.Thread(target=fifo.write_bytes, args=(data,))
    feeder.start()
    try:
        report = verify_bundle(fifo, KEYS, quorum=1, workers=3)
    finally:
        feeder.join(timeout=30)
    assert report.entries == SIZE


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_a_file_rewritten_while_the_ranges_read_it_is_read_again_on_one_core(
    write: Callable[[list[bytes]], Path],
) -> None:
    """An entry the first range has already checked is rewritten in place (same length, same
    file): every range passes on what it read, so only the file's change gives it away. The
    verdict is then the one-core verdict on the file as it now is, naming the rewritten entry."""
    path = write(LINES)
    k = 5
    start = sum(len(line) + 1 for line in LINES[: FIRST + k])
    tampered = LINES[FIRST + k].replace(b"ke-customs", b"ke-customz", 1)
    assert len(tampered) == len(LINES[FIRST + k]) and tampered != LINES[FIRST + k]
    rewrites: list[int] = []

    def rewrite_once(checked: int) -> None:  # called as the first range, in this process, reads on
        if not rewrites and checked > k:
            with path.open("r+b") as fh:
                fh.seek(start)
                fh.write(tampered)
            rewrites.append(checked)

    check = BundleCheck(keys=KEYS)
    finish = lambda c: finish_with_quorum(c, 1, None)  # noqa: E731
    assert verify_ranges.verify_in_ranges(path, check, finish, workers=3, progress=rewrite_once) is None
    assert rewrites, "the first range never reported its progress"
    path.write_bytes(b"".join(line + b"\n" for line in LINES))
    rewrites.clear()
    try:
        verify_bundle(path, KEYS, quorum=1, workers=3, progress=rewrite_once)
    except ExchangeError as exc:
        got: tuple[Any, ...] = (type(exc).__name__, exc.detail, getattr(exc, "index", None))
    else:
        pytest.fail("a file rewritten during the check was reported sound")
    assert rewrites and got == verdict(path, 1) == ("BadEntry", got[1], k), got


GIVE_UP_AT_ONCE = """
from pathlib import Path
from exchange.cli import verify_ranges
from exchange.audit.log import KeyRing
from exchange.audit.ranges import BLOCK
from exchange.cli.audit import verify_bundle
from exchange.crypto import VerifyKey
from exchange.errors import ExchangeError
verify_ranges.PARALLEL_FROM, verify_ranges.PER_WORKER = 0, BLOCK
keys = KeyRing({{name: VerifyKey(bytes.fromhex(raw)) for name, raw in {keys!r}.items()}})
try:
    verify_bundle(Path({path!r}), keys, quorum=1, workers=3)
except ExchangeError as exc:
    print(type(exc).__name__, exc.detail)
"""


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_ranges_given_up_before_their_workers_start_leave_no_traceback(write: Callable[[list[bytes]], Path]) -> None:
    """The first range fails at once, while the other workers are still starting: they stop
    quietly, and the user sees the verdict alone."""
    path = write(_at(3, lambda line: line.replace(b"ke-customs", b"ke-customz", 1))(LINES))
    raw_keys = {NODE: LOG_KEY.verify_key.raw.hex(), WITNESS: WITNESS_KEY.verify_key.raw.hex()}
    run = subprocess.run(
        [sys.executable, "-c", GIVE_UP_AT_ONCE.format(path=str(path), keys=raw_keys)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout == "BadEntry entry 3: its content does not match its stored leaf hash: it was changed\n"


def test_a_range_stops_at_its_next_read_once_the_check_is_given_up(write: Callable[[list[bytes]], Path]) -> None:
    """A worker whose check was given up elsewhere (a range failed, the file changed) reads no
    further: its range is not taken, whatever it holds."""
    path = write(LINES)
    start, stop = sum(len(line) + 1 for line in LINES[:FIRST]), path.stat().st_size - len(LINES[-1]) - 1
    span = range_worker.Range(start, stop, 0)
    event = threading.Event()
    range_worker.started(event)
    try:
        assert range_worker.check_range(str(path), span, CUTS) is not None  # sound, and not given up
        event.set()
        assert range_worker.check_range(str(path), span, CUTS) is None
    finally:
        range_worker.started(None)


def _a_broken_range(*args: Any) -> Any:
    """A range check with a bug: imported by name in the workers as in this process."""
    raise RuntimeError("a bug in a range")


@pytest.mark.usefixtures("small_logs_in_ranges")
def test_a_range_that_fails_unexpectedly_leaves_the_verdict_to_one_core(
    write: Callable[[list[bytes]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the ranges do not expect (a bug, memory) is not the user's verdict: the ranges
    give up, and one core gives its answer, sound or naming the tampered entry."""
    monkeypatch.setattr(verify_ranges, "check_range", _a_broken_range)
    sound = write(LINES)
    assert in_ranges(sound) is None
    assert verdict(sound, 3) == verdict(sound, 1) and verdict(sound, 1)[0] == "ok"
    tampered = write(_at(7, lambda line: line.replace(b"ke-customs", b"ke-customz", 1))(LINES))
    assert verdict(tampered, 3) == verdict(tampered, 1) == ("BadEntry", verdict(tampered, 1)[1], 7)


@pytest.mark.usefixtures("small_logs_in_ranges")
@pytest.mark.parametrize("tampered", [False, True])
def test_the_progress_bar_says_when_one_core_checks_again(
    write: Callable[[list[bytes]], Path], monkeypatch: pytest.MonkeyPatch, tampered: bool
) -> None:
    """The ranges gave up (here on an entry changed past one core's first read): the bar starts
    again from 0 and says why."""
    bars: list[Progress] = []

    def progress_bar() -> Progress:
        bars.append(Progress())
        return bars[-1]

    monkeypatch.setattr(cli_audit, "_progress_bar", progress_bar)
    path = write(EDITS["a byte changed"](LINES) if tampered else LINES)

    def run(progress: Any, on_header: Any) -> Any:
        return verify_bundle(path, KEYS, quorum=1, workers=3, progress=progress, on_header=on_header)

    try:
        cli_audit._run_verify(run, True)
    except SystemExit as exc:
        assert tampered and exc.code == 1
    (task,) = bars[0].tasks
    assert task.description == ("verifying on one core" if tampered else "verifying")


# -- the pure parts -----------------------------------------------------------------------------------------


def test_a_range_folds_its_leaves_into_the_largest_subtrees_no_checkpoint_ends_inside() -> None:
    lines = entry_lines(ROWS[: 3 * BLOCK + 5]).split(b"\n")[:-1]
    check = RangeCheck(0, [BLOCK + 1, 0, 3 * BLOCK + 2])
    assert check.feed(lines[:1000]) and check.feed(lines[1000:])
    leaves = [r[2] for r in ROWS]
    got = check.subtrees()
    assert got[0] == (perfect_root(leaves[:BLOCK]), BLOCK_HEIGHT)
    # BLOCK + 1 ends inside the second block: it is cut into the halves that leave that size an edge.
    assert [h for _, h in got[1 : 1 + BLOCK_HEIGHT + 1]] == [0, 0, *range(1, BLOCK_HEIGHT)]
    assert got[1 + BLOCK_HEIGHT + 1] == (perfect_root(leaves[2 * BLOCK : 3 * BLOCK]), BLOCK_HEIGHT)
    assert [h for _, h in got[BLOCK_HEIGHT + 3 :]] == [1, 1, 0]  # 3 * BLOCK + 2 ends between the two pairs
    assert check.count == 3 * BLOCK + 5
    frontier, sizes = Frontier(), []
    for root, height in got:
        frontier.push_subtree(root, height)
        sizes.append(frontier.size)
    assert frontier.root() == root_from_leaf_hashes(leaves[: 3 * BLOCK + 5])
    assert {BLOCK + 1, 3 * BLOCK + 2} <= set(sizes)
    assert cover(5, leaves[5:9], []) == [(leaves[5], 0), (perfect_root(leaves[6:8]), 1), (leaves[8], 0)]
    assert entry_index(lines[77]) == 77 and entry_index(LINES[0]) is None


def test_a_range_takes_nothing_after_a_line_out_of_place() -> None:
    lines = entry_lines(ROWS[BLOCK : BLOCK + 10]).split(b"\n")[:-1]
    check = RangeCheck(BLOCK, [])
    assert not check.feed([*lines[:4], lines[5]]) and not check.feed(lines[5:])
    with pytest.raises(ValueError, match="multiple"):
        RangeCheck(BLOCK + 1, [])


def test_a_subtree_root_is_taken_only_where_no_checkpoint_ends_inside_it() -> None:
    leaves = leaf_hashes([e for _, e, _ in ROWS[: 2 * BLOCK]])
    verifier = LogVerifier(NODE, KEYS)
    verifier.checkpoint(note(ROWS, BLOCK + 3))
    verifier.take_subtrees([(perfect_root(leaves[:BLOCK]), BLOCK_HEIGHT)])
    with pytest.raises(InvalidInput, match="inside a subtree"):
        verifier.take_subtrees([(perfect_root(leaves[BLOCK:]), BLOCK_HEIGHT)])
    verifier.take_subtrees(cover(BLOCK, leaves[BLOCK:], [BLOCK + 3]))
    assert verifier.finish(complete=True).root == Frontier.from_hashes(leaves).root()
    frontier = Frontier.from_hashes(leaves[:3])
    with pytest.raises(ValueError, match="cannot be appended"):
        frontier.push_subtree(perfect_root(leaves[:BLOCK]), BLOCK_HEIGHT)
