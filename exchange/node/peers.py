"""The federation client: `PeerTransport` over mutual-TLS HTTPS, one pinned session per partner.

Every request names the roster version this node holds (`Exchange-Roster-Version`), and every
answer's header is given to the node's `RosterGossip`, which pulls a newer version. The partners
and their pins follow the held version live (`install`).
"""

from __future__ import annotations

import asyncio
import io
import unicodedata
from typing import Any

import aiohttp

from exchange.config import NodeConfig
from exchange.crypto import strict_loads
from exchange.crypto.encoding import MIN_VALUES
from exchange.errors import AnswersFull, InvalidInput, PeerError, PeerRefused
from exchange.keystore import NodeKeyFiles, TlsIdentity
from exchange.model import NodeId, RosterNode
from exchange.node.tls import peer_context
from exchange.protocol.receipt_batches import BATCHES, RECEIPT_FORM_HEADER
from exchange.protocol.roster import Federation
from exchange.service.gossip import (
    ROSTER_HASH_HEADER,
    ROSTER_HEADER,
    ROSTER_PATH,
    RosterGossip,
    header_hash,
    header_version,
)

# The most of a partner's answer this node reads: above the largest a node gives (a roster page,
# gossip.PAGE_BYTES = 64 MiB; a catch-up page, 32 MiB; an epoch page, 32 MiB and one record past
# it), so that a partner answering without end costs a bounded read, not the node's memory.
MAX_ANSWER_BYTES = 96 * 1024 * 1024
READ_CHUNK = 1024 * 1024
OFF_LOOP_FROM = 1024 * 1024  # answers this long or longer are parsed in a thread (`_parsed`)
# Bodies up to this size go as bytes, written in one piece; larger ones (attachments) are streamed
# from a BytesIO, which copies the body once more (aiohttp warns of bytes above 1 MiB).
STREAMED_FROM = 1024 * 1024
# Every POST says so: a push is answered with whole receipt batches in the batch form
# (docs/protocol.md 10.4); the other federation requests have no receipts to answer with.
POSTED = {"Content-Type": "application/json", RECEIPT_FORM_HEADER: BATCHES}
# An answer is parsed as strictly as a request (docs/protocol.md 2.3), with a value budget of its
# own: one `,` `:` `[` `{` outside strings per ANSWER_BYTES_PER_VALUE bytes, MIN_VALUES whatever
# its size. A request's one per 20 bytes is too tight for answers, which gather many small
# documents: a channel's log has one per 14 bytes, a catch-up page of short bulletins one per 20,
# and a roster page can hold 32 versions of under 10,000 values each, whose key entries have one
# per 11. A body of empty containers (`[{},{},...]`, one per 1.5 bytes) is refused before it is
# parsed, and what the budget admits costs about what a legitimate answer of that size does
# (5 bytes of memory per byte), not a Python object per element.
ANSWER_BYTES_PER_VALUE = 8
MAX_PEER_DETAIL = 300  # characters of a partner's refusal detail kept (`_problem_detail`)
# What this node holds of its partners' answers at once while it reads and parses them (`Answers`):
# each answer's first FREE_ANSWER_BYTES are not counted (a push's receipts, a short page); past
# them, all answers together at most ANSWERS_HELD_BYTES and one partner's at most half of that.
ANSWERS_HELD_BYTES = 256 * 1024 * 1024
FREE_ANSWER_BYTES = 1024 * 1024


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


