"""Push delivery: one sender task per destination, draining a durable outbox in batches.

A sender retries with capped exponential backoff and jitter; any request from the peer wakes it
at once. Each sender has its own connection, so a slow or dead peer delays nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import random
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from exchange.clock import timestamp, utc_now
from exchange.errors import PeerError
from exchange.model import RosterNode
from exchange.node.service import NodeService, OutItem
from exchange.node.tls import peer_context

log = logging.getLogger("exchange.outbox")

FED_ENVELOPES = "/fed/v1/envelopes"


@dataclass
class PeerStatus:
    """What `exchange peers` and the API show about one destination."""

    peer: str
    queued: int = 0
    in_flight: int = 0
    delivered: int = 0
    last_success: str | None = None
    last_error: str | None = None
    failures: int = 0
    backoff_until: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


MAX_TRANSACTION_BYTES = 32 * 1024 * 1024  # half the receiver's request limit


def within_bytes(batch: list[OutItem], limit: int = MAX_TRANSACTION_BYTES) -> list[OutItem]:
    """The longest head of `batch` that fits in one request (always at least one item)."""
    total = 0
    for i, item in enumerate(batch):
        total += len(item.data) + 1
        if total > limit and i:
            return batch[:i]
    return batch


def transaction_id(bulletin_ids: list[str]) -> str:
    """The same batch always gets the same id, so a retried transaction is recognisable."""
    return hashlib.sha256("\n".join(bulletin_ids).encode()).hexdigest()[:32]


class PeerSender:
    """Delivers everything queued for one destination, in order, until told to stop."""

    def __init__(self, service: NodeService, peer: RosterNode) -> None:
        self.service = service
        self.peer = peer
        self.status = PeerStatus(peer.id)
        self._work = asyncio.Event()
        self._contact = asyncio.Event()
        self._single = False
        cfg = service.config
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=peer_context(peer, cfg.keys_dir / "tls.crt", cfg.keys_dir / "tls.key"), limit=2
            ),
            timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_seconds),
        )

    def wake(self) -> None:
        """New work is queued."""
        self._work.set()

    def peer_seen(self) -> None:
        """The peer just talked to us, so it is up: retry now rather than after the backoff."""
        self._contact.set()
        self._work.set()

    async def close(self) -> None:
        await self._session.close()

    async def run(self) -> None:
        cfg = self.service.config
        while True:
            self._work.clear()
            batch = within_bytes(await self.service.pending(self.peer.id, 1 if self._single else cfg.batch_size))
            if not batch:
                self.status.queued = 0
                await self._work.wait()
                continue
            try:
                await self._send(batch)
            except Exception as exc:  # whatever the peer did, this sender must live on and retry
                self.status.failures += 1
                self.status.last_error = f"{timestamp()} {type(exc).__name__}: {exc}"
                delay = min(cfg.retry_max_seconds, cfg.retry_base_seconds * 2 ** min(self.status.failures, 30))
                delay *= random.uniform(0.5, 1.0)
                self.status.backoff_until = timestamp(utc_now() + dt.timedelta(seconds=delay))
                log.warning(
                    "send failed; will retry",
                    extra={
                        "peer": self.peer.id,
                        "error": f"{type(exc).__name__}: {exc}",
                        "retry_in": round(delay, 3),
                        "failures": self.status.failures,
                        "batch": len(batch),
                    },
                )
                self._contact.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._contact.wait(), delay)
                self.status.backoff_until = None
            finally:
                self.status.in_flight = 0

    async def get_json(self, path: str) -> Any:
        """A federation GET to this peer over the pinned mutual-TLS session."""
        try:
            async with self._session.get(self.peer.endpoint + path) as resp:
                return await _json_or_error(resp, self.peer.id)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"{self.peer.id}: {type(exc).__name__}: {exc}") from exc

    async def post_json(self, path: str, body: Any) -> Any:
        """A federation POST to this peer over the pinned mutual-TLS session."""
        try:
            async with self._session.post(self.peer.endpoint + path, json=body) as resp:
                return await _json_or_error(resp, self.peer.id)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"{self.peer.id}: {type(exc).__name__}: {exc}") from exc

    async def _send(self, batch: list[OutItem]) -> None:
        ids = [f"{i.kind}:{i.ref}" for i in batch]
        events = b",".join(i.data for i in batch if i.kind == "event")
        envelopes = b",".join(i.data for i in batch if i.kind == "envelope")
        pushed = b",".join(i.data for i in batch if i.kind == "receipt")
        txn = transaction_id(ids).encode()
        await self.service.mark_sent(self.peer.id, batch, txn.decode())
        body = (
            b'{"txn":"'
            + txn
            + b'","events":['
            + events
            + b'],"envelopes":['
            + envelopes
            + b'],"receipts":['
            + pushed
            + b"]}"
        )
        self.status.in_flight = len(batch)
        async with self._session.post(
            # BytesIO: aiohttp streams it rather than warn about a large body (attachments)
            self.peer.endpoint + FED_ENVELOPES,
            data=io.BytesIO(body),
            headers={"Content-Type": "application/json"},
        ) as resp:
            payload = await resp.read()
            if resp.status == 200:
                answer = json.loads(payload)
                delivered = await self.service.accept_receipts(self.peer.id, batch, answer["receipts"])
                self.status.delivered += delivered
                self.status.failures = 0
                self.status.last_success = timestamp()
                self._single = False
                return
            detail = _problem_detail(payload, resp.status)
            if 400 <= resp.status < 500 and resp.status not in (401, 403, 408, 429):
                if len(batch) > 1:
                    # Find the envelope it refuses by sending one at a time; the rest still go.
                    self._single = True
                    raise PeerError(f"{self.peer.id} refused a batch: {detail}")
                await self.service.reject_queued(self.peer.id, batch[0], detail)
                return
            raise PeerError(f"{self.peer.id} answered {resp.status}: {detail}")


async def _json_or_error(resp: aiohttp.ClientResponse, peer: str) -> Any:
    payload = await resp.read()
    if resp.status != 200:
        raise PeerError(f"{peer} answered {resp.status}: {_problem_detail(payload, resp.status)}")
    return json.loads(payload)


def _problem_detail(payload: bytes, status: int) -> str:
    try:
        return str(json.loads(payload).get("detail", status))
    except (ValueError, AttributeError):
        return f"HTTP {status}"
