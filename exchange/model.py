"""Pydantic models of the domain and the wire: bulletins, envelopes, receipts, rosters, channels.

Wire models are strict (no coercion), frozen, and refuse unknown fields, so what is signed is
exactly what was parsed. Every list and string has a bound (docs/protocol.md, "Limits"): pydantic
checks a list's length before its items, so a list of a million bad items costs one error, not a
million. Lengths of text are in Unicode code points (Python's `len`).
"""

from __future__ import annotations

import datetime as dt
from functools import cached_property
from typing import Annotated, Any, Literal, NewType, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from exchange.crypto.encoding import canonical_json

NodeId = NewType("NodeId", str)
ChannelId = NewType("ChannelId", str)
BulletinId = NewType("BulletinId", str)

AgencyKind = Literal["customs", "aviation-security", "police", "international"]
AGENCY_KINDS: tuple[AgencyKind, ...] = ("customs", "aviation-security", "police", "international")
Tlp = Literal["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]
BulletinKind = Literal["alert", "threat-bulletin", "seizure-report", "feedback", "request-for-information"]
# A local user's role at its node; `feed`: an analysts' platform, TAXII and STIX exports only (docs/stix.md).
Role = Literal["contact-point", "auditor", "admin", "feed"]
ROLES: tuple[str, ...] = get_args(Role)

BULLETIN_KINDS: tuple[BulletinKind, ...] = get_args(BulletinKind)
Right = Literal["read", "post", "admin"]

# -- Limits (docs/protocol.md, "Limits"): what legitimate use needs, with room to spare -----------
MAX_ROSTER_NODES = 1000  # nodes in a federation
MAX_RECIPIENTS = MAX_ROSTER_NODES  # recipients of an envelope, and so its wrapped keys
MAX_INDICATORS = 500  # air waybills, HS codes, airports or flights in one bulletin, per kind
MAX_NAMED_INDICATORS = 100  # companies or risk indicators in one bulletin, per kind
MAX_REFERENCES = 100  # bulletins one bulletin refers to
MAX_SHORT = 200  # code points of a title, a name, a company or a risk indicator
MAX_BODY = 200_000  # code points of a bulletin's text
MAX_PURPOSE = 2000  # code points of a channel's purpose
MAX_LANGUAGE = 35  # characters of a BCP 47 language tag (RFC 5646 4.4.1)
MAX_TLS_CERT = 8000  # characters of a node's PEM certificate
MAX_ENDPOINT = 300  # characters of a node's https://host:port (a DNS name has at most 253)
# The payload of the largest bulletin these bounds allow is under 4.5 MiB (tests/protocol/test_bounds.py
# builds it), so its ciphertext fits in MAX_CIPHERTEXT base64url characters.
MAX_PAYLOAD_BYTES = 9 * 512 * 1024
MAX_CIPHERTEXT = ((MAX_PAYLOAD_BYTES + 16) * 4 + 2) // 3
MAX_KEY_TEXT = 64  # base64url of a 32-byte key, nonce, hash or pin (43 characters), with room
MAX_SIGNATURE_TEXT = 128  # base64url of a 64-byte Ed25519 signature (86 characters)
MAX_WRAP_TEXT = 128  # base64url of an 80-byte wrapped key (107 characters)


def _on_calendar(value: str) -> str:
    """A Date is a day of the Gregorian calendar, 0001-01-01 to 9999-12-31: 2025-02-30 is refused."""
    try:
        dt.date(int(value[0:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        raise ValueError(f"{value} is not a date on the calendar") from None
    return value


def _on_clock(value: str) -> str:
    """A Timestamp names a real instant: a calendar date, hours 00-23, minutes and seconds 00-59."""
    _on_calendar(value)
    try:
        dt.time(int(value[11:13]), int(value[14:16]), int(value[17:19]))
    except ValueError:
        raise ValueError(f"{value} is not a time of day") from None
    return value


def first_error(exc: ValidationError) -> str:
    """The first of a validation error's complaints, as `location: message`."""
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}"


NodeIdStr = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
ChannelIdStr = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def _json_integer(value: Any) -> Any:
    """A version is a JSON integer (2.5): Literal[1] takes `true` and `1.0`, Literal[2] `2.0`."""
    if type(value) is not int:
        raise ValueError("the version is a JSON integer")
    return value


Version1 = Annotated[Literal[1], BeforeValidator(_json_integer)]
Version2 = Annotated[Literal[2], BeforeValidator(_json_integer)]
Version1or2 = Annotated[Literal[1, 2], BeforeValidator(_json_integer)]
Kid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
B64Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=MAX_KEY_TEXT)]
B64Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=MAX_SIGNATURE_TEXT)]
B64Wrap = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=MAX_WRAP_TEXT)]
B64Ciphertext = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=MAX_CIPHERTEXT)]
# ASCII digits only: the regex engine's `\d` would take any Unicode digit, such as "\u0662".
Timestamp = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$"),
    AfterValidator(_on_clock),
]
IsoDate = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), AfterValidator(_on_calendar)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SHORT, strip_whitespace=True)]