class Answers:
    """The budget of partners' answers being read and parsed, one per node process (a node of
    several worker processes has one in each). Each answer may be up to MAX_ANSWER_BYTES, and
    parsing one takes about five times its size more (bench/hostile_memory.py): several partners
    answering that much at once held gigabytes between them. The bytes are counted as they come
    (decompressed), and an answer that goes past the budget is a PeerError at once: at its
    Content-Length if that says so already, else at the chunk that goes past, the rest left unread
    and its connection closed; the caller asks again later (a sender after its backoff, catch-up at
    its next sweep). One partner holds at most half, so that one partner answering as much as it
    may, as slowly as it may, leaves room for the others; several hostile partners together can
    still fill it, and then delay, not lose, the others' large answers. The parsed answer the
    caller keeps is not counted. One event loop: no lock."""

    def __init__(self, limit: int = ANSWERS_HELD_BYTES) -> None:
        self.limit = limit
        self.held = 0
        self.by_peer: dict[str, int] = {}

    def take(self, peer: str, size: int) -> None:
        """Count `size` more bytes of `peer`'s answer, or PeerError if that is past the budget."""
        self.check(peer, size)
        self.held += size
        self.by_peer[peer] = self.by_peer.get(peer, 0) + size

    def check(self, peer: str, size: int) -> None:
        """PeerError if `size` more bytes of `peer`'s answer would be past the budget now."""
        mine = self.by_peer.get(peer, 0)
        if size > 0 and (self.held + size > self.limit or mine + size > self.limit // 2):
            # Past its own half, the partner's doing; else the others' answers fill the budget.
            raise (PeerError if mine + size > self.limit // 2 else AnswersFull)(
                f"{peer}: its answer would take this node past what it holds of partners' answers at once"
                f" ({_mib(self.limit)}, {_mib(self.limit // 2)} of one partner's; {_mib(self.held)} now,"
                f" {_mib(mine)} of them {peer}'s): asked again later"
            )

    def give(self, peer: str, size: int) -> None:
        """`peer`'s answer of which `size` bytes were counted is parsed (or given up)."""
        if size:
            self.held -= size
            left = self.by_peer.pop(peer) - size
            if left:
                self.by_peer[peer] = left


class HttpTransport:
    """Requests to partners, each over its own connection pool so a slow peer delays nobody else."""

    def __init__(
        self,
        config: NodeConfig,
        fed: Federation,
        gossip: RosterGossip | None = None,
        identity: TlsIdentity | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout_seconds)
        self._keepalive = config.peer_keepalive_seconds
        self._me = config.id
        # The certificate this node presents: moved by a TLS key rotation (exchange.service.ownkeys)
        self._identity = identity or NodeKeyFiles(config.keys_dir).tls_identity(fed.node(config.id).tls_pin)
        self._presented = self._identity.pin
        self._gossip = gossip
        self._nodes: dict[str, tuple[RosterNode, str]] = {}  # partner -> (its entry, its accepted certificates)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.answers = Answers()
        self.install(fed)

    def _session(
        self, node: RosterNode, trusted: str | None = None, *, certificate: bool = True
    ) -> aiohttp.ClientSession:
        cert, key = (self._identity.cert, self._identity.key) if certificate else (None, None)
        connector = aiohttp.TCPConnector(
            ssl=peer_context(node, cert, key, trusted), limit=2, keepalive_timeout=self._keepalive
        )
        return aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    def install(self, fed: Federation) -> None:
        """Follow a new roster version: a session for each new partner, a new one for a partner whose
        endpoint or accepted TLS certificates changed (or for every partner once this node presents
        a rotated certificate), none for one no longer listed (closed in the background)."""
        nodes = {n.id: (n, fed.tls_certs_pem(n.id)) for n in fed.roster.nodes if n.id != self._me}
        rotated, self._presented = self._presented != self._identity.pin, self._identity.pin
        for peer in set(self._sessions) | set(nodes):
            old, new = self._nodes.get(peer), nodes.get(peer)
            if (
                not rotated
                and old is not None
                and new is not None
                and (old[0].endpoint, old[1]) == (new[0].endpoint, new[1])
            ):
                continue
            if peer in self._sessions:
                self._retire(self._sessions.pop(peer))
            if new is not None:
                self._sessions[peer] = self._session(*new)
        self._nodes = nodes

    def _retire(self, session: aiohttp.ClientSession) -> None:
        try:
            task = asyncio.get_running_loop().create_task(session.close())
        except RuntimeError:  # built outside a loop (tests): nothing was opened yet
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _headers(self) -> dict[str, str]:
        return self._gossip.headers() if self._gossip is not None else {}

    def _partner(self, node: str) -> tuple[aiohttp.ClientSession, str]:
        if node not in self._sessions:
            raise PeerError(f"{node!r} is not a partner node")
        return self._sessions[node], self._nodes[node][0].endpoint

    def _observe(self, node: str, resp: aiohttp.ClientResponse) -> None:
        version = header_version(resp.headers.get(ROSTER_HEADER))
        if version is not None and self._gossip is not None:
            self._gossip.seen(node, version, header_hash(resp.headers.get(ROSTER_HASH_HEADER)))

    async def fetch(self, node: NodeId, path: str) -> Any:
        return await self._request(node, "GET", path, None)

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        return await self._request(node, "POST", path, body)

    async def _request(self, node: NodeId, method: str, path: str, body: bytes | None) -> Any:
        """One request to a partner. A POST on a connection the partner closed just as it went
        (`ServerDisconnectedError`: a kept-alive one it timed out) is made once more at once, on
        another connection, as aiohttp itself does for a GET: every federation request may be
        repeated (the sender repeats a failed batch anyway, after its backoff)."""
        session, endpoint = self._partner(node)
        headers = self._headers() if body is None else {**POSTED, **self._headers()}
        for last in (False, True) if body is not None else (True,):
            try:
                data = io.BytesIO(body) if body is not None and len(body) > STREAMED_FROM else body
                # No redirects: a partner must not send this node's requests anywhere else.
                request = session.request(method, endpoint + path, data=data, headers=headers, allow_redirects=False)
                async with request as resp:
                    self._observe(node, resp)
                    return await _json_or_error(resp, node, self.answers)
            except aiohttp.ServerDisconnectedError as exc:
                if last:
                    raise PeerError(f"{node}: {type(exc).__name__}: {exc}") from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise PeerError(f"{node}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def offer(self, node: NodeId, body: bytes) -> Any:
        """POST roster versions to `node` without a client certificate (its pin check does not know
        this node yet): the one request a node not yet in a peer's roster may make (6a.11)."""
        if node not in self._nodes:
            raise PeerError(f"{node!r} is not a partner node")
        target, trusted = self._nodes[node]
        try:
            async with (
                self._session(target, trusted, certificate=False) as session,
                session.post(
                    target.endpoint + ROSTER_PATH,
                    data=io.BytesIO(body),
                    headers={"Content-Type": "application/json", **self._headers()},
                    allow_redirects=False,
                ) as resp,
            ):
                return await _json_or_error(resp, node, self.answers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"{node}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        for task in list(self._closing):
            await task


async def _json_or_error(resp: aiohttp.ClientResponse, peer: str, answers: Answers) -> Any:
    counted = [0]  # what of this answer `answers` holds, given back once it is parsed or given up
    try:
        payload = await _body(resp, peer, answers, counted)
        if resp.status == 200:
            try:
                return await _parsed(payload)
            except InvalidInput as exc:  # bad UTF-8, a float, an over-long integer, too many values, too deep
                raise PeerError(
                    f"{peer} answered 200 with a body that is not JSON as 2.3 takes it: {exc.detail}"[:300]
                ) from exc
        detail = await _problem_detail(payload, resp.status)
    finally:
        answers.give(peer, counted[0])
    if 400 <= resp.status < 500:
        raise PeerRefused(detail, resp.status)  # the partner's own words: the outbox records them
    raise PeerError(f"{peer} answered {resp.status}: {detail}")


async def _body(resp: aiohttp.ClientResponse, peer: str, answers: Answers, counted: list[int]) -> bytes:
    """The answer's body, read up to MAX_ANSWER_BYTES and within `answers`; a longer one, or one
    past the budget, is a PeerError, the rest left unread (aiohttp then closes the connection
    rather than reuse it). What is counted is added to `counted[0]`, for the caller to give back."""
    too_long = PeerError(f"{peer} answered {resp.status} with more than {MAX_ANSWER_BYTES:,} bytes")
    if resp.content_length is not None:  # refused before anything is read, if it says it is too long
        if resp.content_length > MAX_ANSWER_BYTES:
            raise too_long
        answers.check(peer, resp.content_length - FREE_ANSWER_BYTES)
    chunks: list[bytes] = []
    size = 0
    # The bytes as they come, decompressed: a Content-Length counts a compressed body's bytes, and a
    # partner that says a length and sends slowly holds only what it sent.
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise too_long
        if (more := size - FREE_ANSWER_BYTES - counted[0]) > 0:
            answers.take(peer, more)
            counted[0] += more
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(payload: bytes) -> Any:
    """A partner's answer parsed strictly, within its value budget (ANSWER_BYTES_PER_VALUE)."""
    return strict_loads(payload, min_values=max(MIN_VALUES, len(payload) // ANSWER_BYTES_PER_VALUE))


async def _parsed(payload: bytes) -> Any:
    """`_parse`, in a thread for a long answer (a catch-up page, up to MAX_ANSWER_BYTES): parsing
    it on the event loop held every other request and partner up for as long (seconds)."""
    if len(payload) >= OFF_LOOP_FROM:
        return await asyncio.to_thread(_parse, payload)
    return _parse(payload)


async def _problem_detail(payload: bytes, status: int) -> str:
    """A refusal's `detail`, on one line and at most MAX_PEER_DETAIL characters: it goes into the
    outbox's row, the audit log (`send.refused`) and the peers' view, and a partner may write
    anything there (before, a 4xx whose detail was 90 MB went into the log as it came, once per
    item refused)."""
    try:
        detail = (await _parsed(payload)).get("detail")
    except (InvalidInput, AttributeError):
        detail = None
    if type(detail) is not str:
        return f"HTTP {status}"
    # Control and format characters (terminal escapes, bidi overrides) go as spaces, then one line.
    printable = "".join(
        c if unicodedata.category(c) not in ("Cc", "Cf") else " " for c in detail[: MAX_PEER_DETAIL * 4]
    )
    line = " ".join(printable.split())
    if not line:
        return f"HTTP {status}"
    return line if len(line) <= MAX_PEER_DETAIL else line[: MAX_PEER_DETAIL - 1] + "…"
