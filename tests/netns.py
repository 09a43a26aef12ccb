"""Hosts of their own for end-to-end tests: each in a Linux network namespace (`ip netns`), with one
address on a private subnet and a veth pair into a bridge that lives in a namespace of its own, so
that nothing of the test reaches the machine's own network (tests/test_netns_federation.py).

Names carry a prefix, the pid of the test process and a random tag, so a run never collides with
another, and a run that crashed before it cleaned up is recognised by its dead pid and removed by
the next one. Root only: `require()` skips elsewhere, or fails when EXCHANGE_REQUIRE_NETNS=1 (as
`.ci/run` sets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PREFIX = "exnt"  # namespaces: exnt-<pid>-<tag>-<host>
VETH = "exv"  # veth ends while still in the root namespace: exv<pid>x<n><h|s> (15 characters at most)
REQUIRE = os.environ.get("EXCHANGE_REQUIRE_NETNS") == "1"
PORT = 8443  # every node listens on its own address, so they can all use the same port


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on this machine"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def require() -> None:
    """Skip the test with the reason when namespaces are unavailable; fail under EXCHANGE_REQUIRE_NETNS=1."""
    reason = unavailable()
    if reason:
        if REQUIRE:
            pytest.fail(reason + " and EXCHANGE_REQUIRE_NETNS=1")
        pytest.skip(reason)


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_processes_in(ns: str) -> None:
    """SIGKILL the processes still in one of this module's namespaces (nodes of a crashed run), by pid."""
    listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in listed.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def clean_leftovers() -> list[str]:
    """Remove the namespaces and root-namespace veth ends of earlier runs whose process is gone."""
    removed = []
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{PREFIX}-(\d+)-.+", name)
        if m and not _alive(int(m.group(1))):
            _end_processes_in(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    for m in re.finditer(rf"^\d+: ({VETH}(\d+)x\d+[hs])[@:]", _ip("-o", "link", "show"), re.M):
        if not _alive(int(m.group(2))):
            subprocess.run(["ip", "link", "del", m.group(1)], capture_output=True)
            removed.append(m.group(1))
    return removed


def node_env() -> dict[str, str]:
    """The environment of a command run on a host: no EXCHANGE_* overrides of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Host:
    """One machine of the test: a namespace, its address, and a folder only its commands use."""

    name: str
    ns: str
    address: str
    folder: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    async def ready(self, log: Path, timeout: float = 60) -> None:
        """Wait until the node started here says it is ready in its log."""

        async def said() -> bool:
            if any(p.poll() is not None for p in self.procs):
                raise AssertionError(f"{self.name}: the node exited: {log.read_text()[-2000:]}")
            return "ready; Ctrl-C to stop" in log.read_text()

        await until(said, f"{self.name} ready (see {log})", timeout)

    async def exchange(self, *args: str, ok: bool = True, timeout: float = 60) -> str:
        """Run `exchange ARGS...` on this host (in its namespace, in its folder); its output."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv(sys.executable, "-m", "exchange.cli", *args),
            cwd=self.folder,
            env=node_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"{self.name}: exchange {' '.join(args)} did not finish in {timeout:g} s") from None
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"{self.name}: exchange {' '.join(args)} exited {proc.returncode}: {err.decode()}{out.decode()}"
            )
        return out.decode()

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running `exchange ARGS...` on this host, its output to `log`."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.argv(sys.executable, "-m", "exchange.cli", *args),
                cwd=self.folder,
                env=node_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stop what `start` started here: SIGTERM, then SIGKILL after 10 s."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


LOG_LINES = 200  # of each host's log, printed when a test ends (shown if it failed)


class Network:
    """A bridge in a namespace of its own, and hosts plugged into it, each in its namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = secrets.token_hex(3)
        self.subnet = f"10.231.{secrets.randbelow(254) + 1}"
        self.switch = f"{PREFIX}-{os.getpid()}-{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        clean_leftovers()
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add(self, name: str, *, wired: bool = True) -> Host:
        """A host named `name`; not `wired`: an offline machine (loopback only), e.g. an authority holder's."""
        n = len(self.hosts)
        ns = f"{PREFIX}-{os.getpid()}-{self.tag}-{name}"
        address = f"{self.subnet}.{10 + n}"
        here, there = f"{VETH}{os.getpid()}x{n}h", f"{VETH}{os.getpid()}x{n}s"
        _ip("netns", "add", ns)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        host = self.hosts[name] = Host(name, ns, address if wired else "", folder)
        _ip("-n", ns, "link", "set", "lo", "up")
        if not wired:
            return host
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", here, "netns", ns)
        _ip("link", "set", there, "netns", self.switch)
        _ip("-n", ns, "link", "set", here, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", self.switch, "link", "set", there, "master", "br0")
        _ip("-n", self.switch, "link", "set", there, "up")
        return host

    def close(self) -> None:
        """Stop every host's processes, then delete every namespace (their veth ends and the bridge go with them).
        The end of each host's logs is printed: pytest shows it when the test failed."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop()
        for host in self.hosts.values():
            for log in sorted(host.folder.glob("*.log")):
                lines = log.read_text(errors="replace").splitlines()
                print(f"--- {host.name}: {log.name} (last {min(len(lines), LOG_LINES)} of {len(lines)} lines)")
                print("\n".join(lines[-LOG_LINES:]))
        for ns in [h.ns for h in self.hosts.values()] + [self.switch]:
            _end_processes_in(ns)  # a command still running when the test failed
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.hosts.clear()


async def until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float = 60.0,
    explain: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds (a bound, not a speed
    claim), with what `explain` then tells of the nodes' state."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            told = ""
            if explain is not None:
                try:
                    told = "\n" + await explain()
                except Exception as exc:  # the explanation is a help, not the failure
                    told = f"\n(no explanation: {type(exc).__name__}: {exc})"
            raise AssertionError(f"not within {timeout:g} s: {what}{told}")
        await asyncio.sleep(0.25)
