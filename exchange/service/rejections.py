"""Refused requests in the audit log, within bounds: one entry each where it says who did what,
counts where it would only say that someone flooded the node.

- A refusal of an authenticated caller (a local user or a partner node), except a 429, gets its
  own `request.rejected` entry: the caller is accountable, and an auditor wants the exact
  request; up to `exact_per_caller` per caller and interval (a caller within its rate could
  otherwise add an entry for each request it makes), past which it is counted as the others.
- Any other refusal (no or unknown credentials, and every 429) gets its own entry only while the
  interval's budget lasts: `exact_per_address` per client address and `exact_total` in all.
  Past it, it is counted per address and reason, and one `requests.refused` entry per address
  is written at the end of the interval, by a background task that outlives a failed write
  (the counts are kept for the next round) and once more when the node stops.
- Refusals made before there is a request (a head too large, a timeout, too many connections)
  are always counted (`count`, which does no I/O).

Whatever a client chose (path, reason, method) is cut to a few dozen bytes, with control and
formatting characters replaced, so that no entry exceeds `MAX_ENTRY_BYTES`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import cancel_and_wait, timestamp
from exchange.config import NodeConfig
from exchange.store import AuditBuffer, Store

log = logging.getLogger("exchange.node")

MAX_ENTRY_BYTES = 512  # what one entry of either kind takes at most, as canonical JSON with its idx
OTHER = "other"  # the address of the counts past `tracked_addresses`
UNKNOWN = "unknown"  # no client address was given
MAX_REASONS = 4  # distinct reasons kept per address and interval; the rest count as "other"

# Field budgets in bytes of their JSON string form (see `clip`); together they keep an entry under
# MAX_ENTRY_BYTES (tests/node/test_limits.py builds the worst case).
_METHOD, _PATH, _REASON, _NAME, _ADDRESS, _REASON_KEY, _SAMPLE = 12, 100, 120, 64, 46, 28, 80
_REPLACED = {"Cc", "Cf", "Cs", "Co", "Cn"}  # controls, bidi and other formatting, surrogates, unassigned


def clip(text: str, limit: int) -> str:
    """`text` with control and formatting characters replaced by "?", cut (ending in "…") so that
    its JSON string form, quotes aside, takes at most `limit` bytes."""
    out: list[str] = []
    used = 0
    for ch in text:
        if unicodedata.category(ch) in _REPLACED:
            ch = "?"
        size = 2 if ch in '"\\' else len(ch.encode())
        if used + size > limit:
            while out and used + 3 > limit:  # room for the ellipsis
                used -= _json_size(out.pop())
            return "".join(out) + "…"
        out.append(ch)
        used += size
    return "".join(out)


def _json_size(ch: str) -> int:
    return 2 if ch in '"\\' else len(ch.encode())


def client_key(address: str | None) -> str:
    """What limits and counts apply to: an IPv4 address, or an IPv6 /64 (one site's share, as a
    rule, so that a client cannot step around a limit by changing its low 64 bits)."""
    if not address:
        return UNKNOWN
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return clip(address, _ADDRESS)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def phrase(status: int) -> str:
    """The reason a refusal is counted under when nothing more specific is known: its HTTP phrase."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "refused"


@dataclass(frozen=True)
class RefusalSettings:
    """How refusals are audited: the interval, the exact-entry budgets, the addresses counted apart."""

    interval: float = 60.0
    exact_per_address: int = 10
    exact_total: int = 100
    exact_per_caller: int = 600
    tracked_addresses: int = 1000

    @classmethod
    def from_config(cls, config: NodeConfig) -> RefusalSettings:
        return cls(
            interval=config.refusals_interval_seconds,
            exact_per_address=config.refusals_exact_per_address,
            exact_total=config.refusals_exact_total,
            exact_per_caller=config.refusals_exact_per_caller,
            tracked_addresses=config.refusals_tracked_addresses,
        )


@dataclass
class _Tally:
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    sample: str = ""

    def add(self, reason: str, n: int = 1) -> None:
        self.count += n
        if reason not in self.reasons and len(self.reasons) >= MAX_REASONS - 1:
            reason = OTHER  # the last slot is for whatever does not fit
        self.reasons[reason] += n


