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
    former: FormerKeys = field(default_factory=lambda: FormerKeys({}, frozenset()))


@dataclass(frozen=True)
class FormerKeys:
    """A node's keys besides its current ones, as a roster v2 version lists them (6a.7, rotation):
    signing keys by (node, kid) with their state, and the (node, kid) of `retiring` encryption keys.
    A v1 roster has none."""

    signing: dict[tuple[str, str], tuple[str, bytes]]  # raw keys: a Federation goes to worker processes
    wrap: frozenset[tuple[str, str]]
    departed: dict[str, str] = field(default_factory=dict)  # suspended or revoked node -> its name
    tls: dict[str, tuple[str, str]] = field(default_factory=dict)  # pin of a retiring TLS key -> (node, cert PEM)


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
    def index(cls, roster: Roster, former: FormerKeys | None = None) -> Federation:
        """Index a roster whose trust was established otherwise (a v1 view of a held roster v2
        version, exchange.protocol.rosterview.federation_view, with the `former` keys it lists),
        checking every node's key ids and pin."""
        fed = cls(roster)
        if former is not None:
            fed._index = _Index(roster, former=former)
        for node in roster.nodes:
            if VerifyKey(b64d(node.signing_key)).kid != node.signing_kid:
                raise ConfigError(f"roster: signing key id of {node.id} does not match its key")
            encryption = EncryptionKey(b64d(node.encryption_key))
            if encryption.kid != node.encryption_kid:
                raise ConfigError(f"roster: encryption key id of {node.id} does not match its key")
            encryption.check_order(f"roster: the encryption key of {node.id}")  # SmallOrderKey (6, step 3)
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

    def listed(self, node_id: str) -> bool:
        """Whether `node_id` is an active node of this version (its keys are current)."""
        return node_id in self._index.by_id

    def name_of(self, node_id: str) -> str:
        """A node's name for people: an active node's, or a suspended or revoked one's, marked so."""
        if node_id in self._index.by_id:
            return self._index.by_id[node_id].name
        departed = self._index.former.departed.get(node_id)
        return node_id if departed is None else f"{departed} (no longer active)"

    def node(self, node_id: str) -> RosterNode:
        try:
            return self._index.by_id[node_id]
        except KeyError:
            raise UnknownPeer(f"node {node_id!r} is not in the roster") from None

    def node_by_pin(self, pin: str) -> RosterNode:
        """The active node whose active or retiring TLS key has `pin` (6a.7: a TLS rotation's overlap)."""
        try:
            return self._index.by_pin[pin]
        except KeyError:
            former = self._index.former.tls.get(pin)
            if former is not None and former[0] in self._index.by_id:
                return self._index.by_id[former[0]]
            raise UnknownPeer("the TLS certificate is not in the roster") from None

    def tls_certs_pem(self, node_id: str | None = None) -> str:
        """PEM of the certificates to trust in TLS: every active node's active and retiring ones, or
        one node's."""
        active = [n.tls_cert for n in self.roster.nodes if node_id in (None, n.id)]
        retiring = [pem for n, pem in self._index.former.tls.values() if node_id in (None, n)]
        return "".join(active + retiring)

    def verify_key(self, node_id: str) -> VerifyKey:
        return VerifyKey(b64d(self.node(node_id).signing_key))

    def encryption_key(self, node_id: str) -> EncryptionKey:
        return EncryptionKey(b64d(self.node(node_id).encryption_key))

    def former_signing_key(self, node_id: str, kid: str, *, stored: bool = False) -> VerifyKey | None:
        """A signing key of `node_id` other than its current one that still checks its signatures
        (docs/protocol.md, 6a.13): a `retiring` one, on anything (a rotation's overlap: what the
        node signed before it switched is still in flight); with `stored`, for an item this node
        took in earlier and checks again, a `verify-only` one too. None otherwise."""
        entry = self._index.former.signing.get((node_id, kid))
        if entry is None or entry[0] not in (("retiring", "verify-only") if stored else ("retiring",)):
            return None
        return VerifyKey(entry[1])

    def former_key_state(self, node_id: str, kid: str) -> str | None:
        """The state the held version gives signing key `kid` of `node_id` if it is a former one
        (retiring, verify-only or compromised: 6a.7), else None."""
        entry = self._index.former.signing.get((node_id, kid))
        return entry[0] if entry is not None else None

    def signing_key_of(self, node_id: str, kid: str, *, stored: bool = False) -> VerifyKey | None:
        """The key `kid` of `node_id` if it checks the node's signatures: its current signing key,
        or a former one as `former_signing_key` says; None otherwise."""
        listed = self._index.by_id.get(node_id)
        if listed is not None and listed.signing_kid == kid:
            return self.verify_key(node_id)
        if listed is None and node_id not in self._index.former.departed:
            self.node(node_id)  # UnknownPeer
        return self.former_signing_key(node_id, kid, stored=stored)

    def any_signing_key_of(self, node_id: str, kid: str) -> VerifyKey | None:
        """The key `kid` of `node_id` whatever its state now (current, retiring, verify-only or
        compromised), or None if the roster never listed it: what checks that an item this node
        checked when it came, and stored, is still the one that came (its row not edited since)."""
        listed = self._index.by_id.get(node_id)
        if listed is not None and listed.signing_kid == kid:
            return self.verify_key(node_id)
        entry = self._index.former.signing.get((node_id, kid))
        return VerifyKey(entry[1]) if entry is not None else None

    def departed_signing_keys(self) -> dict[str, list[VerifyKey]]:
        """Each suspended or revoked node's signing keys but compromised ones, all verify-only: what
        it signed before (its audit log's checkpoints, its cosignatures) still verifies (6a.7)."""
        keys: dict[str, list[VerifyKey]] = {n: [] for n in self._index.former.departed}
        for (node_id, _), (state, raw) in self._index.former.signing.items():
            if node_id in keys and state == "verify-only":
                keys[node_id].append(VerifyKey(raw))
        return keys

    def signing_keys(self, node_id: str, *, stored: bool = True) -> list[VerifyKey]:
        """Every signing key of `node_id` that checks what it signed: the current one first, then
        its retiring and verify-only ones (an audit log's checkpoints span rotations). Without
        `stored`, only those that check new items (6a.13): the current one and retiring ones."""
        states = ("retiring", "verify-only") if stored else ("retiring",)
        former = self._index.former.signing.items()
        return [self.verify_key(node_id), *(VerifyKey(k) for (n, _), (s, k) in former if n == node_id and s in states)]

    def accepts_wrap(self, node_id: str, kid: str) -> bool:
        """Whether an envelope may wrap for `node_id`'s encryption key `kid`: its current key, or
        a `retiring` one (items made before the rotation, in flight)."""
        return self.node(node_id).encryption_kid == kid or (node_id, kid) in self._index.former.wrap
