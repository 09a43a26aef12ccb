"""Webhooks: administrations that route alerts into their own systems register a URL per channel;
the node POSTs each new bulletin's metadata there, signed, in storage order, retried with backoff.

- **What is sent**: a bulletin's metadata, never its content (no title, text, indicators or
  attachments): `{"node", "channel", "bulletin": {"id", "cursor", "author", "seq", "kind", "tlp",
  "created"}}`. The receiver fetches the bulletin through the API if it may read it. Bulletins that
  may not leave the node by TAXII (exchange.service.sharing: TLP:RED, no-onward-sharing,
  AMBER+STRICT without the owner's export rule) are not announced: the cursor passes over them.
- **Signature**: `Exchange-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t "." body)>`,
  with the secret shown once when the webhook is registered. A receiver recomputes it, compares in
  constant time and refuses old `t` values (docs/operations.md, "Webhooks").
- **Delivery**: one bulletin per request, in storage order; the webhook's cursor moves only on a
  2xx answer, so a receiver that was down gets everything after it returns. Failures back off
  (1 s doubling to 10 minutes); each delivery run and each start of failing is audited.
- **Scope**: only channels this node reads (`Access.node_reads`): registration is refused for one
  it is only invited to, was removed from or holds without the read right, and a delivery pass
  passes over a webhook whose channel the node no longer reads (its cursor waits, should the node
  read it again). `http://` only to loopback, otherwise `https://`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.clock import cancel_and_wait, stop_requested, timestamp, utc_now, wait_event
from exchange.errors import Forbidden, InvalidInput, NotFound, PeerError
from exchange.service.access import Access
from exchange.service.catchup import POSITIONS
from exchange.service.sharing import onward_forbidden_sql, served_tlp
from exchange.service.summaries import SUMMARY, summarised, unreadable
from exchange.service.users import User
from exchange.service.views import View
from exchange.store import Store, bulletins
from exchange.store.tables import webhooks
from exchange.store.workers import Role

log = logging.getLogger("exchange.webhooks")

INTERVAL = 1.0  # seconds between looks for new bulletins, while the node has a webhook
# Without one, a look only this often (a registration through this process wakes the loop at once;
# through another worker of the node, it is noticed within this time): an idle node's cost.
IDLE_INTERVAL = 30.0
BATCH = 100  # bulletins one run delivers to one webhook at most
# Seconds after which a run starts no further POST to its webhook (the rest wait for the next pass):
# a pass waits for every webhook's run, so a receiver that answered each POST just inside its 10 s
# held every other webhook's deliveries for up to BATCH of them (about 16 minutes).
RUN_SECONDS = 5.0
PARALLEL = 8  # webhooks delivered to at once in one run
MAX_BACKOFF = 600.0
MAX_WEBHOOKS = 100  # per node
LOOPBACK = ("127.0.0.1", "::1", "localhost")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: an IPv4 address in its last 32 bits


class WebhookSender(Protocol):
    """POSTs a JSON body to a URL; returns the HTTP status, raises OSError-like errors as PeerError."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int: ...


def signature(secret: str, body: bytes, at: int) -> str:
    """The `Exchange-Signature` header value for `body` sent at Unix time `at`."""
    mac = hmac.new(secret.encode("ascii"), str(at).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str, now: int, tolerance: int = 300) -> bool:
    """What a receiver checks: the MAC in constant time, and a `t` within `tolerance` seconds. A
    header it cannot read (a MAC that is not hex, text that is not ASCII) is False, never an error."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        at = int(parts["t"])
        given = parts.get("v1", "").encode("ascii")
    except (KeyError, ValueError):  # UnicodeEncodeError is a ValueError
        return False
    if abs(now - at) > tolerance:
        return False
    expected = signature(secret, body, at).split(",v1=", 1)[1].encode("ascii")
    return hmac.compare_digest(expected, given)


def unreachable_address(host: str) -> bool:
    """Whether `host` is an IP address no webhook may reach: link-local (169.254.0.0/16, where
    cloud platforms serve instance metadata and credentials, and fe80::/10), unspecified or
    multicast, IPv4-mapped IPv6 forms included. A host name is judged by each address it resolves
    to, when the request is made (exchange.node.webhook_client)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (int(ip) >> 32 == 0 or ip in NAT64):  # IPv4-compatible (::a.b.c.d), NAT64
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and unreachable_address(str(embedded)):
            return True
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast


def _numeric_host(host: str) -> bool:
    """Whether a URL's host is an IPv4 address by the URL standard (its last label a number: no
    top-level domain is one), in whatever form: 2852039166, 0251.0376.0251.0376 and 169.254.43518
    all name 169.254.169.254 to some parsers."""
    if ":" in host:  # an IPv6 literal, judged as one
        return False
    last = host.rstrip(".").rsplit(".", 1)[-1].lower()
    return last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:]))


def _canonical_ipv4(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def check_url(url: str) -> str:
    """An absolute https URL, or http to loopback only, never to a link-local, unspecified or
    multicast address; else InvalidInput."""
    if len(url) > 2048 or any(c.isspace() or ord(c) < 0x21 for c in url):
        raise InvalidInput("url must be an absolute URL without spaces, at most 2048 characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port out of range or not a number raises here
    except ValueError as exc:  # an unclosed "[", a bad port
        raise InvalidInput(f"url is not a valid URL: {exc}") from exc
    if "@" in parts.netloc or "\\" in url:
        # Credentials would be kept in the audit log and shown by `webhooks list`; the receiver
        # authenticates the node by the requests' signature instead. A backslash is read as a
        # separator by some parsers and not by others, so the host checked might not be the one
        # reached.
        raise InvalidInput("url must not carry a user or password (user@host) nor a backslash")
    if parts.hostname and _numeric_host(parts.hostname) and not _canonical_ipv4(parts.hostname):
        raise InvalidInput(
            "url must name its host by a DNS name or an IP address in its usual form (such as 192.0.2.1)"
        )
    if parts.hostname and unreachable_address(parts.hostname):
        raise InvalidInput(
            "url must not name a link-local, unspecified or multicast address (such as a cloud metadata service)"
        )
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in LOOPBACK:
        return url
    raise InvalidInput("url must be https:// (or http:// to this machine's loopback, for a local relay)")


def shown_url(url: str) -> str:
    """A webhook's URL as the audit log, the list and errors show it: its scheme, host and port,
    with any path or query (where many receivers put their token, as in
    `https://hooks.example/services/T0/B0/secret`) replaced by "…" and the first 12 hex digits of
    the SHA-256 of the whole URL, which tells webhooks apart and lets whoever knows a URL match it."""
    parts = urlsplit(url)
    if parts.path in ("", "/") and not parts.query and not parts.fragment:
        return url
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return f"{parts.scheme}://{parts.netloc}/… (sha256 {digest})"


def redacted(text: str, url: str) -> str:
    """`text` (an error's) without the URL's path and query: the client's errors may name the URL,
    whole or as it parsed it."""
    parts = urlsplit(url)
    text = text.replace(url, shown_url(url)).replace(url[:200], shown_url(url))  # as errors before cut it
    for secret in (parts.path + (f"?{parts.query}" if parts.query else ""), parts.query, parts.path):
        if len(secret) > 1:
            text = text.replace(secret, "/…")
    return text


@dataclass(frozen=True)
class Webhook(View):
    id: int
    channel: str
    url: str
    cursor: int
    delivered: int
    failures: int
    next_try_at: str | None
    last_error: str | None
    created_at: str
    created_by: str
    # Why nothing is announced now, though nothing failed: this node no longer reads the channel.
    paused: str | None = None


@dataclass(frozen=True)
class Registered(View):
    webhook: Webhook
    secret: str  # shown once


def _view(row: Any) -> Webhook:
    return Webhook(
        row.id,
        row.channel,
        shown_url(row.url),
        int(row.cursor),
        int(row.delivered),
        int(row.failures),
        row.next_try_at,
        # an error recorded before this release may name the whole URL
        redacted(row.last_error, row.url) if row.last_error else None,
        row.created_at,
        row.created_by,
    )


class Webhooks:
    """Registration (administrators) and the delivery loop."""

    def __init__(self, me: str, store: Store, access: Access, sender: WebhookSender | None) -> None:
        self.me = me
        self.store = store
        self.access = access
        self.sender = sender
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- administration ---------------------------------------------------------------------

    async def register(self, user: User, channel: str, url: str) -> Registered:
        """A new webhook for `channel` from now on (its cursor: the newest bulletin stored)."""
        user.require("admin")
        self.access.channels.state(channel)  # NotFound for a channel this node has no part in
        if not self.access.node_reads(channel):
            raise Forbidden(
                f"this node does not read channel {channel!r} (it is only invited, was removed, or lacks the"
                " read right): a webhook announces only a channel the node reads"
            )
        url = check_url(url)
        secret = secrets.token_hex(32)
        at = timestamp()

        async def job(conn: Any, audit: Any) -> int:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(webhooks))
            if int(count or 0) >= MAX_WEBHOOKS:
                raise InvalidInput(f"this node has {MAX_WEBHOOKS} webhooks already")
            head = await conn.scalar(sa.select(sa.func.max(bulletins.c.n)))
            values = {"channel": channel, "url": url, "secret": secret, "cursor": int(head or 0)}
            values |= {"created_at": at, "created_by": user.name}
            new_id = int((await conn.execute(sa.insert(webhooks).values(**values))).inserted_primary_key[0])
            audit.add(
                ev.WebhookChanged(
                    event=ev.WEBHOOK_CHANGED,
                    at=at,
                    user=user.name,
                    webhook=new_id,
                    channel=channel,
                    url=shown_url(url),
                    change="registered",
                )
            )
            return new_id

        new_id = await self.store.write(job)
        self._wake.set()
        return Registered(await self.get(new_id), secret)

    async def get(self, webhook_id: int) -> Webhook:
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(webhooks).where(webhooks.c.id == webhook_id))).one_or_none()
        if row is None:
            raise NotFound(f"no webhook {webhook_id}")
        return _view(row)

    async def list(self, user: User) -> list[Webhook]:
        user.require("admin")
        async with self.store.read() as conn:
            rows = list(await conn.execute(sa.select(webhooks).order_by(webhooks.c.id)))
        return [
            _view(r)
            if self.access.node_reads(r.channel)
            else replace(_view(r), paused=f"this node no longer reads channel {r.channel}: nothing is announced")
            for r in rows
        ]

    async def remove(self, user: User, webhook_id: int) -> None:
        user.require("admin")
        hook = await self.get(webhook_id)

        async def job(conn: Any, audit: Any) -> None:
            await conn.execute(sa.delete(webhooks).where(webhooks.c.id == webhook_id))
            audit.add(
                ev.WebhookChanged(
                    event=ev.WEBHOOK_CHANGED,
                    at=timestamp(),
                    user=user.name,
                    webhook=hook.id,
                    channel=hook.channel,
                    url=hook.url,
                    change="removed",
                )
            )

        await self.store.write(job)

    # -- delivery ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.sender is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        role = Role(self.store.engine, "webhooks")  # one worker delivers (exchange.store.workers)
        try:
            while True:
                hooks = True
                try:
                    if await role.held():
                        hooks = await self.deliver_due() is not None
                except Exception:  # a failed pass is logged; the next one tries again
                    if not stop_requested():  # else no failure: the node stops (below)
                        log.exception("webhook delivery pass failed")
                if stop_requested():  # cancelled in a wait that ended otherwise (exchange.clock)
                    raise asyncio.CancelledError
                await wait_event(self._wake, INTERVAL if hooks else IDLE_INTERVAL)
                self._wake.clear()
        finally:
            await role.release()

    async def deliver_due(self) -> int | None:
        """One pass: each webhook that is not backing off gets what came after its cursor. How many
        bulletins were sent, or None if the node has no webhook."""
        now = timestamp()
        async with self.store.read() as conn:
            due = list(await conn.execute(sa.select(webhooks).order_by(webhooks.c.id)))
        if not due:
            return None
        # Nothing is announced from a channel this node no longer reads (removed, or its read right
        # taken away): what it still holds there stays inside the node.
        ready = [
            hook
            for hook in due
            if (hook.next_try_at is None or hook.next_try_at <= now) and self.access.node_reads(hook.channel)
        ]
        gate = asyncio.Semaphore(PARALLEL)

        async def one(hook: Any) -> int:
            async with gate:  # a slow receiver holds up its own webhook, the others' for RUN_SECONDS at most
                try:
                    return await self._deliver(hook)
                except Exception as exc:  # one webhook's failure (its store write, a bug) stops no other
                    log.exception("webhook %s: delivery run failed", hook.id)
                    # Backed off as a receiver's failure is: a run that failed the same way every
                    # second (a stored row it cannot read) logged a traceback each time, for ever.
                    with contextlib.suppress(Exception):
                        await self._record(hook, int(hook.cursor), 0, f"{type(exc).__name__} in this node"[:300])
                    return 0

        return sum(await asyncio.gather(*(one(hook) for hook in ready)))

    async def _deliver(self, hook: Any) -> int:
        assert self.sender is not None
        served = self._served_tlp(hook.channel)
        no_onward = onward_forbidden_sql(bulletins.c.id).label("no_onward")
        # The TLP judged below, not in SQL: a withheld row is then passed over (the cursor moves past
        # it), where with `tlp IN` a channel ending in withheld bulletins was walked to its end at
        # every pass, each second, and never passed.
        query = sa.select(*SUMMARY, bulletins.c.channel_pos, no_onward).where(
            bulletins.c.channel == hook.channel, bulletins.c.n > hook.cursor
        )
        async with self.store.read() as conn:
            rows = (await conn.execute(query.order_by(bulletins.c.n).limit(BATCH))).all()
            items = list(await summarised(conn, rows))
        cursor, sent, error = int(hook.cursor), 0, None
        clock = asyncio.get_running_loop().time
        until = clock() + RUN_SECONDS
        for row, content in items:
            if row.no_onward or row.tlp not in served or unreadable(content):
                cursor = int(row.n)  # passed over, as TAXII does: never announced outside the node
                continue
            if sent and clock() > until:
                break  # the rest at the next pass, after the other webhooks' runs
            body = self._body(row, content)
            headers = {
                "Content-Type": "application/json",
                "Exchange-Signature": signature(hook.secret, body, int(time.time())),
            }
            try:
                status = await self.sender.post(hook.url, body, headers)
            except Exception as exc:  # unreachable, TLS, timeout: try again later
                # This node's own client names the URL as shown; another error's text may hold the
                # URL in any form (normalised, cut short), so only its type is kept.
                said = f": {exc}" if isinstance(exc, PeerError) else " while posting"
                error = redacted(f"{type(exc).__name__}{said}", hook.url)[:300]
                break
            if not 200 <= status < 300:
                error = f"HTTP {status}"
                break
            cursor, sent = int(row.n), sent + 1
        if sent or error or cursor != int(hook.cursor):
            await self._record(hook, cursor, sent, error)
        return sent

    def _served_tlp(self, channel: str) -> tuple[str, ...]:
        """The TLP levels whose bulletins a webhook announces: those that may leave the node by
        TAXII (RED never; AMBER+STRICT where the channel's owner allows its export)."""
        return served_tlp(self.access.channels.state(channel))

    def _body(self, row: Any, content: dict[str, Any]) -> bytes:
        meta = {
            "id": row.id,
            # its position in the channel, above those of `n` sent before revision 0012: `n` counts
            # every channel, and told the receiver how many bulletins the node stored in the others
            "cursor": POSITIONS + int(row.channel_pos or 0),
            "author": row.author,
            "seq": int(row.seq),
            "kind": content.get("kind"),
            "tlp": row.tlp,
            "created": row.created,
        }
        return json.dumps({"node": self.me, "channel": row.channel, "bulletin": meta}, separators=(",", ":")).encode()

    async def _record(self, hook: Any, cursor: int, sent: int, error: str | None) -> None:
        # A failing receiver counts as recovered when a delivery succeeds, not when a pass finds
        # nothing to send (that reset the count, and the next failure was audited as a new start).
        failures = int(hook.failures) + 1 if error else 0 if sent else int(hook.failures)
        # The exponent capped first: 2.0 ** 1024 overflows, after about a week of failures at the cap.
        wait = min(MAX_BACKOFF, 2.0 ** min(failures - 1, 30)) if error else 0.0
        next_try = timestamp(utc_now() + dt.timedelta(seconds=wait)) if error else None if sent else hook.next_try_at
        last_error = error if error or sent else hook.last_error
        at = timestamp()

        async def job(conn: Any, audit: Any) -> None:
            values = {
                # Never back: with several workers (PostgreSQL), a pass of one that lost its role midway
                # must not undo what another recorded since.
                "cursor": sa.case((webhooks.c.cursor > cursor, webhooks.c.cursor), else_=cursor),
                "delivered": webhooks.c.delivered + sent,
                "failures": failures,
                "next_try_at": next_try,
                "last_error": last_error,
            }
            # Its id and its secret: this pass's outcome must not land on another webhook (on SQLite
            # before revision 0009, the next one registered got a removed webhook's id).
            mine = sa.and_(webhooks.c.id == hook.id, webhooks.c.secret == hook.secret)
            if (await conn.execute(sa.update(webhooks).where(mine).values(**values))).rowcount == 0:
                return  # removed while this pass ran
            if sent:
                audit.add(
                    ev.WebhookDelivered(
                        event=ev.WEBHOOK_DELIVERED,
                        at=at,
                        webhook=int(hook.id),
                        channel=hook.channel,
                        count=sent,
                        through=cursor,
                    )
                )
            if error and failures == 1:  # the start of failing, once; later failures are its retries
                audit.add(
                    ev.WebhookFailing(
                        event=ev.WEBHOOK_FAILING, at=at, webhook=int(hook.id), channel=hook.channel, error=error
                    )
                )

        await self.store.write(job)

    def wake(self, channels: Sequence[str] = ()) -> None:
        """New bulletins were stored: look now rather than at the next interval."""
        self._wake.set()
