"""Envelope crypto off the event loop: sealing posts and opening what partners send, in worker
processes (`crypto_workers`), or in this process when there are none.

X25519 in `cryptography` holds the GIL, so a thread cannot take HPKE off the event loop; a
process can. A worker is given the node's private keys and its roster once, when it starts, and
then runs only pure functions of the core: it parses envelopes, checks their signatures and
every rule that needs no channel state, decrypts them and makes their rows; it seals and signs
posts. It returns plain values. Every rule that needs state (the cited channel state, the
author's current rights, sequence numbers, what is held already) stays with the event loop, in
`Receiving` and `Posting`, which apply them in the order docs/protocol.md gives.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from exchange.crypto import DecryptionKey, EncryptionKey, NodeKeys, SigningKey, VerifyKey, canonical_json, sha256
from exchange.errors import ExchangeError, InvalidEnvelope, InvalidInput, Unavailable
from exchange.model import Bulletin, Envelope, NodeId
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope import (
    CitedHeader,
    build_envelope_bytes,
    bulletin_id,
    check_sealed_parts,
    check_signature,
    open_envelope,
    parse_envelope,
    pickled_by_fields,
)
from exchange.protocol.roster import Federation
from exchange.service.records import bulletin_row, posted_row

# Signatures a worker thread checks at a time, at least (in-process only): fewer are checked on the
# event loop, where they cost less than the hand-off to a thread and back.
THREAD_MIN = 16
# Posts sealed in one call to a worker, at most: posts that arrive while the workers are busy
# wait and go together, one hand-off for all of them; but no more than about SEAL_CHARS
# characters of text and attachments, so that large posts are not copied to a worker by dozens.
SEAL_BATCH = 64
SEAL_CHARS = 1 << 20
# How often a worker looks whether its node's process is still there.
PARENT_CHECK_SECONDS = 1.0


def _size(bulletin: Bulletin) -> int:
    return len(bulletin.body) + sum(len(a.data) for a in bulletin.attachments)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Opening:
    """One received envelope after every check that needs no channel state, opened if it passed.

    The failures are kept apart, because the receiver reports the first in the protocol's order,
    and the rules that need channel state come between them (`Receiving.ingest_screened`).
    """

    index: int
    bid: str | None  # None: it did not parse
    header: CitedHeader | None
    refused: ExchangeError | None  # did not parse, or pushed by a node that did not author it
    bad_signature: ExchangeError | None
    bad_sealed: ExchangeError | None  # check_sealed_parts: recipients' keys, wraps, ciphertext hash
    undecryptable: ExchangeError | None  # open_envelope
    row: dict[str, Any] | None  # its bulletins row (stored_at to be set), when every check passed


@dataclass(frozen=True, slots=True)
class Context:
    """What a worker knows: the node, its private keys and its roster."""

    me: NodeId
    keys: NodeKeys
    fed: Federation
    verify_keys: dict[tuple[str, str], VerifyKey] = field(default_factory=dict)  # by (node, kid), made once


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Sealed:
    """A post, sealed: its bulletin id and its bulletins row."""

    bid: str
    row: dict[str, Any]


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class SealJob:
    """A post to seal: the bulletin, the state it is posted under, its readers' keys (raw)."""

    bulletin: Bulletin
    state: ChannelState
    readers: tuple[tuple[NodeId, bytes], ...]
    seq: int
    created: str


# -- the pure work, the same in a worker and in this process -----------------------------------


def parse_one(index: int, raw: Any, peer: str, relayed: bool) -> tuple[Envelope, str] | Opening:
    """Parse one envelope and take its id; an Opening that says why not, if it fails."""
    try:
        env = parse_envelope(raw)
        if not relayed and env.header.author != peer:
            raise InvalidEnvelope("a peer may push only envelopes it authored")
        return env, bulletin_id(env.header)
    except ExchangeError as exc:
        return Opening(index, None, None, exc, None, None, None, None)


def signature_error(env: Envelope, ctx: Context) -> ExchangeError | None:
    try:
        check_signature(env, ctx.fed, ctx.verify_keys)
        return None
    except ExchangeError as exc:
        return exc


