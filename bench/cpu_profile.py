"""CPU profiles of running processes with py-spy, summed by area (SQL, canonical JSON, pydantic, crypto, asyncio…).

A bench helper, not part of the package. py-spy is a sampling profiler that reads another
process's stacks from outside it (`.venv/bin/pip install py-spy`; it needs ptrace rights, which
root has here). Each sample is one running thread's Python stack; idle threads are not sampled,
so samples / rate estimates the time its threads were running or ready to run. On a busy
machine a thread that was woken but waits for a core (or the GIL) counts as running, so known
blocking waits (a worker thread waiting for work, the event loop in epoll) are dropped by their
line, and the shares are applied to the process's CPU time from /proc rather than read as time.

A sample is charged to an area by its innermost frame that belongs to a known library or module
(generic stdlib frames such as threading, queue, contextlib are looked through): a sample in
rfc8785 called from the audit writer counts as canonical JSON, one in aiosqlite's worker thread
as SQL. Time inside a C function is charged to the Python frame that called it, so an Ed25519
verify shows as `exchange/crypto/keys.py`, the crypto area.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CRYPTO = "crypto (Ed25519, HPKE, AES-GCM)"
HASHING = "hashing (SHA-256 ids, Merkle leaves)"
CANONICAL = "canonical JSON (exchange.crypto.canonical_json)"
JSON = "JSON parse/dump, base64"
PYDANTIC = "pydantic"
SQL = "SQL (SQLAlchemy, aiosqlite, sqlite3)"
HTTP = "HTTP + TLS (aiohttp, ssl)"
ASYNCIO = "asyncio (loop, tasks, wake-ups)"
LOGGING = "logging"
OWN = "exchange's own Python"
BENCH = "bench client (posting, polling)"
OTHER = "other"
AREAS = (CRYPTO, HASHING, CANONICAL, JSON, PYDANTIC, SQL, HTTP, ASYNCIO, LOGGING, OWN, BENCH, OTHER)

# (file prefix, area), first match wins: more specific prefixes first.
_BY_FILE: tuple[tuple[str, str], ...] = (
    ("exchange/crypto/keys.py", CRYPTO),
    ("exchange/crypto/content.py", CRYPTO),
    ("cryptography/", CRYPTO),
    ("exchange/merkle.py", HASHING),
    ("hashlib.py", HASHING),
    ("rfc8785/", CANONICAL),
    ("orjson", CANONICAL),
    ("json/", JSON),
    ("base64.py", JSON),
    ("pydantic/", PYDANTIC),
    ("pydantic_core/", PYDANTIC),
    ("sqlalchemy/", SQL),
    ("aiosqlite/", SQL),
    ("sqlite3/", SQL),
    ("greenlet/", SQL),
    ("asyncpg/", SQL),
    ("alembic/", SQL),
    ("aiohttp/", HTTP),
    ("ssl.py", HTTP),
    ("asyncio/sslproto.py", HTTP),
    ("multidict/", HTTP),
    ("yarl/", HTTP),
    ("propcache/", HTTP),
    ("asyncio/", ASYNCIO),
    ("selectors.py", ASYNCIO),
    ("logging/", LOGGING),
    ("exchange/", OWN),
    ("throughput.py", BENCH),
)
# Generic frames that say nothing about what the time was for: look through them to the caller.
_THROUGH = (
    "threading.py",
    "queue.py",
    "contextlib.py",
    "functools.py",
    "typing.py",
    "abc.py",
    "dataclasses.py",
    "enum.py",
    "copy.py",
    "re/",
    "weakref.py",
    "_weakrefset.py",
    "collections/",
    "<frozen",
    "<string>",
)
# The bench's own counting wrappers around aiosqlite and the group commit: charged to what they wrap.
_THROUGH_FUNCS = ("SqlCounter.patch.",)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: int = 0

    @property
    def label(self) -> str:
        return f"{self.func} ({self.file})"


def _telling(frame: Frame) -> bool:
    """An exchange function worth listing by inclusive time: not the CLI's entry points nor a middleware,
    which sit under every request."""
    return (
        frame.file.startswith("exchange/")
        and not frame.file.startswith("exchange/cli/")
        and "middleware" not in frame.func
    )


def parse_frame(text: str) -> Frame:
    m = _FRAME.match(text)
    return Frame(m["func"], m["file"], int(m["line"] or 0)) if m else Frame(text, "")


def _line_of(module: str, qualname: str, needle: str) -> int | None:
    """The line number, in this interpreter's copy of `module`, of the first line of `qualname` containing `needle`."""
    try:
        obj: object = __import__(module, fromlist=["_"])
        for part in qualname.split("."):
            obj = getattr(obj, part)
        lines, start = inspect.getsourcelines(obj)  # type: ignore[arg-type]
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    return next((start + i for i, text in enumerate(lines) if needle in text), None)


# Blocking waits that py-spy sometimes samples as running (a thread woken but waiting for a core
# or the GIL is "running" to the OS): a worker thread waiting for work, the event loop in epoll.
# (file as py-spy shortens it, line) of each; they are dropped before anything is summed.
_WAITS = {
    (short, line)
    for short, module, qualname, needle in (
        ("aiosqlite/core.py", "aiosqlite.core", "_connection_worker_thread", "tx.get("),
        ("selectors.py", "selectors", "_PollLikeSelector.select", "self._selector.poll("),
        ("selectors.py", "selectors", "EpollSelector.select", "self._selector.poll("),
        ("concurrent/futures/thread.py", "concurrent.futures.thread", "_worker", "work_queue.get(block=True)"),
    )
    if (line := _line_of(module, qualname, needle)) is not None
}
_WAIT_FUNCS = ("Condition.wait", "Event.wait", "Thread.join", "Thread._wait_for_tstate_lock", "Semaphore.acquire")


