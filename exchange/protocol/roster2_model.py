"""Wire models of roster v2 (docs/protocol.md, 6a): versioned, threshold-signed, with key histories.

Strict, frozen and closed like exchange.model. The validators here are the document's own rules
that need no cryptography; exchange.protocol.rosterchain checks keys, certificates and signatures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from exchange.crypto.encoding import MIN_VALUES, canonical_json
from exchange.model import (
    MAX_ENDPOINT,
    MAX_KEY_TEXT,
    MAX_ROSTER_NODES,
    AgencyKind,
    B64Signature,
    Hex64,
    Kid,
    NodeIdStr,
    Short,
    Timestamp,
    Version2,
)

KeyUse = Literal["signing", "encryption", "tls"]
KEY_USES: tuple[KeyUse, ...] = ("signing", "encryption", "tls")
KeyState = Literal["active", "retiring", "verify-only", "compromised"]
NodeStatus = Literal["active", "suspended", "revoked"]

MAX_SAFE_INTEGER = (1 << 53) - 1  # JCS writes no larger integer (docs/protocol.md, 2.4)
MAX_AUTHORITY_KEYS = 16  # holders of the federation authority (the sample has 3)
MAX_ROSTER_SIGNATURES = 2 * MAX_AUTHORITY_KEYS  # an authority rotation needs the old and the new holders
MAX_NODE_KEYS = 64  # a node's keys, old ones included: 20 years of yearly rotation of 3 uses, and more
# A TLS key is base64url of the certificate's DER, and a node runs on a v1 view that holds it as
# PEM, of at most MAX_TLS_CERT (8,000) characters: padded base64 in lines of 64 between the BEGIN
# and END lines (54 characters with their newlines). 5,865 bytes of DER are 7,820 characters of
# base64url and 7,997 of PEM; 5,866 bytes are 7,822 and 8,001. So no listed key is beyond the v1 limit.
MAX_TLS_KEY_TEXT = 7820
MAX_ROSTER_BYTES = 16 * 1024 * 1024  # a signed roster v2 as bytes; 1,000 nodes with 5 keys each need about 6 MB
# A roster's JSON value budget (`strict_loads`): one value per this many bytes. A roster is dense
# (its key entries: about one value per 18 bytes in canonical form), above the one per 20 bytes a
# request body gets, so a roster of 200 nodes (220 KB) was refused as too many values.
ROSTER_BYTES_PER_VALUE = 8


def roster_values(size: int) -> int:
    """The value budget of a roster document (or a chain of them) of `size` bytes."""
    return max(MIN_VALUES, size // ROSTER_BYTES_PER_VALUE)


Version = Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]
B64Text = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=MAX_TLS_KEY_TEXT)]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
Endpoint = Annotated[str, StringConstraints(max_length=MAX_ENDPOINT, pattern=r"^https://[^\s/]+(:[0-9]{1,5})?$")]

_WIRE = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_timestamp(value: str) -> dt.datetime:
    """The instant a wire Timestamp (docs/protocol.md, 2.6) names, in UTC."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class AuthorityKey(BaseModel):
    """One holder's Ed25519 key of the federation authority."""

    model_config = _WIRE
    kid: Kid
    key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=MAX_KEY_TEXT)]
    holder: Short


class Authority(BaseModel):
    """k of n keys: a roster version needs `threshold` signatures from distinct keys of `keys`."""

    model_config = _WIRE
    threshold: Annotated[int, Field(ge=1, le=MAX_AUTHORITY_KEYS)]
    keys: Annotated[list[AuthorityKey], Field(min_length=1, max_length=MAX_AUTHORITY_KEYS)]

    @model_validator(mode="after")
    def _k_of_n(self) -> Authority:
        kids = [k.kid for k in self.keys]
        if len(kids) != len(set(kids)):
            raise ValueError("authority key ids must be unique")
        if self.threshold > len(kids):
            raise ValueError(f"a threshold of {self.threshold} needs at least as many keys, not {len(kids)}")
        return self


class NodeKey(BaseModel):
    """One key of a node for one use, with its state and the roster versions it is valid in."""

    model_config = _WIRE
    use: KeyUse
    kid: Kid
    key: B64Text  # raw Ed25519 or X25519 public key; for tls the certificate's DER
    state: KeyState
    valid_from: Version
    valid_until: Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)] | None  # 0: compromised from the start

    @model_validator(mode="after")
    def _state_and_interval(self) -> NodeKey:
        if self.use != "tls" and len(self.key) > MAX_KEY_TEXT:
            raise ValueError(f"a {self.use} key has at most {MAX_KEY_TEXT} characters")
        if self.state in ("active", "retiring"):
            if self.valid_until is not None:
                raise ValueError(f"an {self.state} key has no valid_until")
        elif self.valid_until is None:
            raise ValueError(f"a {self.state} key needs valid_until")
        elif self.valid_until < self.valid_from - (1 if self.state == "compromised" else 0):
            raise ValueError("valid_until is before valid_from")
        return self

    def valid_in(self, version: int) -> bool:
        """Whether roster version `version` lies in the key's validity."""
        return self.valid_from <= version and (self.valid_until is None or version <= self.valid_until)