def open_checked(index: int, env: Envelope, bid: str, bad_signature: ExchangeError | None, ctx: Context) -> Opening:
    """The checks after the signature's that need no channel state, then decryption and the row."""
    header = CitedHeader.of(env.header)
    if bad_signature is not None:
        return Opening(index, bid, header, None, bad_signature, None, None, None)
    try:
        ciphertext = check_sealed_parts(env, ctx.fed)
    except ExchangeError as exc:
        return Opening(index, bid, header, None, None, exc, None, None)
    try:
        bulletin = open_envelope(env, bid, ctx.me, ctx.keys, ciphertext=ciphertext)
        row = bulletin_row(env, bid, bulletin, "")
    except ExchangeError as exc:
        return Opening(index, bid, header, None, None, None, exc, None)
    return Opening(index, bid, header, None, None, None, None, row)


def open_all(ctx: Context, raws: Sequence[tuple[int, Any]], peer: str, relayed: bool) -> list[Opening]:
    """Parse, check and open every envelope of a batch (a worker's whole job for a received batch)."""
    out: list[Opening] = []
    for index, raw in raws:
        parsed = parse_one(index, raw, peer, relayed)
        if isinstance(parsed, Opening):
            out.append(parsed)
            continue
        env, bid = parsed
        out.append(open_checked(index, env, bid, signature_error(env, ctx), ctx))
    return out


@functools.lru_cache(maxsize=1024)
def _encryption_key(raw: bytes) -> EncryptionKey:
    """Readers' keys, made once: the roster changes rarely, posts often."""
    return EncryptionKey(raw)


def seal_one(ctx: Context, job: SealJob) -> Sealed:
    """Encrypt a post for its readers, sign it, and make its row (`Posting` stores it)."""
    payload = job.bulletin.payload_bytes  # kept on the bulletin, for its row's summary below
    built = build_envelope_bytes(
        payload,
        job.bulletin.handling,
        state=job.state,
        author=ctx.me,
        key=ctx.keys.signing,
        seq=job.seq,
        readers=[(n, _encryption_key(raw)) for n, raw in job.readers],
        created=job.created,
    )
    return Sealed(built.id, posted_row(built, payload.decode(), job.created, job.bulletin))


def _id_of(raw: Any) -> str | None:
    """The bulletin id of a received envelope as its header was sent: the hash of the header's
    canonical form, when the header is an object that has one (None otherwise).

    It is the envelope's id when the header is valid and spells out every member (a header that
    relies on a default hashes differently, and is found held after it is opened); a match
    with a stored bulletin's id means the header is that bulletin's (SHA-256 does not collide).
    """
    if not isinstance(raw, dict) or not isinstance(header := raw.get("header"), dict):
        return None
    try:
        return sha256(canonical_json(header)).hex()
    except InvalidInput:
        return None


# -- in a worker process -----------------------------------------------------------------------

# The worker's context, set once by `_start_worker` when the process starts. A worker process
# serves one node, so this one global of the process is its whole state.
_WORKER: Context | None = None


def _start_worker(
    me: str, signing_seed: bytes, decryption_raw: bytes, fed: Federation, former: tuple[bytes, ...] = ()
) -> None:
    global _WORKER
    # Ctrl-C at a terminal reaches the whole process group: the node stops its workers itself (and
    # they end with it), so a worker ignores it rather than print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keys = NodeKeys(SigningKey(signing_seed), DecryptionKey(decryption_raw), [DecryptionKey(k) for k in former])
    _WORKER = Context(NodeId(me), keys, fed)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()
    # Everything made so far (the modules, the roster) lives as long as the process: the cyclic
    # collector need not look at it again each time the envelopes' objects trigger a collection.
    gc.freeze()


