"""The keys an audit log is checked with: each roster node's, as the signer of its own log (its
current and former signing keys) and as a witness, and the configured C2SP witnesses'. A suspended
or revoked node's keys (but compromised ones) are held too: what it signed before still verifies
(docs/protocol.md 6a.7), though it is no longer a witness that a quorum can count. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from exchange.audit.checkpoint import WITNESS_PREFIX, log_origin, witness_name
from exchange.audit.logkeys import key_that_signed
from exchange.crypto import VerifyKey, b64d
from exchange.errors import AuditTampered
from exchange.model import Roster
from exchange.protocol.roster import Federation


class KeyRing:
    """The Ed25519 key of each roster node, as the signer of its own log and as a witness; and the
    keys of C2SP witnesses outside the roster (by key name) that a node's configuration names."""

    def __init__(self, keys: Mapping[str, VerifyKey], c2sp: Mapping[str, VerifyKey] | None = None) -> None:
        self._keys = dict(keys)
        self._c2sp = {name: key for name, key in (c2sp or {}).items() if not name.startswith(WITNESS_PREFIX)}

    # A node's former signing keys; a departed node's keys, which it has no current one beside
    _former: Mapping[str, Sequence[VerifyKey]] = MappingProxyType({})

    @classmethod
    def from_federation(cls, fed: Federation, c2sp: Mapping[str, VerifyKey] | None = None) -> KeyRing:
        """Keys of a roster whose authority signature was checked (and configured C2SP witnesses),
        with each node's former signing keys that its roster v2 version lists (6a.13), and the keys
        of the nodes it lists as suspended or revoked, compromised ones left out (6a.7)."""
        ring = cls({n: fed.verify_key(n) for n in fed.node_ids}, c2sp)
        former: dict[str, Sequence[VerifyKey]] = {n: fed.signing_keys(n)[1:] for n in fed.node_ids}
        ring._former = {**former, **fed.departed_signing_keys()}
        return ring

    @property
    def nodes(self) -> list[str]:
        """The roster's active nodes: those that witness and are witnessed (witness sets)."""
        return list(self._keys)

    def log_keys(self, node: str) -> list[VerifyKey]:
        """Every key of `node` a checkpoint of its log may be signed with: its current one first
        (a departed node has none, only the keys that check what it signed before)."""
        if not (keys := self._signing_keys(node)):
            raise AuditTampered(f"{node!r} is not in the roster, so its log cannot be checked")
        return keys

    def _signing_keys(self, node: str) -> list[VerifyKey]:
        current = [self._keys[node]] if node in self._keys else []
        return [*current, *self._former.get(node, ())]

    def log_key_for(self, node: str, note_text: str) -> VerifyKey:
        """The key of `node` that signed checkpoint `note_text`: its current one or a former one."""
        return key_that_signed(note_text, log_origin(node), self.log_keys(node))

    @classmethod
    def from_roster(cls, roster: Roster) -> KeyRing:
        """Keys read from a roster whose authority signature was NOT checked."""
        return cls({n.id: VerifyKey(b64d(n.signing_key)) for n in roster.nodes})

    def log_key(self, node: str) -> VerifyKey:
        """The key that signs `node`'s checkpoints."""
        try:
            return self._keys[node]
        except KeyError:
            raise AuditTampered(f"{node!r} is not in the roster, so its log cannot be checked") from None

    def witnesses(self, log_node: str) -> dict[str, VerifyKey | Sequence[VerifyKey]]:
        """Witness key name -> key or keys, for every node but the log's own (a cosignature checks
        with any of its non-compromised keys, departed nodes' included), and the C2SP witnesses."""
        nodes = [*self._keys, *(n for n in self._former if n not in self._keys)]
        roster = {witness_name(n): keys for n in nodes if n != log_node and (keys := self._signing_keys(n))}
        return {**self._c2sp, **roster}