class RosterNodeV2(BaseModel):
    """One member node: who it is, its status since a version, and every key it has had."""

    model_config = _WIRE
    id: NodeIdStr
    name: Short
    country: Country
    agency: AgencyKind
    endpoint: Endpoint
    status: NodeStatus
    since: Version
    keys: Annotated[list[NodeKey], Field(min_length=1, max_length=MAX_NODE_KEYS)]

    @field_validator("keys")
    @classmethod
    def _one_active_per_use(cls, value: list[NodeKey]) -> list[NodeKey]:
        seen = [(k.use, k.kid) for k in value]
        if len(seen) != len(set(seen)):
            raise ValueError("a node lists a key twice")
        for use in KEY_USES:
            if sum(1 for k in value if k.use == use and k.state == "active") > 1:
                raise ValueError(f"a node has at most one active {use} key")
        return value

    @model_validator(mode="after")
    def _active_node_has_every_key(self) -> RosterNodeV2:
        if self.status == "active":
            for use in KEY_USES:
                if not any(k.use == use and k.state == "active" for k in self.keys):
                    raise ValueError(f"an active node needs an active {use} key")
        return self


class RosterV2(BaseModel):
    """The signed document of one roster version."""

    model_config = _WIRE
    v: Version2
    federation: Short
    version: Version
    issued: Timestamp
    expires: Timestamp
    previous: Hex64 | None
    authority: Authority
    nodes: Annotated[list[RosterNodeV2], Field(min_length=1, max_length=MAX_ROSTER_NODES)]

    @field_validator("nodes")
    @classmethod
    def _unique_ids(cls, value: list[RosterNodeV2]) -> list[RosterNodeV2]:
        ids = [n.id for n in value]
        if len(ids) != len(set(ids)):
            raise ValueError("node ids must be unique")
        return value

    @model_validator(mode="after")
    def _within_its_version(self) -> RosterV2:
        if (self.previous is None) != (self.version == 1):
            raise ValueError("previous is null in version 1 and only there")
        if parse_timestamp(self.expires) <= parse_timestamp(self.issued):
            raise ValueError("expires must be after issued")
        for node in self.nodes:
            if node.since > self.version:
                raise ValueError(f"{node.id}: since {node.since} is after version {self.version}")
            for key in node.keys:
                if key.valid_from > self.version:
                    raise ValueError(f"{node.id}: a key valid from {key.valid_from}, after version {self.version}")
                if key.valid_until is not None and key.valid_until >= self.version:
                    raise ValueError(f"{node.id}: a {key.state} key must end before version {self.version}")
        return self

    @cached_property
    def canonical(self) -> bytes:
        """JCS of the document: what is signed (after the domain prefix) and hashed."""
        return canonical_json(self.model_dump(mode="json"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> RosterV2:
        """A copy that computes its own `canonical` (pydantic would copy the cached one)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("canonical", None)
        return copied


class RosterSignature(BaseModel):
    """One authority holder's signature over a roster version."""

    model_config = _WIRE
    kid: Kid
    signature: B64Signature


class SignedRosterV2(BaseModel):
    """A roster version and the authority signatures over it (old and new holders alike)."""

    model_config = _WIRE
    roster: RosterV2
    signatures: Annotated[list[RosterSignature], Field(min_length=1, max_length=MAX_ROSTER_SIGNATURES)]


# -- join requests (docs/protocol.md, 6a.10) ------------------------------------------------------


class JoinKey(BaseModel):
    """One public key a joining node asks to be listed with."""

    model_config = _WIRE
    use: KeyUse
    kid: Kid
    key: B64Text  # as in a roster key entry: raw public key, for tls the certificate's DER


class JoinDetails(BaseModel):
    """Who a joining administration says it is: checked before its keys are made (`exchange node
    init`), so that a detail refused does not leave keys behind that no request names."""

    model_config = _WIRE
    federation: Short
    id: NodeIdStr
    name: Short
    country: Country
    agency: AgencyKind
    endpoint: Endpoint


class JoinRequestBody(JoinDetails):
    """What an administration asks the authority to list: who it is and its three public keys."""

    v: Version2
    made: Timestamp
    keys: Annotated[list[JoinKey], Field(min_length=3, max_length=3)]

    @field_validator("keys")
    @classmethod
    def _one_per_use(cls, value: list[JoinKey]) -> list[JoinKey]:
        if sorted(k.use for k in value) != sorted(KEY_USES):
            raise ValueError("a join request lists one signing, one encryption and one tls key")
        for k in value:
            if k.use != "tls" and len(k.key) > MAX_KEY_TEXT:
                raise ValueError(f"a {k.use} key has at most {MAX_KEY_TEXT} characters")
        return value

    @cached_property
    def canonical(self) -> bytes:
        """JCS of the request: what its signature covers (after the domain prefix) and its hash."""
        return canonical_json(self.model_dump(mode="json"))


class JoinRequest(BaseModel):
    """A join request signed by the signing key it lists (proof that the node holds that key)."""

    model_config = _WIRE
    request: JoinRequestBody
    signature: B64Signature


class RosterSignatureFile(BaseModel):
    """One holder's signature over a proposed version, as `exchange roster sign` writes it: the
    signature (6a.2) and the version and hash it is for, which `combine` matches to the proposal."""

    model_config = _WIRE
    v: Version2
    federation: Short
    version: Version
    hash: Hex64
    kid: Kid
    signature: B64Signature
