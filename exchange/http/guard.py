"""Connections counted per client address and per partner node, in their TLS handshake and once
open, and the limits they are held to (`ServerLimits`, from NodeConfig): the bookkeeping behind
exchange.http.server's `GuardedHandler` and exchange.http.handshake's `Handshakes`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from exchange.config import NodeConfig

Refused = Callable[[str | None, int, str, str], None]  # (client address, status, reason, sample)
# Client addresses (`client_key`) each roster partner connected from, remembered (the oldest
# forgotten): a partner's stolen key used from many addresses makes no more of them than this.
PARTNER_ADDRESSES = 8
# What the roster names (exchange.node.tls.roster_addresses): the client addresses of its endpoints
# given as IP addresses, and the nodes it lists as active; the same object until the roster changes.
Listed = tuple[frozenset[str], frozenset[str]]
_NOBODY: Listed = (frozenset(), frozenset())


@dataclass(frozen=True)
class Shake:
    """One connection in its TLS handshake, as counted (`ConnectionGuard.shake`): from `key`, as a
    partner's address's or not, in that address's `generation` of being a partner's."""

    key: str
    partner: bool
    generation: int


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts, sizes and connection counts of the node's HTTP server (see NodeConfig)."""

    header_timeout: float = 10.0
    body_timeout: float = 120.0
    read_timeout: float = 30.0
    keepalive_timeout: float = 120.0
    max_header_bytes: int = 8190
    max_head_bytes: int = 65536
    max_connections_per_address: int = 128
    max_connections_per_peer: int = 32
    max_connections: int = 1024

    @classmethod
    def from_config(cls, config: NodeConfig) -> ServerLimits:
        return cls(
            header_timeout=config.header_timeout_seconds,
            body_timeout=config.body_timeout_seconds,
            read_timeout=config.read_timeout_seconds,
            keepalive_timeout=config.keepalive_timeout_seconds,
            max_header_bytes=config.max_header_bytes,
            max_head_bytes=config.max_head_bytes,
            max_connections_per_address=config.max_connections_per_address,
            max_connections_per_peer=config.max_connections_per_peer,
            max_connections=config.max_connections,
        )


class ConnectionGuard:
    """Open connections per client address and per partner node, and where refusals are counted."""

    def __init__(
        self,
        limits: ServerLimits | None = None,
        refused: Refused | None = None,
        identify: Callable[[bytes], str | None] | None = None,
        listed: Callable[[], Listed] | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        self.refused: Refused = refused or (lambda address, status, reason, sample: None)
        # The roster node whose certificate (DER) a client presented, or None if the roster lists
        # none: a certificate that chains to a roster one is not a roster node's for that (each
        # node's certificate can sign others). Without it (tests of this module), the certificate's hash.
        self.identify = identify
        self._open: Counter[str] = Counter()
        self._clients = 0  # connections without a roster certificate, from every address
        # Connections in their TLS handshake, per client address and in all: nobody knows yet
        # whether they are a partner's, so partners' count here too, and a flood of clients that
        # never finish theirs holds a place no longer than the handshake timeout.
        self._shaking: Counter[str] = Counter()
        self._total = 0
        # Handshakes from partners' addresses (`partner_address`): not held to `max_connections`,
        # so a flood from many other addresses cannot keep a partner from reaching this node; each
        # such address is still held to `max_connections_per_address`. An address that stops
        # being a partner's has its handshakes under way counted as strangers' from then on.
        self._partner_shaking: Counter[str] = Counter()
        self._partner_total = 0
        # Per address with handshakes under way, how many times it stopped being a partner's
        # meanwhile: a handshake counted as a partner's before that is a stranger's when it ends.
        self._generation: Counter[str] = Counter()
        self._seen_from: dict[str, dict[str, None]] = {}  # per partner, where it connected from, oldest first
        self._seen: Counter[str] = Counter()  # those addresses, and by how many partners
        self._listed = listed or (lambda: _NOBODY)
        self._held: Listed = _NOBODY  # the roster's endpoint addresses and listed nodes, as last read

    def _roster(self) -> Listed:
        """The roster's endpoint addresses and listed nodes; on a change, partners no longer
        listed and their addresses are forgotten."""
        listed = self._listed()
        if listed is not self._held:
            before, self._held = self._held, listed
            for node in [n for n in self._seen_from if n not in listed[1]]:
                for address in self._seen_from.pop(node):
                    self._unseen(address)
            for address in before[0] - listed[0]:
                self._forget(address)
        return listed

    def partner_address(self, key: str) -> bool:
        """Whether a listed roster partner connected from `key`, or the roster names it as an endpoint."""
        endpoints = self._roster()[0]  # first: a roster change forgets partners no longer listed
        return key in self._seen or key in endpoints

    def partner_seen(self, node: str, key: str) -> None:
        """Partner `node` connected from `key`: handshakes from there get a place from now on."""
        if node not in self._roster()[1]:
            return
        mine = self._seen_from.setdefault(node, {})
        if key in mine:
            del mine[key]
        else:
            self._seen[key] += 1
        mine[key] = None
        if len(mine) > PARTNER_ADDRESSES:
            oldest = next(iter(mine))
            del mine[oldest]
            self._unseen(oldest)

    def _unseen(self, address: str) -> None:
        self._seen[address] -= 1
        if self._seen[address] <= 0:
            del self._seen[address]
            self._forget(address)

    def _forget(self, address: str) -> None:
        """`address` may no longer be a partner's: its handshakes under way count as strangers'."""
        if address not in self._seen and address not in self._held[0] and address in self._partner_shaking:
            self._partner_total -= self._partner_shaking.pop(address)
            self._generation[address] += 1

    def shake(self, key: str) -> Shake | None:
        """Count one more connection in its TLS handshake from `key`; None past a limit."""
        limits = self.limits
        if self._shaking[key] >= limits.max_connections_per_address:
            return None
        partner = self.partner_address(key)
        if not partner and self._total - self._partner_total >= limits.max_connections:
            return None
        self._shaking[key] += 1
        self._total += 1
        if partner:
            self._partner_shaking[key] += 1
            self._partner_total += 1
        return Shake(key, partner, self._generation[key])

    def shaken(self, shake: Shake) -> None:
        """A handshake ended: the connection is counted as `open` from now on, or is gone."""
        key = shake.key
        self._shaking[key] -= 1
        self._total -= 1
        if shake.partner and shake.generation == self._generation[key]:
            self._partner_shaking[key] -= 1
            self._partner_total -= 1
            if self._partner_shaking[key] <= 0:
                del self._partner_shaking[key]
        if self._shaking[key] <= 0:  # none under way: nothing counted under an older generation
            del self._shaking[key]
            self._generation.pop(key, None)

    def handshakes(self, key: str | None = None) -> int:
        """How many connections are in their TLS handshake from `key`, or in all."""
        return self._total if key is None else self._shaking[key]

    def open(self, key: str, peer: bool) -> bool:
        """Count one more connection under `key`, or False if that is past a limit."""
        limits = self.limits
        if peer:
            if self._open[key] >= limits.max_connections_per_peer:
                return False
        elif self._open[key] >= limits.max_connections_per_address or self._clients >= limits.max_connections:
            return False
        self._open[key] += 1
        self._clients += not peer
        return True

    def close(self, key: str, peer: bool) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]
        self._clients -= not peer

    def connections(self, key: str) -> int:
        """How many connections are open under `key` (a client address, or a partner's key)."""
        return self._open[key]
