"""Roster v2 (docs/protocol.md, 6a): hashing, threshold signatures, acceptance of versions in order
(TUF's root rotation rules), and the key look-ups that the node's wiring asks a trusted roster.

Pure: the caller passes the time (`now`), and persists the versions that `accept_chain` took
before it installs the one it returns.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from exchange.crypto import EncryptionKey, SigningKey, VerifyKey, b64d, b64e, cert_pem, sha256, spki_pin, strict_loads
from exchange.errors import (
    ConfigError,
    InvalidEnvelope,
    InvalidInput,
    RosterChainBroken,
    RosterEquivocation,
    RosterExpired,
    RosterGap,
    RosterInvalid,
    RosterRefused,
    RosterRollback,
    RosterThreshold,
    SmallOrderKey,
    UnknownPeer,
)
from exchange.model import NodeId, first_error
from exchange.protocol.roster2_model import (
    MAX_ROSTER_BYTES,
    Authority,
    KeyState,
    KeyUse,
    NodeKey,
    NodeStatus,
    RosterNodeV2,
    RosterSignature,
    RosterV2,
    SignedRosterV2,
    parse_timestamp,
    roster_values,
)
from exchange.protocol.signing import signing_input_prefix

DOMAIN = "roster-v2"  # not v1's "roster": a v1 signature never counts for a v2 document
MAX_CHAIN = 256  # versions checked in one go, as python-tuf's max_root_rotations: further behind, re-import
# How far a new version's `issued` may lie ahead of the receiver's clock: clocks drift, but a version
# issued later than that would be held, and then refuse every successor issued before it (6a.5).
ISSUED_AHEAD = dt.timedelta(minutes=10)
# A key may only move forward through its states; "compromised" is final.
STATE_ORDER = {"active": 0, "retiring": 1, "verify-only": 2, "compromised": 3}


def roster_hash(doc: RosterV2) -> str:
    """SHA-256 of JCS(roster), in hex: what `previous` names and what equivocation compares.

    Signatures are left out, so a version holds one hash however many holders signed it.
    """
    return sha256(doc.canonical).hex()


def roster_signing_input(doc: RosterV2) -> bytes:
    return signing_input_prefix(DOMAIN) + doc.canonical


def sign_roster_v2(doc: RosterV2, key: SigningKey) -> RosterSignature:
    """One holder's signature over a roster version (offline, with one key)."""
    return RosterSignature(kid=key.kid, signature=b64e(key.sign(roster_signing_input(doc))))


def combine(doc: RosterV2, *parts: Iterable[RosterSignature]) -> SignedRosterV2:
    """The signed roster with every distinct signature of `parts`, sorted by kid (checks none of them)."""
    unique = {(s.kid, s.signature): s for part in parts for s in part}
    try:
        return SignedRosterV2(roster=doc, signatures=[unique[k] for k in sorted(unique)])
    except ValidationError as exc:
        raise InvalidInput(f"roster does not match the schema: {first_error(exc)}") from exc


def parse_roster_v2(raw: bytes | object) -> SignedRosterV2:
    """A signed roster v2 from bytes or a parsed JSON value; a schema violation is InvalidInput."""
    if isinstance(raw, bytes | bytearray | str):
        if len(raw) > MAX_ROSTER_BYTES:
            raise InvalidInput(f"a roster has at most {MAX_ROSTER_BYTES} bytes")
        raw = strict_loads(raw, min_values=roster_values(len(raw)))
    try:
        return raw if isinstance(raw, SignedRosterV2) else SignedRosterV2.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"roster does not match the schema: {first_error(exc)}") from exc


def valid_signers(doc: RosterV2, signatures: Iterable[RosterSignature], authority: Authority) -> set[str]:
    """The kids of `authority` with a valid signature over `doc`: each key once, however often it signed.

    A kid the authority does not list, a signature by another key, a signature under another
    domain or in non-canonical base64url: none of them counts.
    """
    message = roster_signing_input(doc)
    keys = {k.kid: k.key for k in authority.keys}
    good: set[str] = set()
    for sig in signatures:
        if sig.kid in good or sig.kid not in keys:
            continue
        try:
            VerifyKey(b64d(keys[sig.kid])).verify(b64d(sig.signature), message)
        except (InvalidInput, InvalidEnvelope, ConfigError):  # BadSignature is an InvalidEnvelope
            continue
        good.add(sig.kid)
    return good


