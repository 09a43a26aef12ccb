"""`exchange node run --workers N`: N processes of one node, sharing its port and its database.

The supervisor (this process) serves nothing itself. It opens the database once (an empty one
gets its schema here, not raced by N workers), starts the first worker and waits until it
listens (it imports the provisioned channels), then starts the others. Each worker is an
`exchange node run --worker` process that binds the port with SO_REUSEPORT, so the kernel spreads
connections over them. A worker that dies is started again, ever more slowly if it keeps dying
soon after its start (`restart_delay`); SIGTERM or SIGINT stops them all.

What keeps N processes one node is in the database (exchange.store.workers): PostgreSQL only.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import click

from exchange.config import NodeConfig
from exchange.errors import ConfigError

READY_TIMEOUT = 60.0  # seconds the first worker has to listen
STOP_TIMEOUT = 30.0  # seconds a worker has to stop after SIGTERM before it is killed
RESTART_DELAY = 0.5  # seconds before a worker that died is started again, doubled for each quick death
RESTART_MAX = 60.0  # seconds: the longest wait before a worker that keeps dying is started again
STEADY = 60.0  # seconds a worker must have run for its death not to count as a quick one


def restart_delay(quick_deaths: int) -> float:
    """How long to wait before starting a worker again after `quick_deaths` deaths in a row, each
    within STEADY seconds of its start: a worker that exits at once on every start (a tampered
    audit log, an outdated schema) is not started again every half second for ever."""
    return min(RESTART_MAX, RESTART_DELAY * 2.0 ** max(0, quick_deaths - 1))


def check_workers(config: NodeConfig, workers: int) -> None:
    """ConfigError unless `workers` processes may serve this node: more than one needs PostgreSQL."""
    if workers > 1 and not config.database_url.startswith("postgresql"):
        raise ConfigError(
            f"{config.id}: SQLite serves one process; --workers {workers} needs a PostgreSQL database_url"
        )


def _listening(config: NodeConfig) -> bool:
    try:
        with socket.create_connection((config.host, config.port), timeout=1.0):
            return True
    except OSError:
        return False


class Supervisor:
    """Runs and restarts the worker processes of one node."""

    def __init__(self, node_path: Path, config: NodeConfig, workers: int) -> None:
        self.node_path = node_path
        self.config = config
        self.workers = workers
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}  # slot -> when its process was started (monotonic)
        self.quick: dict[int, int] = {}  # slot -> its deaths in a row, each soon after its start
        self.due: dict[int, float] = {}  # slot -> when a dead worker is to be started again
        self.stopping = False

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(  # noqa: S603 - this interpreter and the node's own file, no shell
            [sys.executable, "-m", "exchange.cli", "node", "run", str(self.node_path), "--worker"],
            stdin=subprocess.DEVNULL,
        )
        self.procs[slot] = proc
        self.started[slot] = time.monotonic()
        click.echo(f"{self.config.id}: worker {slot} pid {proc.pid}", err=True)
        return proc

    def _stop(self, _sig: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        """Start the workers and keep them running until SIGTERM or SIGINT; the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        try:
            first = self._start(0)
            deadline = time.monotonic() + READY_TIMEOUT
            while not _listening(self.config):
                if first.poll() is not None:
                    return first.returncode or 1
                if self.stopping or time.monotonic() > deadline:
                    return 1 if not self.stopping else 0
                time.sleep(0.1)
            for slot in range(1, self.workers):
                self._start(slot)
            click.echo(f"{self.config.id}: {self.workers} workers on {self.config.endpoint}", err=True)
            while not self.stopping:
                self._tend()
                time.sleep(0.2)
            return 0
        finally:
            self._shutdown()

    def _tend(self) -> None:
        """Schedule a worker that died to start again (RESTART_DELAY, doubled for each death in a
        row soon after its start, up to RESTART_MAX), and start those that are due."""
        now = time.monotonic()
        for slot, proc in list(self.procs.items()):
            if slot in self.due or proc.poll() is None:
                continue
            ran = now - self.started.get(slot, now)
            self.quick[slot] = self.quick.get(slot, 0) + 1 if ran < STEADY else 1
            delay = restart_delay(self.quick[slot])
            self.due[slot] = now + delay
            click.echo(
                f"{self.config.id}: worker {slot} (pid {proc.pid}) exited with {proc.returncode} after {ran:.0f} s; "
                f"starting it again in {delay:g} s",
                err=True,
            )
        for slot, at in list(self.due.items()):
            if at <= now and not self.stopping:
                del self.due[slot]
                self._start(slot)

    def _shutdown(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        click.echo(f"{self.config.id}: stopped", err=True)


__all__ = ["Supervisor", "check_workers"]
