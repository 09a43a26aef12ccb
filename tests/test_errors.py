"""One error tree: every error class has its HTTP status, and the CLI ends every expected failure
in one `error:` line with a non-zero exit, never a traceback (a node that hangs, a node that is
down, a --body file that is not there), while click keeps its own usage errors (exit 2)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import pickle
import pkgutil
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import exchange
from exchange import errors
from exchange.http.problem import STATUS, from_error, status_for
from exchange.provision import init_federation
from tests.conftest import free_port, write_federation

BULLETIN_ID = "0" * 64
REQUEST_TIMEOUT = 1  # seconds: the node file's request_timeout_seconds in these tests
BOUND = 20  # seconds: a run that takes longer than this has not honoured the timeout

# The errors whose status is deliberately the generic 500: the node itself is broken.
INTERNAL = {
    errors.ExchangeError,
    errors.ConfigError,
    errors.SchemaOutdated,
    errors.StoredRosterInvalid,  # an edited roster table: the node does not run on it
    errors.AuditTampered,
    errors.BadEntry,
    errors.SplitView,
    errors.BulletinUnverified,  # a tampered store: deliberately a 500, named in the detail
}


def _error_classes() -> list[type[errors.ExchangeError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ExchangeError) and cls.__module__ == errors.__name__
    ]


# -- the tree and its table -----------------------------------------------------------------


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_has_a_deliberate_status(cls: type[errors.ExchangeError]) -> None:
    assert cls in STATUS, f"{cls.__name__} has no row in exchange.http.problem.STATUS"
    status = status_for(cls.__new__(cls))
    assert status == STATUS[cls]
    if cls in INTERNAL:
        assert status == 500
    else:
        assert status != STATUS[errors.ExchangeError], f"{cls.__name__} falls back to the generic 500"
    assert re.search(rf"^\W*{cls.__name__}\b", errors.__doc__ or "", re.M), f"{cls.__name__} is not drawn in the tree"


# One instance of each class whose `__init__` takes more than the detail.
MADE: dict[type[errors.ExchangeError], Callable[[], errors.ExchangeError]] = {
    errors.RosterGap: lambda: errors.RosterGap(3, 7),
    errors.EnvelopeRejected: lambda: errors.EnvelopeRejected([{"item": "envelope 0", "detail": "bad"}]),
    errors.BadEntry: lambda: errors.BadEntry(12, "its hash differs"),
    errors.PeerRefused: lambda: errors.PeerRefused("no", 403),
    errors.ApiError: lambda: errors.ApiError(404, "no such bulletin"),
}


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_crosses_a_process_boundary_whole(cls: type[errors.ExchangeError]) -> None:
    """Crypto workers and audit range processes send their errors back pickled: each class comes
    back as itself, with its message and attributes (five did not: their `__init__` takes more
    than the message, and unpickling called it with the message alone)."""
    made = MADE.get(cls)
    error = made() if made is not None else cls("a detail")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls and str(back) == str(error) and back.args == error.args
    assert back.__dict__ == error.__dict__


def test_statuses_the_console_and_api_rely_on() -> None:
    assert status_for(errors.TooManyFailures("wait")) == 429
    assert status_for(errors.Equivocation("two bulletins")) == 409
    assert status_for(errors.WeakPassword("short")) == 422
    assert status_for(errors.ProofError("bad proof")) == 422
    rejected = errors.EnvelopeRejected([{"item": "envelope 0", "type": "BadSignature", "detail": "no"}])
    response = from_error(rejected)
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert json.loads(response.text or "{}")["errors"] == rejected.errors


def test_moved_errors_are_still_importable_from_their_old_modules() -> None:
    from exchange.cli.client import ApiError
    from exchange.crypto.passwords import WeakPassword, check_strength
    from exchange.merkle import ProofError, verify_inclusion
    from exchange.web.session import TooManyFailures

    assert (ApiError, WeakPassword, ProofError, TooManyFailures) == (
        errors.ApiError,
        errors.WeakPassword,
        errors.ProofError,
        errors.TooManyFailures,
    )
    with pytest.raises(errors.InvalidInput):
        check_strength("short")
    with pytest.raises(errors.InvalidInput):
        verify_inclusion(b"\0" * 32, 0, 0, [], b"\0" * 32)


def test_no_error_class_lives_outside_errors_py() -> None:
    for info in pkgutil.walk_packages(exchange.__path__, "exchange."):
        if not info.name.endswith(".__main__"):  # that one runs the command line
            importlib.import_module(info.name)
    pending = [errors.ExchangeError]
    outside = []
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ != errors.__name__:
            outside.append(f"{cls.__module__}.{cls.__qualname__}")
    assert not outside, f"error classes outside exchange/errors.py: {sorted(outside)}"


# -- the CLI, as a user runs it -------------------------------------------------------------


def _exchange() -> list[str]:
    """The installed `exchange` script (entry point exchange.cli:main), else the module."""
    script = Path(sys.executable).parent / "exchange"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exchange.cli"]


def run_cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    env.update(CI="true", COLUMNS="40")  # a narrow terminal must not fold the error line either
    started = time.monotonic()
    proc = subprocess.run(
        [*_exchange(), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, time.monotonic() - started


def assert_one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.fixture
def node_file(tmp_path: Path) -> Path:
    """A provisioned one-node federation whose node file gives up on a request after 1 s."""
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": "nl-customs", "agencies": ["customs"], "members": {"nl-customs": ["read", "post"]}}
    write_federation(
        folder, {"nl-customs": ("NL", "customs")}, [channel], {}, {"request_timeout_seconds": REQUEST_TIMEOUT}
    )
    asyncio.run(init_federation(folder))
    return folder / "nl-customs.toml"


def _set_port(node_file: Path, port: int) -> None:
    node_file.write_text(re.sub(r"^port = \d+", f"port = {port}", node_file.read_text(), flags=re.M))


class HangingNode:
    """A real listener on 127.0.0.1 that accepts connections and never answers.

    With `tls`, it completes the TLS handshake with the node's own certificate (so the CLI trusts
    it) and reads the request; without, it never even starts the handshake.
    """

    def __init__(self, keys_dir: Path, tls: bool, answer: bytes = b"") -> None:
        self.answer = answer  # sent after the request is read (with TLS): nothing, or a canned answer
        self.context: ssl.SSLContext | None = None
        if tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(keys_dir / "tls.crt", keys_dir / "tls.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.requests: list[bytes] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)
            if self.context is None:
                continue
            conn.settimeout(5)
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
                self._held.append(tls)
                self.requests.append(tls.recv(65536))
                if self.answer:
                    tls.sendall(self.answer)
            except OSError:
                continue

    def __enter__(self) -> HangingNode:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for held in (*self._held, self.listener):
            held.close()


@pytest.mark.parametrize("tls", [True, False], ids=["answers-nothing-after-tls", "never-starts-tls"])
def test_read_against_a_node_that_hangs_prints_one_line(node_file: Path, tls: bool) -> None:
    keys_dir = node_file.parents[1] / "keys" / "nl-customs"
    with HangingNode(keys_dir, tls) as hanging:
        _set_port(node_file, hanging.port)
        proc, took = run_cli("read", "--node", str(node_file), BULLETIN_ID, cwd=node_file.parent)
    line = assert_one_error_line(proc)
    assert f"did not answer within {REQUEST_TIMEOUT} s" in line, line
    assert took < BOUND, f"took {took:.1f} s"
    if tls:  # the request got through TLS: it was the answer that never came
        assert hanging.requests and hanging.requests[0].startswith(b"GET /api/v1/bulletins/")


@pytest.mark.parametrize("command", [["read", BULLETIN_ID], ["audit", "export"]], ids=["api", "stream"])
def test_a_redirect_is_not_followed_and_prints_one_line(node_file: Path, command: list[str]) -> None:
    """A 3xx answer (a proxy, or something else at the node's address): the CLI does not take its
    token there; one error line, and the one request it made."""
    keys_dir = node_file.parents[1] / "keys" / "nl-customs"
    elsewhere = b"https://127.0.0.1:9/steal"
    answer = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + elsewhere + b"\r\nContent-Length: 0\r\n\r\n"
    with HangingNode(keys_dir, True, answer) as node:
        _set_port(node_file, node.port)
        proc, took = run_cli(*command, "--node", str(node_file), cwd=node_file.parent)
    line = assert_one_error_line(proc)
    assert "307" in line and "redirected to https://127.0.0.1:9/steal" in line, line
    assert len(node.requests) == 1, node.requests
    assert took < BOUND


def test_read_against_a_node_that_is_down_prints_one_line(node_file: Path) -> None:
    _set_port(node_file, free_port())
    proc, took = run_cli("read", "--node", str(node_file), BULLETIN_ID, cwd=node_file.parent)
    line = assert_one_error_line(proc)
    assert "cannot reach https://127.0.0.1:" in line and "refused" in line, line
    assert took < BOUND


def test_post_with_a_missing_body_file_prints_one_line(node_file: Path) -> None:
    proc, _ = run_cli(
        "post", "--node", str(node_file), "--channel", "c2c", "--title", "t", "--body", "@missing.txt",
        cwd=node_file.parent,
    )  # fmt: skip
    line = assert_one_error_line(proc)
    assert "missing.txt" in line and "no such file" in line, line


def test_usage_errors_stay_clicks(node_file: Path) -> None:
    proc, _ = run_cli("read", "--node", str(node_file), cwd=node_file.parent)
    assert proc.returncode == 2, proc.stderr
    assert "Usage:" in proc.stderr and "Missing argument" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
