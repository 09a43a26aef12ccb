"""`exchange audit verify --json` answers every failed verification with `{"ok": false, ...}`:
before (found by a read-only review), a bundle refused as bad input (truncated, a wrong end count,
checkpoints out of order) printed a plain `error:` line, which a script reading JSON cannot parse."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from exchange.cli.main import cli
from exchange.crypto import strict_loads
from tests.vectors import make_audit_vectors as gen

LINES: list[str] = strict_loads(gen.FILE.read_text("utf-8"))["outputs"]["bundle"]["lines"]


def _truncated(lines: list[str]) -> list[str]:
    return lines[:-1]


def _miscounted(lines: list[str]) -> list[str]:
    return [*lines[:-1], json.dumps({"type": "end", "entries": gen.WHOLE + 1})]


def _out_of_order(lines: list[str]) -> list[str]:
    at = [i for i, line in enumerate(lines) if json.loads(line)["type"] == "checkpoint"]
    swapped = list(lines)
    swapped[at[0]], swapped[at[-1]] = lines[at[-1]], lines[at[0]]
    return swapped


def _tampered(lines: list[str]) -> list[str]:
    return [line.replace('"idx":7,', '"idx":70,', 1) if '"idx":7,' in line else line for line in lines]


@pytest.mark.parametrize(
    ("edit", "error", "index"),
    [
        (_truncated, "truncated", None),
        (_miscounted, f"the end record counts {gen.WHOLE + 1} entries", None),
        (_out_of_order, "increasing size", None),
        (_tampered, "entry 7", 7),
    ],
    ids=["truncated", "wrong-end-count", "checkpoints-out-of-order", "tampered"],
)
def test_every_failure_is_json(
    tmp_path: Path, edit: Callable[[list[str]], list[str]], error: str, index: int | None
) -> None:
    path = tmp_path / "bundle.jsonl"
    path.write_text("".join(line + "\n" for line in edit(LINES)), "utf-8")
    result = CliRunner().invoke(cli, ["audit", "verify", "--bundle", str(path), "--workers", "1", "--json"])
    assert result.exit_code == 1, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["ok"] is False and error in answer["error"], answer
    assert answer["first_bad_entry"] == index


def test_without_json_bad_input_is_still_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "bundle.jsonl"
    path.write_text("".join(line + "\n" for line in _truncated(LINES)), "utf-8")
    result = CliRunner().invoke(cli, ["audit", "verify", "--bundle", str(path), "--workers", "1"])
    assert result.exit_code == 1 and "error: the bundle is truncated" in result.output
