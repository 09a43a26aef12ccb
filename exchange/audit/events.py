"""Every kind of audit entry, one typed model each: the contract between writers and readers.

Writers build one of these dicts and hand it to the store (`AuditBuffer.add`, `Store.audit`),
which adds `idx` and writes it as canonical JSON, so an entry's bytes are exactly the keys
below. Readers (the trace, gap detection, the console's labels) name kinds only through the
constants here, never with a string literal: renaming a kind is then one change in one place.

Entries carry identifiers and metadata only, never bulletin plaintext (docs/audit.md, section 1).
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NotRequired, TypedDict

# Re-exported: the sends and receipts of a bulletin, in both forms.
from exchange.audit.delivery_events import (
    BULLETIN_DELIVERED as BULLETIN_DELIVERED,
    BULLETIN_DELIVERED_TO as BULLETIN_DELIVERED_TO,
    BULLETIN_SENT as BULLETIN_SENT,
    BULLETIN_SENT_TO as BULLETIN_SENT_TO,
    CATCHUP_REFUSED as CATCHUP_REFUSED,
    BulletinDelivered as BulletinDelivered,
    BulletinDeliveredTo as BulletinDeliveredTo,
    BulletinSent as BulletinSent,
    BulletinSentTo as BulletinSentTo,
    CatchupRefused as CatchupRefused,
    catchup_refused as catchup_refused,
    delivered_to as delivered_to,
    sent_to as sent_to,
)
from exchange.audit.epoch_events import (
    EPOCH_EQUIVOCATION as EPOCH_EQUIVOCATION,
    EPOCH_GRANT_TAKEN,
    EPOCH_GRANTED,
    EPOCH_KEY_TAKEN,
    EPOCH_MADE,
    EpochEquivocation,
    EpochGranted,
    EpochGrantTaken,
    EpochKeyTaken,
    EpochMade,
)
from exchange.audit.user_events import (
    CONSOLE_SIGNED_IN as CONSOLE_SIGNED_IN,
    CONSOLE_SIGNED_OUT as CONSOLE_SIGNED_OUT,
    CONSOLE_SIGNIN_FAILED as CONSOLE_SIGNIN_FAILED,
    CONSOLE_SIGNIN_THROTTLED as CONSOLE_SIGNIN_THROTTLED,
    USER_ASSIGNED as USER_ASSIGNED,
    USER_CREATED as USER_CREATED,
    USER_DISABLED as USER_DISABLED,
    USER_ENABLED as USER_ENABLED,
    USER_PASSWORD_SET as USER_PASSWORD_SET,
    USER_TOKEN_ROTATED as USER_TOKEN_ROTATED,
    USER_UNASSIGNED as USER_UNASSIGNED,
    ConsoleSignedIn as ConsoleSignedIn,
    ConsoleSignedOut as ConsoleSignedOut,
    ConsoleSigninFailed as ConsoleSigninFailed,
    ConsoleSigninThrottled as ConsoleSigninThrottled,
    UserAssigned as UserAssigned,
    UserCreated as UserCreated,
    UserDisabled as UserDisabled,
    UserEnabled as UserEnabled,
    UserPasswordSet as UserPasswordSet,
    UserTokenRotated as UserTokenRotated,
    UserUnassigned as UserUnassigned,
)

# -- the kind names -------------------------------------------------------------------------------

BULLETIN_POSTED: Final = "bulletin.posted"
BULLETIN_RECEIVED: Final = "bulletin.received"
BULLETIN_OPENED: Final = "bulletin.opened"
BULLETIN_OPENED_BY: Final = "bulletin.opened_by"
BULLETIN_UNVERIFIED: Final = "bulletin.unverified"
SEND_REFUSED: Final = "send.refused"
REQUEST_REJECTED: Final = "request.rejected"
REQUESTS_REFUSED: Final = "requests.refused"
CHANNEL_CHANGED: Final = "channel.changed"
NODE_STARTED: Final = "node.started"
NODE_STOPPED: Final = "node.stopped"
AUDIT_SPLIT_VIEW: Final = "audit.split_view"
AUDIT_TRACE: Final = "audit.trace"
AUDIT_TRACE_SERVED: Final = "audit.trace_served"
TAXII_READ: Final = "taxii.read"
ROSTER_INSTALLED: Final = "roster.installed"
ROSTER_REFUSED: Final = "roster.refused"
WEBHOOK_CHANGED: Final = "webhook.changed"
WEBHOOK_DELIVERED: Final = "webhook.delivered"
WEBHOOK_FAILING: Final = "webhook.failing"

EVENT_KINDS: Final[tuple[str, ...]] = (
    BULLETIN_POSTED,
    BULLETIN_RECEIVED,
    BULLETIN_SENT,
    BULLETIN_DELIVERED,
    BULLETIN_SENT_TO,
    BULLETIN_DELIVERED_TO,
    BULLETIN_OPENED,
    BULLETIN_OPENED_BY,
    BULLETIN_UNVERIFIED,
    SEND_REFUSED,
    REQUEST_REJECTED,
    REQUESTS_REFUSED,
    CATCHUP_REFUSED,
    CHANNEL_CHANGED,
    USER_CREATED,
    USER_TOKEN_ROTATED,
    USER_PASSWORD_SET,
    USER_ASSIGNED,
    USER_UNASSIGNED,
    USER_DISABLED,
    USER_ENABLED,
    CONSOLE_SIGNED_IN,
    CONSOLE_SIGNED_OUT,
    CONSOLE_SIGNIN_FAILED,
    CONSOLE_SIGNIN_THROTTLED,
    NODE_STARTED,
    NODE_STOPPED,
    AUDIT_SPLIT_VIEW,
    AUDIT_TRACE,
    AUDIT_TRACE_SERVED,
    TAXII_READ,
    ROSTER_INSTALLED,
    ROSTER_REFUSED,
    WEBHOOK_CHANGED,
    WEBHOOK_DELIVERED,
    WEBHOOK_FAILING,
    EPOCH_MADE,
    EPOCH_KEY_TAKEN,
    EPOCH_GRANTED,
    EPOCH_GRANT_TAKEN,
    EPOCH_EQUIVOCATION,
)
"""Every kind, in the order of docs/audit.md's table."""