def check_threshold(signed: SignedRosterV2, authority: Authority, whose: str) -> None:
    """None if `authority`'s threshold of distinct keys signed the version, else RosterThreshold."""
    got = len(valid_signers(signed.roster, signed.signatures, authority))
    if got < authority.threshold:
        raise RosterThreshold(
            f"roster version {signed.roster.version}: {got} valid signatures from {whose}, {authority.threshold} needed"
        )


def tls_kid(cert: bytes) -> str:
    """The kid of a TLS key: the first 8 bytes of its SPKI pin, in hex."""
    return b64d(spki_pin(cert))[:8].hex()


def key_kid(use: KeyUse, key: bytes) -> str:
    """The kid that a node key of `use` must carry (ConfigError if `key` is not such a key)."""
    if use == "signing":
        return VerifyKey(key).kid
    if use == "encryption":
        return EncryptionKey(key).kid
    return tls_kid(key)


def check_document(doc: RosterV2) -> None:
    """The document's rules that need cryptography: every kid is its key's, keys and certificates
    parse, and no key (by use and kid) belongs to two nodes. Raises RosterInvalid."""
    for ak in doc.authority.keys:
        try:
            kid = VerifyKey(b64d(ak.key)).kid
        except (InvalidInput, ConfigError) as exc:
            raise RosterInvalid(f"authority key {ak.kid} of {ak.holder} is not an Ed25519 key") from exc
        if kid != ak.kid:
            raise RosterInvalid(f"authority key of {ak.holder}: kid {ak.kid} is not its key's ({kid})")
    owner: dict[tuple[str, str], str] = {}
    for node in doc.nodes:
        for key in node.keys:
            try:
                kid = key_kid(key.use, b64d(key.key))
            except (InvalidInput, ConfigError) as exc:
                raise RosterInvalid(f"{node.id}: {key.use} key {key.kid} does not parse: {exc.detail}") from exc
            if kid != key.kid:
                raise RosterInvalid(f"{node.id}: {key.use} key {key.kid} has kid {kid}")
            if key.use == "encryption":
                try:
                    EncryptionKey(b64d(key.key)).check_order(f"{node.id}: encryption key {kid}")
                except SmallOrderKey as exc:
                    raise RosterInvalid(exc.detail) from exc
            other = owner.setdefault((key.use, kid), node.id)
            if other != node.id:
                raise RosterInvalid(f"{node.id}: {key.use} key {kid} is also a key of {other}")


def check_successor(held: RosterV2, new: RosterV2) -> None:
    """The history rules from version N to N+1 (RosterInvalid): nodes and keys are never dropped,
    a key keeps its use, bytes and start, states only move forward, a revoked node stays revoked."""
    if new.federation != held.federation:
        raise RosterInvalid(f"version {new.version} names another federation")
    if parse_timestamp(new.issued) < parse_timestamp(held.issued):
        raise RosterInvalid(f"version {new.version} is issued before version {held.version}")
    nodes = {n.id: n for n in new.nodes}
    for old in held.nodes:
        node = nodes.get(old.id)
        if node is None:
            raise RosterInvalid(f"version {new.version} drops node {old.id}")
        if node.since != (old.since if node.status == old.status else new.version):
            raise RosterInvalid(f"{old.id}: since changes with the status, to the version that sets it")
        if old.status == "revoked" and node.status != "revoked":
            raise RosterInvalid(f"{old.id} was revoked and stays revoked")
        _check_key_history(old, node, held.version, new.version)
    listed = {o.id for o in held.nodes}
    for node in new.nodes:
        if node.id in listed:
            continue
        if (node.status, node.since) != ("active", new.version):
            raise RosterInvalid(f"{node.id}: a new node is active from version {new.version}")
        for key in node.keys:  # as a listed node's new keys (6a.5): none has a history before it joined
            if (key.valid_from, key.valid_until, key.state) != (new.version, None, "active"):
                raise RosterInvalid(f"{node.id}: a new node's {key.use} key is active from version {new.version}")