def _end_with_parent(parent: int) -> None:
    """End this worker when its node's process ends, even killed: else it would stay, with the
    node's keys, waiting for work that never comes (its queue's pipe never closes)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _worker() -> Context:
    if _WORKER is None:  # pragma: no cover - the executor always runs the initializer first
        raise RuntimeError("crypto worker not started")
    return _WORKER


def _open_in_worker(raws: Sequence[tuple[int, Any]], peer: str, relayed: bool) -> list[Opening]:
    return open_all(_worker(), raws, peer, relayed)


def _seal_in_worker(jobs: Sequence[SealJob]) -> list[Sealed | ExchangeError]:
    out: list[Sealed | ExchangeError] = []
    for job in jobs:
        try:
            out.append(seal_one(_worker(), job))
        except ExchangeError as exc:
            out.append(exc)
    return out


def _ready() -> bool:
    return _WORKER is not None


# -- the node's side ---------------------------------------------------------------------------


# How long one hand-off to a crypto worker may take (a batch of up to 64 posts to seal, or a push of
# up to 32 MiB to check and open: a second or two on a loaded machine) before the worker is taken
# as hung, ended, and the batch answered 503 for its sender to retry.
WORKER_SECONDS = 120.0


class EnvelopeCrypto:
    """Seals a node's posts and opens what it receives: in `workers` processes, or here if 0."""

    def __init__(self, me: NodeId, keys: NodeKeys, fed: Federation, workers: int) -> None:
        self.ctx = Context(me, keys, fed)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._queue: list[tuple[SealJob, asyncio.Future[Sealed]]] = []
        self._sealing = 0  # seal calls in flight
        # per channel, set once the last batch launched with posts to it is answered (`_seal_batch`)
        self._answered: dict[str, asyncio.Future[None]] = {}
        self.opened = 0  # envelopes checked and opened so far (bench/catchup.py prints it)
        self._tasks: set[asyncio.Task[None]] = set()
        self.worker_seconds = WORKER_SECONDS

    # -- life cycle

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # 'spawn': a fork would copy the event loop, its sockets and its threads' locks.
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(
                    self.ctx.me,
                    self.ctx.keys.signing.private_bytes(),
                    self.ctx.keys.decryption.private_bytes(),
                    self.ctx.fed,
                    tuple(k.private_bytes() for k in self.ctx.keys.former),
                ),
            )
        return self._pool

    async def start(self) -> None:
        """Start the worker processes now, rather than at the first bulletin."""
        if self.workers:
            loop = asyncio.get_running_loop()
            pool = self._executor()
            await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.workers)))

    def restart(self) -> None:
        """Give new work to workers started afresh, with the roster as it is now (a new version
        was installed); what the old ones hold finishes there."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=False)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        pool = self._executor()
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(pool, fn, *args), self.worker_seconds
            )
        except BrokenProcessPool as exc:
            # A worker died (killed, out of memory): start afresh; the partner retries the batch.
            self._discard(pool)
            raise Unavailable("a crypto worker process stopped; retry") from exc
        except TimeoutError as exc:
            # A worker that hangs would hold this batch, and every one queued behind it, for good:
            # its processes are ended and the pool started afresh, as for one that died.
            self._discard(pool, kill=True)
            raise Unavailable(f"a crypto worker did not answer within {self.worker_seconds:g} s; retry") from exc

    def _discard(self, pool: ProcessPoolExecutor, *, kill: bool = False) -> None:
        if self._pool is pool:
            self._pool = None
        if kill:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)

    # -- receiving

    async def open(
        self,
        raws: Sequence[Any],
        *,
        peer: str,
        relayed: bool,
        held: Callable[[list[str]], Awaitable[set[str]]],
        unheld: bool = False,
    ) -> tuple[list[Opening], set[str]]:
        """Every check of a batch that needs no channel state, and decryption; and which of its
        bulletins this node holds already (`held`, a look-up by id).

        What is stored was verified when it came, so a bulletin held already is neither checked
        nor opened again (a retry, or the same bulletin pushed and pulled): its id is taken from
        its header first (`_id_of`), and only the others go on. `unheld`: the caller has left
        out what it holds by the ids a catch-up page gives, so that is not asked again before
        opening (only after, by the ids the envelopes have).
        """
        guesses = [None if unheld else _id_of(raw) for raw in raws]
        known = await held([g for g in guesses if g is not None]) if any(guesses) else set()
        out: list[Opening] = []
        rest: list[tuple[int, Any]] = []
        for index, (raw, guess) in enumerate(zip(raws, guesses, strict=True)):
            if guess is None or guess not in known:
                rest.append((index, raw))
                continue
            # Parsed all the same, as every envelope of a batch is: a malformed one refuses it.
            parsed = parse_one(index, raw, peer, relayed)
            if isinstance(parsed, Opening):
                out.append(parsed)
            else:
                env, bid = parsed
                out.append(Opening(index, bid, CitedHeader.of(env.header), None, None, None, None, None))
        if rest:
            self.opened += len(rest)
            opened = await (
                self._open_in_workers(rest, peer, relayed) if self.workers else self._open_here(rest, peer, relayed)
            )
            # Held, though its header did not give its id as sent (a member left to its default).
            late = [o.bid for o in opened if o.bid is not None and o.bid != guesses[o.index]]
            known |= await held(late) if late else set()
            out = sorted(out + opened, key=lambda o: o.index)
        return out, known

    async def _open_in_workers(self, items: Sequence[tuple[int, Any]], peer: str, relayed: bool) -> list[Opening]:
        step = -(-len(items) // self.workers)
        parts = await asyncio.gather(
            *(self._run(_open_in_worker, items[i : i + step], peer, relayed) for i in range(0, len(items), step))
        )
        return [o for part in parts for o in part]

    async def _open_here(self, items: Sequence[tuple[int, Any]], peer: str, relayed: bool) -> list[Opening]:
        out: list[Opening] = []
        parsed: list[tuple[int, Envelope, str]] = []
        for index, raw in items:
            one = parse_one(index, raw, peer, relayed)
            if isinstance(one, Opening):
                out.append(one)
            else:
                parsed.append((index, *one))
        bad = await self._signature_errors([env for _, env, _ in parsed])
        for (index, env, bid), wrong in zip(parsed, bad, strict=True):
            out.append(open_checked(index, env, bid, wrong, self.ctx))
        return sorted(out, key=lambda o: o.index)

    async def _signature_errors(self, envs: Sequence[Envelope]) -> list[ExchangeError | None]:
        """Ed25519 releases the GIL, so a batch is verified in worker threads while the event loop
        serves other requests: one thread per core but the loop's, so that the loop keeps a core."""
        ctx = self.ctx
        if len(envs) < THREAD_MIN:
            return [signature_error(env, ctx) for env in envs]
        parts = min(max(1, (os.cpu_count() or 1) - 1), -(-len(envs) // THREAD_MIN))
        step = -(-len(envs) // parts)

        def check(chunk: Sequence[Envelope]) -> list[ExchangeError | None]:
            return [signature_error(env, ctx) for env in chunk]

        chunks = await asyncio.gather(
            *(asyncio.to_thread(check, envs[i : i + step]) for i in range(0, len(envs), step))
        )
        return [e for chunk in chunks for e in chunk]

    # -- posting

    async def seal(self, job: SealJob, *, bulky: bool = False) -> Sealed:
        """Seal one post. In workers, posts that come while they are busy are sealed together,
        and answered in the order they came within each channel (`_seal_batch`). Here, a `bulky` one (megabytes of
        attachments) is sealed in a thread, the rest inline."""
        if not self.workers:
            if bulky:
                return await asyncio.to_thread(seal_one, self.ctx, job)
            return seal_one(self.ctx, job)
        future: asyncio.Future[Sealed] = asyncio.get_running_loop().create_future()
        self._queue.append((job, future))
        if self._sealing < self.workers:
            self._launch()
        return await future

    def _launch(self) -> None:
        size, take = 0, 0
        for job, _ in self._queue[:SEAL_BATCH]:
            size += _size(job.bulletin)
            take += 1
            if size > SEAL_CHARS:  # a few large posts go alone, not 64 copies of megabytes at once
                break
        batch, self._queue = self._queue[:take], self._queue[take:]
        self._sealing += 1
        channels = {job.state.channel for job, _ in batch}
        before = [f for c in channels if (f := self._answered.get(c)) is not None]
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._answered |= dict.fromkeys(channels, answered)
        task = asyncio.create_task(self._seal_batch(batch, before, answered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _seal_batch(
        self,
        batch: list[tuple[SealJob, asyncio.Future[Sealed]]],
        before: list[asyncio.Future[None]],
        answered: asyncio.Future[None],
    ) -> None:
        """Seal a batch in a worker; answer its posts once the batches launched before it with
        posts to the same channels are answered (`before`). With several workers a later batch
        can be sealed first; answered first, its posts would be stored, and queued for the
        readers, before lower sequence numbers of the same stream, and each reader would take the
        gap for a loss and fetch it (`_fill_gaps`). Other channels' posts do not wait for it."""
        try:
            try:
                results: Sequence[Sealed | Exception] = await self._run(_seal_in_worker, [job for job, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            finally:
                self._sealing -= 1
                if self._queue and self._sealing < self.workers:
                    self._launch()
            if before:
                await asyncio.shield(asyncio.gather(*before))
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the post was cancelled meanwhile
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        finally:
            if not answered.done():
                answered.set_result(None)
            for channel in {job.state.channel for job, _ in batch}:
                if self._answered.get(channel) is answered:
                    del self._answered[channel]