TRACE_KINDS: Final[tuple[str, ...]] = (AUDIT_TRACE, AUDIT_TRACE_SERVED)
"""Entries that record a trace asked or answered, not something done with the bulletin."""

# -- bulletins ------------------------------------------------------------------------------------


class BulletinPosted(TypedDict):
    """The author posted a bulletin: written in the same transaction as the bulletin."""

    event: Literal["bulletin.posted"]
    at: str
    bulletin: str
    channel: str
    author: str
    seq: int
    state: int  # the channel log position the post was authorised under
    user: str
    recipients: list[str]
    tlp: str


# `from` is a keyword, so this one is declared in the functional form.
_BulletinReceivedBase = TypedDict(
    "_BulletinReceivedBase",
    {
        "event": Literal["bulletin.received"],
        "at": str,
        "bulletin": str,
        "channel": str,
        "author": str,
        "seq": int,
        "from": str,
    },
)


class BulletinReceived(_BulletinReceivedBase):
    """A recipient stored a bulletin, before it answered with its receipt."""

    relayed: NotRequired[Literal[True]]  # present when pulled from a node other than the author


class BulletinOpened(TypedDict):
    """A local user opened a bulletin."""

    event: Literal["bulletin.opened"]
    at: str
    bulletin: str
    channel: str
    user: str


class BulletinOpenedBy(TypedDict):
    """The author stored a recipient's signed "opened" receipt."""

    event: Literal["bulletin.opened_by"]
    at: str
    bulletin: str
    to: str
    receipt_at: str


class BulletinUnverified(TypedDict):
    """A stored bulletin failed the check made when it is shown, and was not shown: what failed."""

    event: Literal["bulletin.unverified"]
    at: str
    bulletin: str
    user: str
    problem: str  # which check failed, never the bulletin's content


class SendRefused(TypedDict):
    """An outbox item that goes no further: the destination refused it for good, it was cancelled, or
    what it names is missing from the sender's database."""

    event: Literal["send.refused"]
    at: str
    kind: str  # the outbox item's kind: envelope, receipt, event
    ref: str  # for an envelope, the bulletin id
    to: str
    reason: str


# -- requests and channels ------------------------------------------------------------------------


class RequestRejected(TypedDict):
    """A request this node refused with a 4xx."""

    event: Literal["request.rejected"]
    at: str
    method: str
    path: str
    status: int
    reason: NotRequired[str]
    peer: NotRequired[str]  # a partner node, on the federation API
    user: NotRequired[str]  # a local user, on the client API and the console
    address: NotRequired[str]  # the client's address


class RequestsRefused(TypedDict):
    """Refused requests from one client address over one interval, counted rather than written one
    by one (exchange.service.rejections): the bounded record of a flood. At most 512 bytes."""

    event: Literal["requests.refused"]
    at: str
    address: str  # an IPv4 address, an IPv6 /64, or "other" past the number of addresses tracked
    since: str  # the start of the interval
    count: int
    reasons: dict[str, int]  # "401 Unauthorized", "408 header timeout", ...: how many of each
    sample: str  # the last refused request, "METHOD path", cut short


class ChannelChanged(TypedDict):
    """One event of a channel's owner-signed log, applied at this node."""

    event: Literal["channel.changed"]
    at: str
    channel: str
    pos: int
    hash: str
    owner: str
    change: dict[str, Any]  # the signed change; an acceptance is shown as {"type": "accept", "node"}


