"""The one exception hierarchy of exchange; the web layer maps it to problem+json.

ExchangeError
 ├── ConfigError            bad or missing configuration, key files, roster files
 │    ├── SchemaOutdated    the database is on an older schema: run `exchange db upgrade`
 │    ├── StoredRosterInvalid  the roster chain in the node's database does not verify (edited by hand?)
 │    └── SuiteUnsupported  this node's cryptography cannot do the ML-KEM-768 + X25519 HPKE suite
 ├── InvalidInput           a request or file that does not parse or fails validation
 │    ├── WeakPassword      a password that breaks the length rule
 │    ├── BodyTooLarge      a request body larger than its route takes (413)
 │    ├── IdempotencyKeyReused  an Idempotency-Key sent again with a different request
 │    ├── ProofError        a Merkle inclusion or consistency proof that does not verify
 │    ├── SmallOrderKey     an X25519 public key of small order (RFC 7748, 6.1): nothing can be sealed for it
 │    ├── EpochInvalid      a channel epoch record or history grant that breaks a rule (docs/protocol.md, 15)
 │    ├── HandoverRefused   a channel handover that breaks a rule (docs/protocol.md, 7.5)
 │    ├── OwnerRevoked      a new channel event signed by an owner that the held roster revokes (7.5)
 │    ├── RosterRefused     a roster v2 version that this node must not install (docs/protocol.md, 6a)
 │    │    ├── RosterInvalid       a version that breaks a rule of its own, or its predecessor's history
 │    │    ├── RosterThreshold     fewer than k valid signatures from the old or the new authority
 │    │    ├── RosterGap           newer than the held version + 1: fetch the versions between, in order
 │    │    ├── RosterRollback      older than the held version
 │    │    ├── RosterEquivocation  the held version's number with another hash, signed by its authority
 │    │    ├── RosterChainBroken   `previous` is not the hash of the held version
 │    │    └── RosterExpired       the newest version offered is past its `expires`
 │    └── InvalidEnvelope   an envelope that breaks a protocol rule
 │         ├── BadSignature     a signature that does not verify
 │         ├── DecryptionFailed one message for every decryption failure (no oracle)
 │         ├── Equivocation     one author, one (channel, seq), two different bulletins
 │         ├── StaleEpoch       a v2 envelope whose epoch is not the current one of the state it cites
 │         └── EnvelopeRejected a partner's batch in which an item broke a rule; nothing was stored
 ├── Unauthorized           no or unknown credentials
 ├── RateLimited            too many requests from one token, partner node or address: wait Retry-After (429)
 │    └── TooManyFailures   sign-in refused unchecked: too many recent failures here; wait Retry-After (429)
 ├── RequestTimeout         a request whose body did not arrive within the node's timeouts (408)
 ├── Forbidden              authenticated, but without the right
 │    ├── UnknownPeer       a TLS peer or signer that is not in the roster
 │    └── NotAMember        a node or user outside the channel
 ├── NotFound               no such bulletin, channel or user
 ├── Conflict               a request that clashes with stored state (already exists)
 ├── Unavailable            this node is stopping or cannot serve now: retry later (503)
 │    ├── HeldRosterExpired  this node's own roster version has expired: no posts, no federation traffic
 │    ├── RosterBehind      a partner's request names a newer roster version: pulled first, retry (6a.13)
 │    └── LeaseLost         another worker of this node took a partner's outbox lease (workers)
 ├── AuditTampered          the audit log does not verify
 │    ├── BadEntry          the first entry that breaks the log
 │    └── SplitView         two signed histories that do not extend each other
 ├── BulletinUnverified     a stored bulletin that no longer verifies against its signed envelope: not shown
 └── PeerError              a partner node answered with an error or not at all
      ├── AnswersFull       this node holds as much of partners' answers as it may at once
      ├── PeerRefused       a partner refused a request for good (4xx): do not retry it as is
      ├── StateUnavailable  a cited channel state is unknown and its owner cannot supply it
      └── ApiError          (CLI) the node's client API refused a request

`exchange.http.problem.STATUS` gives each of them its HTTP status; the CLI prints any of them as
one `error:` line (`exchange.cli.output`).
"""

from __future__ import annotations