def is_wait(leaf: Frame) -> bool:
    """Whether the innermost frame is a thread blocked waiting, not working."""
    return (leaf.file, leaf.line) in _WAITS or (leaf.file == "threading.py" and leaf.func in _WAIT_FUNCS)


def area_of(frame: Frame) -> str | None:
    """The area of one frame, or None for a generic frame to look through."""
    if frame.file == "exchange/crypto/encoding.py":  # one module, three areas: tell them by function
        if _canonical(frame):
            return CANONICAL
        return HASHING if frame.func == "sha256" else JSON
    if frame.file.startswith(_THROUGH) or frame.func.startswith(_THROUGH_FUNCS):
        return None
    for prefix, area in _BY_FILE:
        if frame.file.startswith(prefix):
            return area
    return OTHER


def _canonical(frame: Frame) -> bool:
    """A frame of exchange's canonical JSON encoder, whatever it calls (rfc8785, or json at C speed)."""
    return frame.file == "exchange/crypto/encoding.py" and (
        "canonical" in frame.func or "refuse_floats" in frame.func or "sort_alike" in frame.func
    )


def classify(stack: list[Frame]) -> str:
    """Canonical JSON if exchange's encoder is on the stack; else the innermost frame with a known area decides."""
    if any(_canonical(f) for f in stack):
        return CANONICAL
    for frame in reversed(stack):
        area = area_of(frame)
        if area is not None:
            return area
    return OTHER


@dataclass
class Profile:
    """py-spy samples of one process, summed."""

    samples: int = 0  # working samples: what every share is a share of
    waiting: int = 0  # samples of blocked threads, dropped
    by_area: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)  # innermost frame
    inclusive: Counter[str] = field(default_factory=Counter)  # exchange functions anywhere in the stack
    own_modules: Counter[str] = field(default_factory=Counter)  # exchange module of the innermost exchange frame

    @classmethod
    def read(cls, path: Path) -> Profile:
        """Read py-spy's raw (collapsed stack) output: `frame;frame;…;leaf count` per line."""
        profile = cls()
        for line in path.read_text(errors="replace").splitlines():
            stack_text, _, n = line.rpartition(" ")
            if not stack_text or not n.isdigit():
                continue
            count = int(n)
            frames = [parse_frame(f) for f in stack_text.split(";") if not f.startswith("thread (")]
            if not frames:
                continue
            if is_wait(frames[-1]):
                profile.waiting += count
                continue
            profile.samples += count
            profile.by_area[classify(frames)] += count
            profile.self_time[frames[-1].label] += count
            seen = {f.label for f in frames if _telling(f)}
            for label in seen:
                profile.inclusive[label] += count
            own = next((f.file for f in reversed(frames) if f.file.startswith("exchange/")), None)
            if own is not None:
                profile.own_modules[own] += count
        return profile

    def share(self, counter: Counter[str], key: str) -> float:
        return counter[key] / self.samples if self.samples else 0.0


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Sampler:
    """`py-spy record` attached to a running process, from start() to stop()."""

    def __init__(self, pid: int, out: Path, rate: int = 100, *, pause: bool = True) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.pause = pause  # py-spy's default: pause the process for each sample (exact stacks; --nonblocking
        # drops the stacks it reads mid-change, which over-weights long C calls such as the crypto)
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile: Profile | None = None

    def start(self) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        with self.out.with_suffix(".log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(self.pid),
                    "--rate",
                    str(self.rate),
                    "--subprocesses",  # the node's crypto worker processes too
                    "--format",
                    "raw",
                    "-o",
                    str(self.out),
                ]
                + ([] if self.pause else ["--nonblocking"])
                # PYSPY_GIL=1: sample only the thread holding the GIL, so a thread waiting to take it
                # back (after a C call that released it) is not charged to the line it waits at
                + (["--gil"] if os.environ.get("PYSPY_GIL") == "1" else []),
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> Profile:
        """Stop sampling (py-spy writes its file on SIGINT) and read what it wrote; again, the same profile."""
        if self.profile is not None:
            return self.profile
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self.profile = Profile.read(self.out) if self.out.exists() else Profile()
        return self.profile

    @property
    def own_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads included (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process so far, with those of its nodes' crypto worker processes."""
    return own_cpu_seconds(pid) + workers_cpu_seconds(pid)


def workers_cpu_seconds(pid: int) -> float:
    """CPU seconds so far of the crypto worker processes under `pid` (`crypto_workers`)."""
    total = 0.0
    for child in worker_pids(pid):
        with contextlib.suppress(OSError):
            total += own_cpu_seconds(child)
    return total


def worker_pids(pid: int) -> list[int]:
    """The multiprocessing 'spawn' children of `pid`: the crypto workers of the nodes it runs
    (not those of a node it started as a process of its own, which is counted apart)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in map(int, (task / "children").read_text().split()):
                    with contextlib.suppress(OSError):
                        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                            found.append(child)
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    """Summarise py-spy raw files by area: `python bench/cpu_profile.py FILE [FILE…] [--top N]`."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=15, help="functions listed")
    args = p.parse_args()
    for path in args.files:
        prof = Profile.read(path)
        print(f"\n{path}: {prof.samples} working samples, {prof.waiting} of blocked waits dropped")
        for area in AREAS:
            if prof.by_area[area]:
                print(f"  {prof.share(prof.by_area, area):6.1%}  {area}")
        print("  self time:")
        for label, n in prof.self_time.most_common(args.top):
            print(f"  {n / prof.samples:6.1%}  {label}")
        print("  exchange functions, inclusive:")
        for label, n in prof.inclusive.most_common(args.top):
            print(f"  {n / prof.samples:6.1%}  {label}")


if __name__ == "__main__":
    main()