_WIRE = ConfigDict(extra="forbid", frozen=True, strict=True)


class Handling(BaseModel):
    """TLP 2.0 label and the no-onward-sharing flag."""

    model_config = _WIRE
    tlp: Tlp
    no_onward_sharing: bool = False


class Indicators(BaseModel):
    """Structured indicators that customs and aviation analysts search and match on."""

    model_config = _WIRE
    air_waybills: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[0-9]{3}-[0-9]{8}$")]], Field(max_length=MAX_INDICATORS)
    ] = []
    hs_codes: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[0-9]{4}(\.?[0-9]{2}){0,3}$")]],
        Field(max_length=MAX_INDICATORS),
    ] = []
    airports: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]], Field(max_length=MAX_INDICATORS)
    ] = []
    flights: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2}[A-Z]?[0-9]{1,4}[A-Z]?$")]],
        Field(max_length=MAX_INDICATORS),
    ] = []
    companies: Annotated[list[Short], Field(max_length=MAX_NAMED_INDICATORS)] = []
    risk_indicators: Annotated[list[Short], Field(max_length=MAX_NAMED_INDICATORS)] = []


MAX_ATTACHMENTS = 10
MAX_ATTACHMENT_BYTES = 2 * 1024 * 1024  # all attachments of one bulletin together, decoded


