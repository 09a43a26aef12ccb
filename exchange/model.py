"""Pydantic models of the domain and the wire: bulletins, envelopes, receipts, rosters, channels.

Wire models are strict (no coercion), frozen, and refuse unknown fields, so what is signed is
exactly what was parsed.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal, NewType, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from exchange.crypto.encoding import canonical_json

NodeId = NewType("NodeId", str)
ChannelId = NewType("ChannelId", str)
BulletinId = NewType("BulletinId", str)

AgencyKind = Literal["customs", "aviation-security", "police", "international"]
AGENCY_KINDS: tuple[AgencyKind, ...] = ("customs", "aviation-security", "police", "international")
Tlp = Literal["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]
BulletinKind = Literal["alert", "threat-bulletin", "seizure-report", "feedback", "request-for-information"]
Role = Literal["contact-point", "auditor", "admin"]  # a local user's role at its node
ROLES: tuple[str, ...] = get_args(Role)

BULLETIN_KINDS: tuple[BulletinKind, ...] = (
    "alert",
    "threat-bulletin",
    "seizure-report",
    "feedback",
    "request-for-information",
)
Right = Literal["read", "post", "admin"]

NodeIdStr = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
ChannelIdStr = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Kid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
B64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=16_000_000)]
Timestamp = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")]
IsoDate = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")]
Short = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]

_WIRE = ConfigDict(extra="forbid", frozen=True, strict=True)


class Handling(BaseModel):
    """TLP 2.0 label and the no-onward-sharing flag."""

    model_config = _WIRE
    tlp: Tlp
    no_onward_sharing: bool = False


class Indicators(BaseModel):
    """Structured indicators that customs and aviation analysts search and match on."""

    model_config = _WIRE
    air_waybills: list[Annotated[str, StringConstraints(pattern=r"^\d{3}-\d{8}$")]] = []
    hs_codes: list[Annotated[str, StringConstraints(pattern=r"^\d{4}(\.?\d{2}){0,3}$")]] = []
    airports: list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]] = []
    flights: list[Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2}[A-Z]?\d{1,4}[A-Z]?$")]] = []
    companies: list[Short] = []
    risk_indicators: list[Short] = []


MAX_ATTACHMENTS = 10
MAX_ATTACHMENT_BYTES = 2 * 1024 * 1024  # all attachments of one bulletin together, decoded


class Attachment(BaseModel):
    """A file sent with a bulletin, encrypted with it. The name is for display only."""

    model_config = _WIRE
    name: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^/\\\x00-\x1f]+$")]
    media_type: Annotated[
        str, StringConstraints(max_length=100, pattern=r"^[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*$")
    ]
    data: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=(MAX_ATTACHMENT_BYTES * 4) // 3 + 4)]

    @property
    def size(self) -> int:
        return len(self.data) * 3 // 4


class Bulletin(BaseModel):
    """What a contact point writes. Handling travels in the signed header, the rest is encrypted."""

    model_config = _WIRE
    kind: BulletinKind
    handling: Handling
    title: Short
    body: Annotated[str, StringConstraints(max_length=200_000)] = ""
    indicators: Indicators = Indicators()
    references: list[Hex64] = []
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "en"
    expires: IsoDate | None = None
    attachments: Annotated[list[Attachment], Field(max_length=MAX_ATTACHMENTS)] = []

    @field_validator("attachments")
    @classmethod
    def _within_limit(cls, value: list[Attachment]) -> list[Attachment]:
        if sum(a.size for a in value) > MAX_ATTACHMENT_BYTES:
            raise ValueError(f"attachments may hold at most {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB together")
        return value

    def payload(self) -> dict[str, object]:
        """The encrypted part: everything but handling."""
        return self.model_dump(mode="json", exclude={"handling"})

    @cached_property
    def payload_bytes(self) -> bytes:
        """The canonical payload, computed once."""
        return canonical_json(self.payload())


class StateRef(BaseModel):
    """The channel state a bulletin was authorised under: owner, log position and event hash."""

    model_config = _WIRE
    owner: NodeIdStr
    pos: Annotated[int, Field(ge=0)]
    hash: Hex64


class Recipient(BaseModel):
    model_config = _WIRE
    node: NodeIdStr
    kid: Kid


class EnvelopeHeader(BaseModel):
    """The signed, cleartext part of an envelope. Its canonical hash is the bulletin id."""

    model_config = _WIRE
    v: Literal[1]
    suite: Literal["x25519-hkdfsha256-aes256gcm"]
    channel: ChannelIdStr
    author: NodeIdStr
    signer: Kid
    seq: Annotated[int, Field(ge=1)]
    state: StateRef
    recipients: Annotated[list[Recipient], Field(min_length=1, max_length=1000)]
    handling: Handling
    created: Timestamp
    nonce: B64
    key_commitment: B64
    ciphertext_sha256: B64

    @field_validator("recipients")
    @classmethod
    def _sorted_unique(cls, value: list[Recipient]) -> list[Recipient]:
        nodes = [r.node for r in value]
        if nodes != sorted(set(nodes)):
            raise ValueError("recipients must be sorted by node id, without repeats")
        return value

    @cached_property
    def canonical(self) -> bytes:
        """RFC 8785 form of the header, computed once: the id, the signature and storage all use it."""
        return canonical_json(self.model_dump(mode="json"))


class Envelope(BaseModel):
    """A signed, encrypted bulletin as it travels between nodes."""

    model_config = _WIRE
    header: EnvelopeHeader
    wraps: list[B64]
    ciphertext: B64
    signature: B64


class Receipt(BaseModel):
    """A receiving node's signed statement that it received (or a user opened) a bulletin."""

    model_config = _WIRE
    v: Literal[1]
    bulletin: Hex64
    node: NodeIdStr
    status: Literal["received", "opened"]
    at: Timestamp
    signer: Kid
    signature: B64


