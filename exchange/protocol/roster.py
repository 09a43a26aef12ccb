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
class Federation:
    """A verified roster, indexed for look-ups by node id and TLS pin."""

    roster: Roster
    _by_id: dict[str, RosterNode] = field(default_factory=dict, repr=False)
    _by_pin: dict[str, RosterNode] = field(default_factory=dict, repr=False)

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
            if pin in fed._by_pin:
                raise ConfigError(f"roster: {node.id} has the same TLS key as {fed._by_pin[pin].id}")
            fed._by_id[node.id] = node
            fed._by_pin[node.tls_pin] = node
        return fed

    @property
    def node_ids(self) -> list[NodeId]:
        return [NodeId(n.id) for n in self.roster.nodes]

    def node(self, node_id: str) -> RosterNode:
        try:
            return self._by_id[node_id]
        except KeyError:
            raise UnknownPeer(f"node {node_id!r} is not in the roster") from None

    def node_by_pin(self, pin: str) -> RosterNode:
        try:
            return self._by_pin[pin]
        except KeyError:
            raise UnknownPeer("the TLS certificate is not in the roster") from None

    def verify_key(self, node_id: str) -> VerifyKey:
        return VerifyKey(b64d(self.node(node_id).signing_key))

    def encryption_key(self, node_id: str) -> EncryptionKey:
        return EncryptionKey(b64d(self.node(node_id).encryption_key))