from typing import Any


class ExchangeError(Exception):
    """Root of every error that exchange raises on purpose."""

    title = "Exchange error"

    def __init__(self, detail: str, *, audited: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # What the audit log records of a refusal (`request.rejected`'s reason): the detail, unless
        # it quotes what must not go into the log (an indicator's value is bulletin content).
        self.audited = detail if audited is None else audited

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its class, message and attributes, whatever its `__init__` takes: an error
        raised in a crypto worker or an audit range process crosses back whole. (Exception's own
        reduction calls the class with `args`, the message alone, which fails for a class whose
        `__init__` takes other arguments: PeerRefused, ApiError, BadEntry, RosterGap, EnvelopeRejected.)"""
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[ExchangeError], args: tuple[Any, ...], state: dict[str, Any]) -> ExchangeError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(ExchangeError):
    title = "Configuration error"


class SchemaOutdated(ConfigError):
    """The database was written by an older release; `exchange db upgrade` brings it up to date."""

    title = "Database schema outdated"


class StoredRosterInvalid(ConfigError):
    """A roster version stored in the node's database does not follow the one before it, or does
    not verify: the database was edited, and the node does not run on (or verify with) its keys."""


class SuiteUnsupported(ConfigError):
    """This node's `cryptography` (or its backend) cannot do HPKE with ML-KEM-768 + X25519."""

    title = "Suite unsupported"


class InvalidInput(ExchangeError):
    title = "Invalid input"


class WeakPassword(InvalidInput):
    """A password that breaks the length rule."""

    title = "Weak password"


class BodyTooLarge(InvalidInput):
    """A request body larger than what its route's largest legitimate request needs (HTTP 413)."""

    title = "Request body too large"


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key that this user already sent, within its retention, with another request."""

    title = "Idempotency key reused"


class ProofError(InvalidInput):
    """A Merkle inclusion or consistency proof failed verification."""

    title = "Proof does not verify"


class SmallOrderKey(InvalidInput):
    """An X25519 public key of small order: every shared secret with it is zero (RFC 7748, section
    6.1), so no content key can be wrapped for it; a roster or join request must not list one."""

    title = "Small-order key"


class EpochInvalid(InvalidInput):
    """A channel epoch record or history grant that breaks a rule (docs/protocol.md, 15.6 and 15.7)."""

    title = "Invalid epoch"


class HandoverRefused(InvalidInput):
    """A channel handover that breaks a rule of docs/protocol.md 7.5: its owner is not revoked, its
    signer is not the successor, or it does not continue the log it claims to."""

    title = "Handover refused"


class OwnerRevoked(InvalidInput):
    """A channel event this node does not hold yet, signed by an owner that its roster revokes, and
    not followed by a handover (docs/protocol.md 7.5)."""

    title = "Channel owner revoked"


class RosterRefused(InvalidInput):
    """A roster v2 version that this node must not install; what it held stays (docs/protocol.md, 6a)."""

    title = "Roster refused"


class RosterInvalid(RosterRefused):
    """A version that breaks a rule of the document itself, or the history of the version before it."""

    title = "Roster invalid"


class RosterThreshold(RosterRefused):
    """Fewer than k valid signatures from the old or the new authority (each key counted once)."""

    title = "Roster not signed by enough authority keys"


class RosterGap(RosterRefused):
    """A version newer than the held one + 1: fetch the versions between and check them in order."""

    title = "Roster versions missing"

    def __init__(self, held: int, offered: int) -> None:
        super().__init__(f"roster version {offered} offered, {held} held: fetch versions {held + 1} to {offered}")
        self.held = held
        self.offered = offered


class RosterRollback(RosterRefused):
    """A version older than the held one: a node never goes back."""

    title = "Roster rollback"


class RosterEquivocation(RosterRefused):
    """The held version's number with another hash, signed by the authority: evidence to audit."""

    title = "Roster equivocation"


class RosterChainBroken(RosterRefused):
    """A version whose `previous` is not the hash of the held version."""

    title = "Roster chain broken"


class RosterExpired(RosterRefused):
    """The newest version offered is past its `expires`."""

    title = "Roster expired"


class InvalidEnvelope(InvalidInput):
    title = "Invalid envelope"


class BadSignature(InvalidEnvelope):
    title = "Bad signature"


class DecryptionFailed(InvalidEnvelope):
    """Raised for every decryption failure, whatever the cause, so no oracle is offered."""

    title = "Decryption failed"

    def __init__(self, detail: str = "the envelope could not be decrypted") -> None:
        super().__init__(detail)


class Equivocation(InvalidEnvelope):
    title = "Equivocation"


class StaleEpoch(InvalidEnvelope):
    """A v2 envelope whose epoch is not the current epoch of the state it cites (docs/protocol.md, 15.8)."""

    title = "Stale epoch"


class EnvelopeRejected(InvalidEnvelope):
    """A batch from a peer in which at least one item broke a rule: none of its envelopes and
    receipts was stored (its channel events that verified are kept: docs/protocol.md, section 9)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        first = errors[0]
        super().__init__(f"{first['item']} rejected: {first['detail']}")
        self.errors = errors


class Unauthorized(ExchangeError):
    title = "Unauthorized"


class RateLimited(ExchangeError):
    """Too many requests from one token, partner node or client address (HTTP 429): the client
    may try again after `retry_after` seconds, which the answer's `Retry-After` header carries."""

    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


class TooManyFailures(RateLimited):
    """Sign-in refused without a password check: too many recent failures from this address (HTTP 429).

    Not an Unauthorized: the console answers that with a sign-in redirect, this with a wait.
    """

    title = "Too many failed sign-ins"


class RequestTimeout(ExchangeError):
    """A request whose body did not arrive within the node's body or read timeout (HTTP 408)."""

    title = "Request timeout"


class Forbidden(ExchangeError):
    title = "Forbidden"


class UnknownPeer(Forbidden):
    title = "Unknown peer"


class NotAMember(Forbidden):
    title = "Not a member"


class NotFound(ExchangeError):
    title = "Not found"


class Conflict(ExchangeError):
    title = "Conflict"


class AuditTampered(ExchangeError):
    title = "Audit log tampered"


class BadEntry(AuditTampered):
    """The audit log fails verification at entry `index`, the first one known to be bad."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(f"entry {index}: {detail}")
        self.index = index


class SplitView(AuditTampered):
    """A log showed a checkpoint that does not extend one this node had witnessed."""

    title = "Split view"


class BulletinUnverified(ExchangeError):
    """A stored bulletin fails the check made each time it is shown (signature, id, ciphertext hash,
    stored columns and content against its signed envelope): changed in the database, not shown."""

    title = "Bulletin does not verify"


class PeerError(ExchangeError):
    title = "Peer error"


class AnswersFull(PeerError):
    """A partner's answer would take this node past what it holds of all partners' answers at
    once (exchange.node.peers.Answers) while its own share is within bounds: this node is busy,
    the partner did nothing wrong. Asked again after the base delay, without counting as the
    partner's failure (its backoff is left as it was)."""

    title = "Busy reading partners' answers"


class PeerRefused(PeerError):
    """A partner answered 4xx: the request, as it is, will never be accepted."""

    title = "Refused by peer"

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


class StateUnavailable(PeerError):
    """Retryable: a sender should try again once the channel's owner is reachable."""

    title = "Channel state unavailable"


class ApiError(PeerError):
    """The CLI's node refused a request; the detail is its problem+json message and the status."""

    title = "Request refused"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status


class Unavailable(ExchangeError):
    """Retryable: the node is stopping, or cannot serve the request just now."""

    title = "Unavailable"


class RosterBehind(Unavailable):
    """A partner's federation request names a roster version newer than this node's: this node
    judges none of its items before it holds that version (it pulls it now); the partner retries
    (docs/protocol.md, 6a.13)."""

    title = "Roster version behind the partner's"


class LeaseLost(Unavailable):
    """Another worker of this node took a partner's outbox lease: this one must not record anything
    about that partner (docs/operations.md, "Workers")."""

    title = "Lease lost"


class HeldRosterExpired(Unavailable):
    """The roster version this node holds is past its `expires`: it takes no posts and no federation
    traffic (but a fresh roster version) until one is imported (docs/operations.md, "Roster expiry")."""

    title = "Roster expired on this node"