class Attachment(BaseModel):
    """A file sent with a bulletin, encrypted with it. The name is for display only."""

    model_config = _WIRE
    # No path separators, no C0/C1 controls or DEL, and no bidirectional controls or line
    # separators: "evil\u202efdp.exe" must not pass for a PDF.
    name: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=MAX_SHORT,
            pattern=r"^[^/\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]+$",
        ),
    ]
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
    body: Annotated[str, StringConstraints(max_length=MAX_BODY)] = ""
    indicators: Indicators = Indicators()
    references: Annotated[list[Hex64], Field(max_length=MAX_REFERENCES)] = []
    language: Annotated[
        str, StringConstraints(max_length=MAX_LANGUAGE, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    ] = "en"
    expires: IsoDate | None = None
    attachments: Annotated[list[Attachment], Field(max_length=MAX_ATTACHMENTS)] = []
    # A request for information's answer date. Absent unless set (never null on the wire), so the
    # payloads of bulletins without one are as they always were.
    due: IsoDate | None = Field(default=None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _due_only_on_requests(self) -> Bulletin:
        if self.due is not None and self.kind != "request-for-information":
            raise ValueError("due: only a request-for-information has a due date")
        return self

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


# The largest value an Integer column holds in PostgreSQL (SQLite's, 2**63 - 1, is larger). A
# sequence number or log position from the wire is stored in one, so it is bounded by this: more
# is refused as input rather than failing the query that stores it.
INT32_MAX = 2**31 - 1


class StateRef(BaseModel):
    """The channel state a bulletin was authorised under: owner, log position and event hash."""

    model_config = _WIRE
    owner: NodeIdStr
    pos: Annotated[int, Field(ge=0, le=INT32_MAX)]
    hash: Hex64


class Recipient(BaseModel):
    model_config = _WIRE
    node: NodeIdStr
    kid: Kid


class EnvelopeHeader(BaseModel):
    """The signed, cleartext part of an envelope. Its canonical hash is the bulletin id."""

    model_config = _WIRE
    v: Version1
    suite: Literal["x25519-hkdfsha256-aes256gcm"]
    channel: ChannelIdStr
    author: NodeIdStr
    signer: Kid
    seq: Annotated[int, Field(ge=1, le=INT32_MAX)]
    state: StateRef
    recipients: Annotated[list[Recipient], Field(min_length=1, max_length=MAX_RECIPIENTS)]
    handling: Handling
    created: Timestamp
    nonce: B64Key
    key_commitment: B64Key
    ciphertext_sha256: B64Key

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
    wraps: Annotated[list[B64Wrap], Field(min_length=1, max_length=MAX_RECIPIENTS)]
    ciphertext: B64Ciphertext
    signature: B64Signature


MAX_RECEIPT_BATCH = 1 << 16  # bulletins one signed receipt statement covers (v2)
MAX_RECEIPT_PROOF = 16  # hashes on the path from a leaf to the root of such a batch
RECEIPT_BATCH_MEMBERS = ("size", "root", "index", "proof")  # present in v2 receipts only


def _receipt_schema(schema: dict[str, Any]) -> None:
    """JSON schema: the batch members are required in v2 and absent in v1, never null."""
    props = schema["properties"]
    for name in RECEIPT_BATCH_MEMBERS:
        given = props[name]
        props[name] = {**next(s for s in given.pop("anyOf") if s.get("type") != "null"), "title": given["title"]}
    schema["oneOf"] = [
        {"properties": {"v": {"const": 1}}, "not": {"anyOf": [{"required": [m]} for m in RECEIPT_BATCH_MEMBERS]}},
        {"properties": {"v": {"const": 2}}, "required": list(RECEIPT_BATCH_MEMBERS)},
    ]


class Receipt(BaseModel):
    """A receiving node's signed statement that it received (or a user opened) a bulletin.

    A v1 receipt is signed alone. A v2 receipt is one leaf of a batch: its node signed once a
    statement with the Merkle root of the batch's bulletin ids, and the receipt carries its
    `index`, the batch `size`, that `root` and the inclusion `proof` (docs/protocol.md, 10).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, json_schema_extra=_receipt_schema)
    v: Version1or2
    bulletin: Hex64
    node: NodeIdStr
    status: Literal["received", "opened"]
    at: Timestamp
    signer: Kid
    size: Annotated[int, Field(ge=1, le=MAX_RECEIPT_BATCH)] | None = None
    root: B64Key | None = None
    index: Annotated[int, Field(ge=0, lt=MAX_RECEIPT_BATCH)] | None = None
    proof: Annotated[list[B64Key], Field(max_length=MAX_RECEIPT_PROOF)] | None = None
    signature: B64Signature

    @model_validator(mode="after")
    def _members_of_its_version(self) -> Receipt:
        if self.v == 1:
            given = [m for m in RECEIPT_BATCH_MEMBERS if m in self.model_fields_set]
            if given:
                raise ValueError(f"a v1 receipt has no member {given[0]!r}")
            return self
        missing = [m for m in RECEIPT_BATCH_MEMBERS if getattr(self, m) is None]
        if missing:
            raise ValueError(f"a v2 receipt needs {missing[0]!r}")
        if self.index is not None and self.size is not None and self.index >= self.size:
            raise ValueError("a v2 receipt's index must be below its batch size")
        return self

    @model_serializer(mode="wrap")
    def _without_absent_members(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.v == 1:
            for name in RECEIPT_BATCH_MEMBERS:
                out.pop(name, None)
        return out


class RosterNode(BaseModel):
    """One member node of the federation, as the federation authority vouches for it."""

    model_config = _WIRE
    id: NodeIdStr
    name: Short
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    agency: AgencyKind
    endpoint: Annotated[str, StringConstraints(max_length=MAX_ENDPOINT, pattern=r"^https://[^\s/]+(:[0-9]{1,5})?$")]
    signing_key: B64Key
    signing_kid: Kid
    encryption_key: B64Key
    encryption_kid: Kid
    tls_cert: Annotated[str, StringConstraints(max_length=MAX_TLS_CERT)]
    tls_pin: B64Key


class Roster(BaseModel):
    model_config = _WIRE
    v: Version1
    federation: Short
    version: Annotated[int, Field(ge=1)]
    issued: Timestamp
    authority_kid: Kid
    nodes: Annotated[list[RosterNode], Field(min_length=1, max_length=MAX_ROSTER_NODES)]

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
    signature: B64Signature


class ChannelPolicy(BaseModel):
    """Which agency kinds may be members of a channel."""

    model_config = _WIRE
    agencies: Annotated[list[AgencyKind], Field(min_length=1, max_length=len(AGENCY_KINDS))]


Rights = Annotated[list[Right], Field(min_length=1, max_length=3)]


class Create(BaseModel):
    """Position 0 of every channel log: the owner alone is a member, with every right."""

    model_config = _WIRE
    type: Literal["create"]
    title: Short
    purpose: Annotated[str, StringConstraints(max_length=MAX_PURPOSE)] = ""
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
    signature: B64Signature


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


class SetExport(BaseModel):
    """The owner's rule for plaintext leaving members' nodes by TAXII or STIX export: whether
    TLP:AMBER+STRICT bulletins may (TLP:RED and no-onward-sharing never may)."""

    model_config = _WIRE
    type: Literal["set-export"]
    amber_strict: bool


class Handover(BaseModel):
    """The successor takes over a channel whose owner `node` is revoked in roster `roster` (docs/protocol.md, 7.5)."""

    model_config = _WIRE
    type: Literal["handover"]
    node: NodeIdStr
    roster: Annotated[int, Field(ge=1, le=2**53 - 1)]


Change = Annotated[
    Create | Invite | Accept | SetRights | Remove | GrantHistory | Close | SetExport | Handover,
    Field(discriminator="type"),
]


class ChannelEvent(BaseModel):
    """One entry of a channel's linear membership log, ordered and signed by the owner node."""

    model_config = _WIRE
    v: Version1
    channel: ChannelIdStr
    owner: NodeIdStr
    pos: Annotated[int, Field(ge=0, le=INT32_MAX)]
    prev: Hex64 | None
    at: Timestamp
    change: Change
    signer: Kid
    signature: B64Signature