def _check_key_history(old: RosterNodeV2, node: RosterNodeV2, held: int, version: int) -> None:
    keys = {(k.use, k.kid): k for k in node.keys}
    for before in old.keys:
        after = keys.pop((before.use, before.kid), None)
        if after is None:
            raise RosterInvalid(f"{old.id}: version {version} drops {before.use} key {before.kid}")
        where = f"{old.id}: {before.use} key {before.kid}"
        if (after.key, after.valid_from) != (before.key, before.valid_from):
            raise RosterInvalid(f"{where} changed its bytes or valid_from")
        if STATE_ORDER[after.state] < STATE_ORDER[before.state]:
            raise RosterInvalid(f"{where} went back from {before.state} to {after.state}")
        if after.state == "compromised":  # may be traced back further, never extended
            end = before.valid_until if before.valid_until is not None else held
            if after.valid_until is None or after.valid_until > end:
                raise RosterInvalid(f"{where}: a compromise cannot extend the key's validity")
        elif before.valid_until is None:
            if after.valid_until not in (None, held):
                raise RosterInvalid(f"{where}: a key that stops being current ends with version {held}")
        elif after.valid_until != before.valid_until:
            raise RosterInvalid(f"{where} changed its valid_until")
    for key in keys.values():
        if key.valid_from != version:
            raise RosterInvalid(f"{old.id}: a new {key.use} key is valid from version {version}")
        if key.state != "active":  # a rotation lists the new key as the one to use (6a.13)
            raise RosterInvalid(f"{old.id}: a new {key.use} key of a listed node is active, not {key.state}")