class RosterNode(BaseModel):
    """One member node of the federation, as the federation authority vouches for it."""

    model_config = _WIRE
    id: NodeIdStr
    name: Short
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    agency: AgencyKind
    endpoint: Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+(:\d+)?$")]
    signing_key: B64
    signing_kid: Kid
    encryption_key: B64
    encryption_kid: Kid
    tls_cert: Annotated[str, StringConstraints(max_length=8000)]
    tls_pin: B64


class Roster(BaseModel):
    model_config = _WIRE
    v: Literal[1]
    federation: Short
    version: Annotated[int, Field(ge=1)]
    issued: Timestamp
    authority_kid: Kid
    nodes: list[RosterNode]

    @field_validator("nodes")
    @classmethod
    def _unique_ids(cls, value: list[RosterNode]) -> list[RosterNode]:
        ids = [n.id for n in value]
        if len(ids) != len(set(ids)):
            raise ValueError("node ids must be unique")
        return value


class SignedRoster(BaseModel):
    model_config = _WIRE
    roster: Roster
    signature: B64


class ChannelPolicy(BaseModel):
    """Which agency kinds may be members of a channel."""

    model_config = _WIRE
    agencies: Annotated[list[AgencyKind], Field(min_length=1)]


Rights = Annotated[list[Right], Field(min_length=1, max_length=3)]


class Create(BaseModel):
    """Position 0 of every channel log: the owner alone is a member, with every right."""

    model_config = _WIRE
    type: Literal["create"]
    title: Short
    purpose: Annotated[str, StringConstraints(max_length=2000)] = ""
    policy: ChannelPolicy
    default_handling: Handling
    ends: IsoDate | None = None


class Invite(BaseModel):
    model_config = _WIRE
    type: Literal["invite"]
    node: NodeIdStr
    rights: Rights


class Acceptance(BaseModel):
    """An invited node's own signed consent, which the owner embeds in the log."""

    model_config = _WIRE
    channel: ChannelIdStr
    node: NodeIdStr
    invite: Hex64
    signer: Kid
    signature: B64


class Accept(BaseModel):
    model_config = _WIRE
    type: Literal["accept"]
    acceptance: Acceptance


class SetRights(BaseModel):
    model_config = _WIRE
    type: Literal["set-rights"]
    node: NodeIdStr
    rights: Rights


class Remove(BaseModel):
    """Remove a member, or withdraw an invitation."""

    model_config = _WIRE
    type: Literal["remove"]
    node: NodeIdStr


class GrantHistory(BaseModel):
    """An administrator's explicit, audited grant of earlier bulletins to a member that joined later."""

    model_config = _WIRE
    type: Literal["grant-history"]
    node: NodeIdStr


class Close(BaseModel):
    model_config = _WIRE
    type: Literal["close"]


Change = Annotated[Create | Invite | Accept | SetRights | Remove | GrantHistory | Close, Field(discriminator="type")]


class ChannelEvent(BaseModel):
    """One entry of a channel's linear membership log, ordered and signed by the owner node."""

    model_config = _WIRE
    v: Literal[1]
    channel: ChannelIdStr
    owner: NodeIdStr
    pos: Annotated[int, Field(ge=0)]
    prev: Hex64 | None
    at: Timestamp
    change: Change
    signer: Kid
    signature: B64