class Refusals:
    """The refused requests of one node: exact entries within budget, counts beyond, flushed each interval."""

    def __init__(self, store: Store, settings: RefusalSettings | None = None) -> None:
        self.store = store
        self.settings = settings or RefusalSettings()
        self._since = timestamp()
        self._exact: Counter[str] = Counter()
        self._exact_total = 0
        self._callers: Counter[str] = Counter()  # accountable callers' entries this interval
        self._tallies: dict[str, _Tally] = {}
        self._task: asyncio.Task[None] | None = None

    # -- recording ----------------------------------------------------------------------------

    async def record(
        self,
        *,
        method: str,
        path: str,
        status: int,
        reason: str | None,
        peer: str | None,
        user: str | None,
        address: str | None,
    ) -> None:
        """Audit one refused request: its own entry if the caller is accountable or the budget
        allows, else one more in its address's count."""
        key = client_key(address)
        caller = f"peer:{peer}" if peer is not None else f"user:{user}" if user is not None else None
        accountable = caller is not None and status != HTTPStatus.TOO_MANY_REQUESTS
        if (accountable and self.take_caller(caller)) or (not accountable and self.take_exact(key)):
            try:
                await self.store.audit(rejected_entry(method, path, status, reason, peer, user, address))
                return
            except Exception:  # the store is stopping or away: the refusal is counted, not lost
                log.warning("could not audit a refused request on its own; it is counted", exc_info=True)
        self.count(address, status, phrase(status), f"{method} {path}")

    def take_caller(self, caller: str | None) -> bool:
        """Whether an accountable caller's refusal may still have an entry of its own this interval."""
        if caller is None or self._callers[caller] >= self.settings.exact_per_caller:
            return False
        self._callers[caller] += 1
        return True

    def take_exact(self, key: str) -> bool:
        """Whether an unaccountable refusal from `key` may still have an entry of its own this interval."""
        if self._exact[key] >= self.settings.exact_per_address or self._exact_total >= self.settings.exact_total:
            return False
        self._exact[key] += 1
        self._exact_total += 1
        return True

    def count(self, address: str | None, status: int, reason: str, sample: str = "") -> None:
        """Count one refusal for the interval's `requests.refused` entry of its address (no I/O)."""
        key = client_key(address)
        tally = self._tally(key)
        tally.add(clip(f"{status} {reason}", _REASON_KEY))
        if sample:
            tally.sample = clip(sample, _SAMPLE)

    def _tally(self, key: str) -> _Tally:
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= self.settings.tracked_addresses:
                key = OTHER
            tally = self._tallies.setdefault(key, _Tally())
        return tally

    def pending(self) -> int:
        """How many refusals are counted and not yet written."""
        return sum(t.count for t in self._tallies.values())

    # -- writing the counts ---------------------------------------------------------------------

    async def flush(self) -> int:
        """Write one `requests.refused` entry per address counted since the last flush, and start a
        new interval; the number of entries written. If the write fails, the counts are kept."""
        tallies, since = self._tallies, self._since
        self._tallies, self._since = {}, timestamp()
        self._exact.clear()
        self._exact_total = 0
        self._callers.clear()
        if not tallies:
            return 0
        entries = [summary_entry(key, tally, since) for key, tally in tallies.items()]

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            for entry in entries:
                audit.add(entry)

        try:
            await self.store.write(job)
        except BaseException:
            self._keep(tallies, since)
            raise
        return len(entries)

    def _keep(self, tallies: dict[str, _Tally], since: str) -> None:
        """Put counts whose write failed back, ahead of those counted since."""
        self._since = min(since, self._since)
        for key, old in tallies.items():
            tally = self._tally(key)
            for reason, n in old.reasons.items():
                tally.add(reason, n)
            tally.sample = tally.sample or old.sample

    async def run(self) -> None:
        """Flush every interval, for ever; a failed flush is logged and its counts wait for the next."""
        while True:
            await asyncio.sleep(self.settings.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("could not write the counts of refused requests; they are kept for the next round")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="refusals")

    async def close(self) -> None:
        """Stop the loop and write what is counted (once the node stops, nothing more is)."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush()
        except Exception:
            log.exception("could not write the counts of refused requests at stop")


def rejected_entry(
    method: str,
    path: str,
    status: int,
    reason: str | None,
    peer: str | None,
    user: str | None,
    address: str | None,
) -> ev.RequestRejected:
    """One refused request's own entry, every client-chosen field cut to its budget."""
    entry = ev.RequestRejected(
        event=ev.REQUEST_REJECTED, at=timestamp(), method=clip(method, _METHOD), path=clip(path, _PATH), status=status
    )
    if reason is not None:
        entry["reason"] = clip(reason, _REASON)
    if peer is not None:
        entry["peer"] = clip(peer, _NAME)
    if user is not None:
        entry["user"] = clip(user, _NAME)
    if address:
        entry["address"] = clip(address, _ADDRESS)
    return entry


def summary_entry(key: str, tally: _Tally, since: str) -> ev.RequestsRefused:
    """The interval's count for one address."""
    return ev.RequestsRefused(
        event=ev.REQUESTS_REFUSED,
        at=timestamp(),
        address=clip(key, _ADDRESS),
        since=since,
        count=tally.count,
        reasons=dict(tally.reasons),
        sample=tally.sample,
    )


__all__ = [
    "MAX_ENTRY_BYTES",
    "RefusalSettings",
    "Refusals",
    "client_key",
    "clip",
    "phrase",
    "rejected_entry",
    "summary_entry",
]