@dataclass(frozen=True)
class TrustedRoster:
    """A roster v2 version this node trusts, indexed for the look-ups of its wiring."""

    signed: SignedRosterV2
    hash: str
    _nodes: dict[str, RosterNodeV2] = field(default_factory=dict, repr=False)
    _pins: dict[str, RosterNodeV2] = field(default_factory=dict, repr=False)
    _by_kid: dict[str, list[tuple[RosterNodeV2, NodeKey]]] = field(default_factory=dict, repr=False)

    @classmethod
    def _index(cls, signed: SignedRosterV2) -> TrustedRoster:
        trusted = cls(signed, roster_hash(signed.roster))
        for node in signed.roster.nodes:
            trusted._nodes[node.id] = node
            for key in node.keys:
                trusted._by_kid.setdefault(key.kid, []).append((node, key))
                if node.status == "active" and key.use == "tls" and key.state in ("active", "retiring"):
                    trusted._pins[spki_pin(b64d(key.key))] = node
        return trusted

    @classmethod
    def bootstrap(cls, signed: SignedRosterV2, now: dt.datetime) -> TrustedRoster:
        """Trust a version given out of band (the first a node installs): its own authority's
        threshold and the document's rules, unexpired. Compare its `hash` out of band too."""
        trusted = cls.restore(signed)
        check_issued(signed.roster, now)
        if trusted.expired(now):
            raise RosterExpired(f"roster version {trusted.version} expired at {signed.roster.expires}")
        return trusted

    @classmethod
    def restore(cls, signed: SignedRosterV2) -> TrustedRoster:
        """The version this node persisted, read back at start-up: checked as `bootstrap` does,
        but kept even if it has expired since (the node then refuses traffic until a fresh one)."""
        check_document(signed.roster)
        check_threshold(signed, signed.roster.authority, "its own authority")
        return cls._index(signed)

    def accept(self, offered: SignedRosterV2) -> TrustedRoster:
        """One step of the chain (6a.4, rules 1 to 8; the clock's, expiry and rule 9, are
        `accept_chain`'s): the version to hold after `offered`."""
        held, doc = self.signed.roster, offered.roster
        if doc.version < held.version:
            raise RosterRollback(f"roster version {doc.version} is older than the held version {held.version}")
        if doc.version == held.version:
            if roster_hash(doc) == self.hash:
                return self
            check_threshold(offered, held.authority, "the held version's authority")
            raise RosterEquivocation(
                f"roster version {doc.version}: hash {roster_hash(doc)} signed by the authority, "
                f"but {self.hash} is held"
            )
        if doc.version > held.version + 1:
            raise RosterGap(held.version, doc.version)
        if doc.previous != self.hash:
            raise RosterChainBroken(f"roster version {doc.version} follows {doc.previous}, not the held {self.hash}")
        check_threshold(offered, held.authority, "the old authority")
        check_document(doc)
        check_threshold(offered, doc.authority, "the new authority")
        check_successor(held, doc)
        return TrustedRoster._index(offered)

    # -- the version -----------------------------------------------------------------------

    @property
    def roster(self) -> RosterV2:
        return self.signed.roster

    @property
    def version(self) -> int:
        return self.signed.roster.version

    @property
    def expires_at(self) -> dt.datetime:
        return parse_timestamp(self.signed.roster.expires)

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.expires_at

    # -- nodes and keys --------------------------------------------------------------------

    def node(self, node_id: str) -> RosterNodeV2:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise UnknownPeer(f"node {node_id!r} is not in roster version {self.version}") from None

    def node_ids(self, status: NodeStatus = "active") -> list[NodeId]:
        return [NodeId(n.id) for n in self.roster.nodes if n.status == status]

    def current_key(self, node_id: str, use: KeyUse) -> NodeKey:
        """The key to use now with an active node: wrap for it, pin it, expect its signatures."""
        node = self.node(node_id)
        if node.status != "active":
            raise UnknownPeer(f"node {node_id!r} is {node.status} since roster version {node.since}")
        return next(k for k in node.keys if k.use == use and k.state == "active")

    def keys_at(self, node_id: str, use: KeyUse, version: int) -> list[NodeKey]:
        """The node's keys of `use` that were valid in roster version `version` (a newer version
        than the held one is a RosterGap: fetch it first)."""
        if version > self.version:
            raise RosterGap(self.version, version)
        return [k for k in self.node(node_id).keys if k.use == use and k.valid_in(version)]

    def verify_key(self, node_id: str, kid: str, made_under: int, received_under: int) -> VerifyKey:
        """The key that checks a signature by `node_id` with `kid` on an item made under roster
        version `made_under` and received while `received_under` was held (InvalidEnvelope if none).

        Old keys still verify what they signed while valid; a key marked compromised invalidates
        only what was received after the last version it was valid in; a node suspended or
        revoked since version s signs nothing made under s or later.
        """
        node = self.node(node_id)
        if node.status != "active" and made_under >= node.since:
            raise InvalidEnvelope(f"{node_id} is {node.status} since roster version {node.since}")
        key = next((k for k in self.keys_at(node_id, "signing", made_under) if k.kid == kid), None)
        if key is None:
            raise InvalidEnvelope(f"{kid} is not a signing key of {node_id} in roster version {made_under}")
        if self.compromised(kid, received_under):
            raise InvalidEnvelope(
                f"signing key {kid} of {node_id} is compromised as of roster version {received_under}"
            )
        return VerifyKey(b64d(key.key))

    def compromised(self, kid: str, as_of: int) -> bool:
        """Whether a node key `kid` is marked compromised for roster version `as_of` and later."""
        return any(
            k.state == "compromised" and k.valid_until is not None and as_of > k.valid_until
            for _, k in self._by_kid.get(kid, [])
        )

    def node_by_pin(self, pin: str) -> RosterNodeV2:
        """The active node whose active or retiring TLS key has `pin` (the handshake's check)."""
        try:
            return self._pins[pin]
        except KeyError:
            raise UnknownPeer("the TLS certificate is not an accepted key of an active node") from None

    def accepted_pins(self) -> dict[str, NodeId]:
        return {pin: NodeId(node.id) for pin, node in self._pins.items()}

    def tls_certs_pem(self, node_id: str | None = None) -> str:
        """PEM of the certificates to trust in TLS: every accepted one, or one node's."""
        certs = [
            cert_pem(b64d(k.key))
            for n in self.roster.nodes
            if n.status == "active" and node_id in (None, n.id)
            for k in n.keys
            if k.use == "tls" and k.state in ("active", "retiring")
        ]
        return "".join(certs)


