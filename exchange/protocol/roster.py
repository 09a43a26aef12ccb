"""The federation roster: signed by the federation authority, the root of trust for every node."""

from __future__ import annotations

from dataclasses import dataclass, field

from exchange.crypto import EncryptionKey, SigningKey, VerifyKey, b64d, spki_pin
from exchange.errors import ConfigError, UnknownPeer
from exchange.model import NodeId, Roster, RosterNode, SignedRoster
from exchange.protocol.signing import sign, verify

DOMAIN = "roster"


def sign_roster(roster: Roster, authority: SigningKey) -> SignedRoster:
    if roster.authority_kid != authority.kid:
        raise ConfigError("roster names another authority key")
    return SignedRoster(roster=roster, signature=sign(DOMAIN, roster.model_dump(mode="json"), authority))


@dataclass(frozen=True)
class _Index:
    roster: Roster
    by_id: dict[str, RosterNode] = field(default_factory=dict)
    by_pin: dict[str, RosterNode] = field(default_factory=dict)


class Federation:
    """A verified roster, indexed for look-ups by node id and TLS pin.

    A running node holds one `Federation` that every part of it reads through; when the node takes
    a new roster version, `install` swaps what it holds in one assignment (docs/operations.md, "What
    changes live"), so a reader sees one version or the next, never a mix of both.
    """

    __slots__ = ("_index",)

    def __init__(self, roster: Roster) -> None:
        self._index = _Index(roster)

    @property
    def roster(self) -> Roster:
        return self._index.roster

    def install(self, other: Federation) -> None:
        """Hold what `other` holds from now on (the node's next roster version)."""
        self._index = other._index

    def __repr__(self) -> str:
        return f"Federation(version={self.roster.version}, nodes={len(self.roster.nodes)})"

    @classmethod
    def verify(cls, signed: SignedRoster, authority: VerifyKey) -> Federation:
        """Check the authority's signature and every node's key ids and TLS pin."""
        roster = signed.roster
        if roster.authority_kid != authority.kid:
            raise ConfigError("roster is signed by an unknown authority key")
        verify(DOMAIN, roster.model_dump(mode="json"), signed.signature, authority)
        return cls.index(roster)

    @classmethod
    def index(cls, roster: Roster) -> Federation:
        """Index a roster whose trust was established otherwise (a v1 view of a held roster v2
        version, exchange.protocol.rosterchain.federation_view), checking every node's key ids and pin."""
        fed = cls(roster)
        for node in roster.nodes:
            if VerifyKey(b64d(node.signing_key)).kid != node.signing_kid:
                raise ConfigError(f"roster: signing key id of {node.id} does not match its key")
            if EncryptionKey(b64d(node.encryption_key)).kid != node.encryption_kid:
                raise ConfigError(f"roster: encryption key id of {node.id} does not match its key")
            try:
                pin = spki_pin(node.tls_cert.encode("ascii"))
            except UnicodeEncodeError as exc:
                raise ConfigError(f"roster: the TLS certificate of {node.id} is not PEM text") from exc
            if pin != node.tls_pin:
                raise ConfigError(f"roster: TLS pin of {node.id} does not match its certificate")
            index = fed._index
            if pin in index.by_pin:
                raise ConfigError(f"roster: {node.id} has the same TLS key as {index.by_pin[pin].id}")
            index.by_id[node.id] = node
            index.by_pin[node.tls_pin] = node
        return fed

    @property
    def node_ids(self) -> list[NodeId]:
        return [NodeId(n.id) for n in self.roster.nodes]

    def node(self, node_id: str) -> RosterNode:
        try:
            return self._index.by_id[node_id]
        except KeyError:
            raise UnknownPeer(f"node {node_id!r} is not in the roster") from None

    def node_by_pin(self, pin: str) -> RosterNode:
        try:
            return self._index.by_pin[pin]
        except KeyError:
            raise UnknownPeer("the TLS certificate is not in the roster") from None

    def verify_key(self, node_id: str) -> VerifyKey:
        return VerifyKey(b64d(self.node(node_id).signing_key))

    def encryption_key(self, node_id: str) -> EncryptionKey:
        return EncryptionKey(b64d(self.node(node_id).encryption_key))