# -- the node and its log -------------------------------------------------------------------------


class NodeStarted(TypedDict):
    """The keys and roster a node runs with, recorded at each start."""

    event: Literal["node.started"]
    at: str
    roster_version: int
    roster_sha256: str
    authority_kid: str
    signing_kid: str
    encryption_kid: str
    tls_pin: str


class NodeStopped(TypedDict):
    """A clean stop: the last entry of a run, covered by the checkpoint the node signs as it stops."""

    event: Literal["node.stopped"]
    at: str


class AuditSplitView(TypedDict):
    """A witness caught a partner's log showing two histories."""

    event: Literal["audit.split_view"]
    at: str
    node: str
    seen_size: int
    seen_root: str
    shown_size: int
    shown_root: str
    detail: str


class AuditTrace(TypedDict):
    """A local auditor traced a bulletin."""

    event: Literal["audit.trace"]
    at: str
    bulletin: str
    user: str


class AuditTraceServed(TypedDict):
    """This node gave a partner its evidence about a bulletin."""

    event: Literal["audit.trace_served"]
    at: str
    bulletin: str
    peer: str


class TaxiiRead(TypedDict):
    """A local user read a TAXII resource: which collection (channel), what, and how many objects
    left the node in plaintext (exchange.service.taxii)."""

    event: Literal["taxii.read"]
    at: str
    user: str
    channel: str
    resource: str
    objects: int
    bulletin: NotRequired[str]  # an export of one bulletin: which (its trace then shows that it left)


class RosterInstalled(TypedDict):
    """This node installed a roster v2 version (docs/protocol.md, 6a.4): persisted first, then
    installed, then this entry. `versions` is how many versions the chain added."""

    event: Literal["roster.installed"]
    at: str
    version: int
    hash: str  # SHA-256 of JCS(roster), hex: compare it out of band
    held: int  # the version held before (0: none)
    versions: int
    expires: str
    source: str  # "import" (a file, exchange roster import), "migration" (from the v1 roster), later "peer:<id>"


class RosterRefused(TypedDict):
    """A roster v2 chain this node refused; what it holds is unchanged. Bounded: `detail` at most
    200 characters, and at most a few entries per source and interval (the rest counted in
    `suppressed` of the next one). An equivocation carries both hashes (the evidence)."""

    event: Literal["roster.refused"]
    at: str
    error: str  # the error's class name: RosterRollback, RosterGap, RosterEquivocation, ...
    held: int  # the version held (0: none)
    offered: int  # the highest version offered (0: it did not parse)
    source: str
    detail: str
    held_hash: NotRequired[str]  # with an equivocation: the hash this node holds for `offered`
    offered_hash: NotRequired[str]  # with an equivocation: the other hash, signed by the authority
    suppressed: NotRequired[int]  # refusals from this source not written since the last entry


class WebhookChanged(TypedDict):
    """An administrator registered or removed a webhook (exchange.service.webhooks)."""

    event: Literal["webhook.changed"]
    at: str
    user: str
    webhook: int
    channel: str
    url: str
    change: Literal["registered", "removed"]


class WebhookDelivered(TypedDict):
    """The node POSTed `count` bulletins' metadata to a webhook and got 2xx, through cursor `through`."""

    event: Literal["webhook.delivered"]
    at: str
    webhook: int
    channel: str
    count: int
    through: int


class WebhookFailing(TypedDict):
    """A webhook's receiver stopped answering 2xx (written once when failing starts; retries follow)."""

    event: Literal["webhook.failing"]
    at: str
    webhook: int
    channel: str
    error: str


AuditEntry = (
    BulletinPosted
    | BulletinReceived
    | BulletinSent
    | BulletinDelivered
    | BulletinSentTo
    | BulletinDeliveredTo
    | BulletinOpened
    | BulletinOpenedBy
    | BulletinUnverified
    | SendRefused
    | RequestRejected
    | RequestsRefused
    | CatchupRefused
    | ChannelChanged
    | UserCreated
    | UserTokenRotated
    | UserPasswordSet
    | UserAssigned
    | UserUnassigned
    | UserDisabled
    | UserEnabled
    | ConsoleSignedIn
    | ConsoleSignedOut
    | ConsoleSigninFailed
    | ConsoleSigninThrottled
    | NodeStarted
    | NodeStopped
    | AuditSplitView
    | AuditTrace
    | AuditTraceServed
    | TaxiiRead
    | RosterInstalled
    | RosterRefused
    | WebhookChanged
    | WebhookDelivered
    | WebhookFailing
    | EpochMade
    | EpochKeyTaken
    | EpochGranted
    | EpochGrantTaken
    | EpochEquivocation
)
"""One audit entry as written, before the store gives it its `idx`."""