def check_issued(doc: RosterV2, now: dt.datetime) -> None:
    """None unless `doc` is issued more than ISSUED_AHEAD after `now` (RosterInvalid): a version from
    the future would be held, and no version proposed before that date could follow it."""
    if parse_timestamp(doc.issued) > now + ISSUED_AHEAD:
        raise RosterInvalid(
            f"roster version {doc.version} is issued at {doc.issued}, "
            f"more than {ISSUED_AHEAD.seconds // 60} minutes after this node's clock"
        )


def accept_chain(held: TrustedRoster, chain: Sequence[SignedRosterV2], now: dt.datetime) -> TrustedRoster:
    """The version to hold after checking `chain` (held + 1, held + 2, ...) in order; `held` if it
    adds nothing new. Intermediate versions may have expired; the last one must not have; none that
    is new may be issued well after `now` (`check_issued`). The versions of `chain` newer than `held`
    are the ones to persist (peers that are behind fetch them)."""
    if len(chain) > MAX_CHAIN:
        raise RosterRefused(f"at most {MAX_CHAIN} roster versions are checked at once, not {len(chain)}")
    trusted = held
    for offered in chain:
        taken = trusted.accept(offered)
        if taken is not trusted:
            check_issued(taken.roster, now)
        trusted = taken
    if trusted.version > held.version and trusted.expired(now):
        raise RosterExpired(f"roster version {trusted.version} expired at {trusted.roster.expires}")
    return trusted


def accept_first(first: TrustedRoster, chain: Sequence[SignedRosterV2], now: dt.datetime) -> TrustedRoster:
    """The version a node that held none takes from a chain given out of band: `first` is the
    chain's first version, already checked as a first version is (`TrustedRoster.restore`, or a
    migration's checks), the rest of `chain` follows it in order, and the last must not have expired."""
    check_issued(first.roster, now)
    trusted = accept_chain(first, chain, now)
    if trusted.expired(now):
        raise RosterExpired(f"roster version {trusted.version} expired at {trusted.roster.expires}")
    return trusted


def key_entry(
    use: KeyUse, key: bytes, valid_from: int, state: KeyState = "active", valid_until: int | None = None
) -> NodeKey:
    """A node key entry with its kid: `key` is the raw public key, or for tls the certificate (PEM or DER)."""
    if use == "tls" and key.lstrip().startswith(b"-----"):
        key = _pem_body(key)
    try:
        return NodeKey.model_validate(
            {
                "use": use,
                "kid": key_kid(use, key),
                "key": b64e(key),
                "state": state,
                "valid_from": valid_from,
                "valid_until": valid_until,
            }
        )
    except ValidationError as exc:
        raise InvalidInput(f"node key does not match the schema: {first_error(exc)}") from exc


def _pem_body(pem: bytes) -> bytes:
    """The DER inside one PEM block (its armour lines dropped); spki_pin checks it is a certificate."""
    lines = [line.strip() for line in pem.strip().splitlines()]
    try:
        return base64.b64decode(b"".join(line for line in lines if not line.startswith(b"-----")), validate=True)
    except binascii.Error as exc:
        raise InvalidInput("not a PEM certificate") from exc


def equivocating_version(
    exc: Exception, held: TrustedRoster | None, offered: Sequence[SignedRosterV2]
) -> SignedRosterV2 | None:
    """In an equivocation refused, the other version offered with the held one's number."""
    if not isinstance(exc, RosterEquivocation) or held is None:
        return None
    return next((s for s in offered if s.roster.version == held.version and roster_hash(s.roster) != held.hash), None)


def newer_versions(chain: list[SignedRosterV2], than: int) -> list[SignedRosterV2]:
    """The versions of an accepted chain above `than`, each once: its first copy, the one whose
    signatures `TrustedRoster.accept` checked. (A later copy of the same document is taken
    without a check, as nothing changes, so its signatures may not count: it is never kept.)"""
    first: dict[int, SignedRosterV2] = {}
    for signed in chain:
        if signed.roster.version > than:
            first.setdefault(signed.roster.version, signed)
    return list(first.values())
