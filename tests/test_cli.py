"""The README's flow, as a user runs it: separate processes, the sample federation, the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
EXCHANGE = [sys.executable, "-m", "exchange.cli"]


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*EXCHANGE, *args], cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exchange {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A copy of the sample federation on free ports, so it never clashes with a running one."""
    shutil.copytree(ROOT / "nodes", tmp_path / "nodes")
    for path in (tmp_path / "nodes").glob("*.toml"):
        text = path.read_text()
        path.write_text(re.sub(r"^port = \d+", f"port = {free_port()}", text, flags=re.M))
    return tmp_path


def test_sample_federation_post_at_one_node_shows_in_inbox_at_another(sample: Path) -> None:
    up = subprocess.Popen(
        [*EXCHANGE, "federation", "up", "nodes/"],
        cwd=sample,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert up.stderr is not None
        deadline = time.monotonic() + 60
        for line in up.stderr:
            if "ready" in line or time.monotonic() > deadline:
                break
        assert up.poll() is None, "federation up exited early"
        posted = json.loads(
            run(
                "post",
                "--node",
                "nodes/nl-customs.toml",
                "--channel",
                "c2a-air-cargo-security",
                "--kind",
                "threat-bulletin",
                "--title",
                "IED components in toner cartridges",
                "--body",
                "Check consignments routed via NBO.",
                "--awb",
                "176-12345675",
                "--airport",
                "NBO",
                "--json",
                cwd=sample,
            ).stdout
        )
        assert set(posted["recipients"]) == {"ke-customs", "gb-avsec", "wco-rilo"}
        deadline = time.monotonic() + 20
        while True:
            inbox = json.loads(run("inbox", "--node", "nodes/gb-avsec.toml", "--json", cwd=sample).stdout)
            if any(item["id"] == posted["id"] for item in inbox["items"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [i["title"] for i in inbox["items"]] == ["IED components in toner cartridges"]
        shown = json.loads(run("read", "--node", "nodes/gb-avsec.toml", posted["id"], "--json", cwd=sample).stdout)
        assert shown["bulletin"]["indicators"]["air_waybills"] == ["176-12345675"]
        human = run("inbox", "--node", "nodes/gb-avsec.toml", cwd=sample).stdout
        assert "nl-customs" in human
        # Errors are one clear line and a non-zero exit, never a traceback.
        bad = run("read", "--node", "nodes/gb-avsec.toml", "0" * 64, cwd=sample, check=False)
        assert bad.returncode == 1 and "no bulletin" in bad.stderr and "Traceback" not in bad.stderr
        denied = run(
            "read", "--node", "nodes/gb-avsec.toml", "--user", "auditor", posted["id"], cwd=sample, check=False
        )
        assert denied.returncode == 1 and "403" in denied.stderr
        wrong_channel = run(
            "post",
            "--node",
            "nodes/gb-avsec.toml",
            "--channel",
            "c2c-cargo-fraud",
            "--title",
            "x",
            cwd=sample,
            check=False,
        )
        assert wrong_channel.returncode == 1 and "not assigned" in wrong_channel.stderr
        # Channels from the command line: the aviation node cannot be invited to the Customs-only one.
        listed = json.loads(run("channels", "list", "--node", "nodes/nl-customs.toml", "--json", cwd=sample).stdout)
        assert {c["id"] for c in listed} == {"c2c-cargo-fraud", "c2a-air-cargo-security"}
        refused = run(
            "channels",
            "invite",
            "--node",
            "nodes/nl-customs.toml",
            "c2c-cargo-fraud",
            "gb-avsec",
            "--rights",
            "read",
            cwd=sample,
            check=False,
        )
        assert refused.returncode == 1 and "excludes" in refused.stderr
        invited = run(
            "channels",
            "invite",
            "--node",
            "nodes/nl-customs.toml",
            "c2c-cargo-fraud",
            "wco-rilo",
            "--rights",
            "read",
            cwd=sample,
            check=False,
        )
        assert invited.returncode == 1 and "excludes" in invited.stderr  # international is not customs either
        shown = run("channels", "show", "--node", "nodes/nl-customs.toml", "c2a-air-cargo-security", cwd=sample)
        assert "member  gb-avsec" in shown.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=30)
    assert up.returncode == 0, err
    assert "stopped" in err


def test_federation_init_is_idempotent_and_keys_are_private(sample: Path) -> None:
    first = run("federation", "init", "nodes/", cwd=sample).stdout
    assert "created roster version 1" in first
    roster = (sample / "keys" / "roster.json").read_bytes()
    again = run("federation", "init", "nodes/", cwd=sample).stdout
    assert "nothing to do" in again
    assert (sample / "keys" / "roster.json").read_bytes() == roster
    for private in ("signing.key", "encryption.key", "tls.key", "tokens/officer"):
        mode = stat.S_IMODE(os.stat(sample / "keys" / "nl-customs" / private).st_mode)
        assert mode == 0o600, (private, oct(mode))
    refused = run("keys", "generate", "nodes/nl-customs.toml", cwd=sample, check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert (sample / "keys" / "roster.json").read_bytes() == roster


def test_a_node_whose_port_is_taken_says_so_in_one_line(sample: Path) -> None:
    run("federation", "init", "nodes/", cwd=sample)
    text = (sample / "nodes" / "nl-customs.toml").read_text()
    port = int(re.search(r"^port = (\d+)", text, flags=re.M).group(1))  # type: ignore[union-attr]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        failed = run("node", "run", "nodes/nl-customs.toml", cwd=sample, check=False)
    assert failed.returncode == 1, failed.stderr
    assert "cannot listen on 127.0.0.1" in failed.stderr and "Traceback" not in failed.stderr
