"""The node's OpenAPI 3.1 document: every client, audit and federation route, with its parameters,
request and response schemas (exchange.node.schemas) and security (bearer, or mutual TLS).

`tests/node/test_schemathesis.py` runs schemathesis against a live node with this document, and
`tests/node/test_openapi.py` checks that it names exactly the routes the node serves.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from exchange.http.params import INT32_MAX
from exchange.node.bodies import AUDIT_PAGE_LIMIT, CATCHUP_LIMIT, MEMBERSHIP, PAGE_LIMIT
from exchange.node.schemas import HEX64, ID, array, closed, components, ref
from exchange.service.follow import MAX_WAIT
from exchange.service.gossip import ROSTER_PATH
from exchange.service.posting import KEY_PATTERN

# -- parameters and operations -----------------------------------------------------------------


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


def _int(minimum: int, maximum: int = INT32_MAX) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


CHANNEL = _param("channel", "path", ID, "a channel id")
BULLETIN_ID = _param("id", "path", HEX64, "a bulletin id: the SHA-256 of its envelope header, in hex")
STIX_BUNDLE = {
    "type": "object",
    "description": "A STIX 2.1 bundle (docs/stix.md)",
    "properties": {"type": {"const": "bundle"}, "id": {"type": "string"}, "objects": {"type": "array"}},
    "required": ["type", "id", "objects"],
}
BULLETIN = _param("bulletin", "path", HEX64, "a bulletin id")
IDEMPOTENCY_KEY = _param(
    "Idempotency-Key",
    "header",
    {"type": "string", "pattern": f'^({KEY_PATTERN.pattern}|"{KEY_PATTERN.pattern}")$'},
    "a retry with the same key, by the same user, within 24 hours, gets the first answer and creates nothing",
)
TIME = {
    "type": "string",
    "anyOf": [{"format": "date"}, {"format": "date-time"}],
    "description": "a date, or an RFC 3339 time (seconds and zone may be left out: UTC)",
}
ID_PREFIX = {"type": "string", "pattern": "^[0-9a-f]{8,64}$"}
AUDIT_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._*-]{0,63}$"}

PROBLEM = {
    "description": "Refused: RFC 9457 problem details",
    "content": {"application/problem+json": {"schema": ref("Problem")}},
}
UNAVAILABLE = {
    "description": "The node is stopping, or a partner it needed did not answer: retry later",
    "content": {"application/problem+json": {"schema": ref("Problem")}},
}


def _op(
    summary: str,
    answer: str | dict[str, Any],
    *,
    status: str = "200",
    body: str | None = None,
    parameters: Iterable[dict[str, Any]] = (),
    security: str | None = "bearer",
    partners: bool = False,
    headers: dict[str, Any] | None = None,
    media: str = "application/json",
) -> dict[str, Any]:
    schema = ref(answer) if isinstance(answer, str) else answer
    ok: dict[str, Any] = {"description": "OK", "content": {media: {"schema": schema}}}
    if headers:
        ok["headers"] = headers
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok, "4XX": PROBLEM, "503": UNAVAILABLE}}
    if partners:  # the route asks a partner node, which may fail
        op["responses"]["502"] = UNAVAILABLE
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
    if parameters:
        op["parameters"] = list(parameters)
    op["security"] = [{security: []}] if security else []
    return op


def _client_paths() -> dict[str, Any]:
    after = _param("after", "query", _int(0), "the cursor: bulletins stored after it")
    replayed = {
        "Idempotent-Replayed": {
            "description": "true when this is the answer to an earlier request with the same key",
            "schema": {"type": "string", "enum": ["true"]},
        }
    }
    paths: dict[str, Any] = {
        "/api/v1/openapi.json": {"get": _op("This document", {"type": "object"}, security=None)},
        "/api/v1/whoami": {"get": _op("The authenticated user", "WhoAmI")},
        "/api/v1/channels": {
            "get": _op(
                "Channels: a contact point's own, or every channel this node takes part in", array(ref("Channel"))
            ),
            "post": _op(
                "Create a channel, owned by this node (administrators)", "Channel", status="201", body="NewChannel"
            ),
        },
        "/api/v1/channels/{channel}": {"get": _op("A channel's current state", "Channel", parameters=[CHANNEL])},
        "/api/v1/channels/{channel}/users": {
            "post": _op(
                "Assign a local contact point to a channel, or unassign",
                "AssignmentDone",
                body="Assignment",
                parameters=[CHANNEL],
            )
        },
        "/api/v1/channels/{channel}/bulletins": {
            "post": _op(
                "Post a bulletin (contact points assigned to the channel)",
                "Posted",
                status="201",
                body="NewBulletin",
                parameters=[CHANNEL, IDEMPOTENCY_KEY],
                headers=replayed,
            )
        },
        "/api/v1/channels/{channel}/bulletins/batch": {
            "post": _op(
                "Post up to 1,000 bulletins at once (automated systems): each item posted or refused on its own, "
                "answered in order; with an Idempotency-Key, a retry answers each item as the first time",
                "BatchPosted",
                body="NewBulletins",
                parameters=[CHANNEL, IDEMPOTENCY_KEY],
            )
        },
        "/api/v1/channels/{channel}/accept": {
            "post": _op(
                "Accept this node's invitation to a channel (administrators)",
                "Channel",
                parameters=[CHANNEL],
                partners=True,
            )
        },
        "/api/v1/bulletins": {
            "get": _op(
                "Bulletins of the user's channels, in the order this node stored them; with any of order, "
                "before, unread or since: inbox lines (each saying whether the user opened it), and `next` "
                "is the cursor for `after` (oldest first) or `before` (newest first)",
                {"anyOf": [ref("BulletinPage"), ref("LinePage")]},
                parameters=[
                    _param("channel", "query", ID, "only this channel"),
                    after,
                    _param("limit", "query", _int(1, PAGE_LIMIT), "at most this many (default 50)"),
                    _param("order", "query", {"type": "string", "enum": ["oldest", "newest"]}, "default oldest"),
                    _param("before", "query", _int(1), "newest first: bulletins stored before this cursor"),
                    _param("unread", "query", {"type": "string", "enum": ["true", "false"]}, "only unopened ones"),
                    _param("since", "query", TIME, "only those created at or after"),
                ],
            )
        },
        "/api/v1/follow": {
            "get": _op(
                "Follow: the user's new bulletins after a cursor (absent: from now), waiting up to `wait` seconds "
                "for the first; `next` is the cursor to ask from again, so a follower sees each bulletin once",
                "LinePage",
                parameters=[
                    _param("channel", "query", ID, "only this channel"),
                    _param("after", "query", _int(0), "the cursor of the last bulletin seen"),
                    _param("wait", "query", _int(0, MAX_WAIT), "seconds to wait for a new bulletin (default 0)"),
                ],
            )
        },
        "/api/v1/bulletin-ids": {
            "get": _op(
                "The bulletins (at most 10, and whether there are more) whose id begins with a prefix, among "
                "those the user may see: a contact point's channels, or all for an auditor",
                "Matches",
                parameters=[
                    _param("prefix", "query", ID_PREFIX, "8 to 64 hex characters of a bulletin id", required=True)
                ],
            )
        },
        "/api/v1/bulletins/{id}": {
            "get": _op(
                "Read one bulletin: audited, and receipted to its author as opened",
                "BulletinView",
                parameters=[BULLETIN_ID],
            )
        },
        "/api/v1/bulletins/{id}/forward": {
            "post": _op(
                "Forward a bulletin to another channel, where its handling allows",
                "Posted",
                status="201",
                body="Forward",
                parameters=[BULLETIN_ID, IDEMPOTENCY_KEY],
                headers=replayed,
            )
        },
        "/api/v1/peers": {"get": _op("Delivery status per partner node", array(ref("PeerStatus")))},
        "/api/v1/channels/{channel}/rfis": {
            "get": _op(
                "The channel's requests for information: open, answered (with the answers) and overdue",
                "RfiBoard",
                parameters=[CHANNEL],
            )
        },
        "/api/v1/channels/{channel}/webhooks": {
            "post": _op(
                "Register a webhook: each new bulletin's metadata (never its content) is POSTed to the URL, "
                "signed with the secret in this answer, shown once (administrators)",
                "RegisteredWebhook",
                status="201",
                body="NewWebhook",
                parameters=[CHANNEL],
            )
        },
        "/api/v1/webhooks": {"get": _op("The node's webhooks (administrators)", array(ref("Webhook")))},
        "/api/v1/webhooks/{id}": {
            "delete": _op(
                "Remove a webhook (administrators)",
                closed(["removed"], removed={"type": "integer", "minimum": 1}),
                parameters=[_param("id", "path", _int(1), "the webhook's id")],
            )
        },
        "/api/v1/channels/{channel}/stix": {
            "get": _op(
                "A STIX 2.1 bundle of the channel, or of one bulletin, under the TAXII policy (docs/stix.md)",
                STIX_BUNDLE,
                parameters=[CHANNEL, _param("bulletin", "query", HEX64, "only this bulletin (its full id)")],
            )
        },
    }
    titles = {
        "invite": "Invite a node, with rights",
        "rights": "Change a member's rights",
        "remove": "Remove a member, or withdraw an invitation",
        "grant-history": "Grant a member the bulletins from before it joined",
        "close": "Close the channel",
        "export": "Allow or stop TLP:AMBER+STRICT bulletins leaving members' nodes by TAXII or STIX export",
    }
    for action, (_, model) in MEMBERSHIP.items():
        summary = f"{titles[action]} (administrators of the owner node)"
        body = model.__name__ if model is not None else None
        paths[f"/api/v1/channels/{{channel}}/{action}"] = {
            "post": _op(summary, "Channel", body=body, parameters=[CHANNEL])
        }
    return paths


def _audit_paths() -> dict[str, Any]:
    return {
        "/api/v1/audit/entries": {
            "get": _op(
                "Audit entries after an index (auditors)",
                "AuditEntries",
                parameters=[
                    _param("after", "query", _int(-1), "entries after this index (default -1: from the start)"),
                    _param("limit", "query", _int(1, AUDIT_PAGE_LIMIT), "at most this many (default 100)"),
                ],
            )
        },
        "/api/v1/audit/log": {
            "get": _op(
                "Audit entries, filtered, oldest first; `next` is the cursor for `after` (auditors)",
                "AuditLogPage",
                parameters=[
                    _param("event", "query", AUDIT_NAME, "an event kind, or a prefix ending in *"),
                    _param("channel", "query", AUDIT_NAME, "entries about this channel"),
                    _param("peer", "query", AUDIT_NAME, "entries naming this node"),
                    _param("bulletin", "query", HEX64, "entries about this bulletin"),
                    _param("since", "query", TIME, "entries at or after"),
                    _param("until", "query", TIME, "entries before"),
                    _param("after", "query", _int(-1), "entries after this index"),
                    _param("limit", "query", _int(1, AUDIT_PAGE_LIMIT), "at most this many (default 100)"),
                ],
            )
        },
        "/api/v1/audit/checkpoint": {
            "get": _op("The latest signed checkpoint, with its cosignatures (auditors, administrators)", "Checkpoint"),
            "post": _op(
                "Sign a checkpoint now and, unless witness=false, ask the partners to co-sign it",
                "SignedCheckpoint",
                parameters=[_param("witness", "query", {"type": "string", "enum": ["true", "false"]}, "default true")],
            ),
        },
        "/api/v1/audit/proof/inclusion": {
            "get": _op(
                "An entry with its inclusion proof in a signed checkpoint (auditors)",
                "InclusionProof",
                parameters=[
                    _param("index", "query", _int(0), "the entry", required=True),
                    _param("size", "query", _int(1), "the checkpoint's size (default: the latest)"),
                ],
            )
        },
        "/api/v1/audit/proof/consistency": {
            "get": _op(
                "A consistency proof from a size to a signed checkpoint (auditors)",
                "ConsistencyProof",
                parameters=[
                    _param("from", "query", _int(1), "the older size", required=True),
                    _param("to", "query", _int(1), "the checkpoint's size (default: the latest)"),
                ],
            )
        },
        "/api/v1/audit/export": {
            "get": _op(
                "The self-contained, offline-verifiable bundle, as JSON Lines (auditors)",
                {"type": "string"},
                parameters=[_param("bulletin", "query", HEX64, "only this bulletin's entries, with proofs")],
                media="application/x-ndjson",
            )
        },
        "/api/v1/audit/trace/{bulletin}": {
            "get": _op(
                "Every named node's evidence about one bulletin (auditors)",
                "Trace",
                parameters=[BULLETIN],
                partners=True,
            )
        },
        "/api/v1/audit/witnessed": {
            "get": _op("Partners' logs this node witnesses, and split views it caught", "Witnessed")
        },
    }


def _federation_paths() -> dict[str, Any]:
    def fed(summary: str, answer: str, **kw: Any) -> dict[str, Any]:
        return _op(summary, answer, security="mutualTLS", **kw)

    return {
        "/fed/v1/envelopes": {
            "post": fed(
                "A partner pushes a transaction; stored and audited before the signed receipts are returned",
                "TransactionReceipts",
                body="Transaction",
                partners=True,
                parameters=[
                    _param(
                        "Exchange-Receipt-Form",
                        "header",
                        {"type": "string", "enum": ["batches"]},
                        "batches: whole receipt batches in the batch form (protocol 10.4); else every receipt in full",
                    )
                ],
            )
        },
        "/fed/v1/channels/{channel}/events": {
            "get": fed(
                "A channel's log after a position, for a node it names",
                "ChannelEvents",
                parameters=[CHANNEL, _param("after", "query", _int(-1), "the last position known (default -1)")],
            )
        },
        "/fed/v1/channels/{channel}/envelopes": {
            "get": fed(
                "Catch-up: a page of a channel's envelopes after a cursor, or of one author's stream after a seq",
                "EnvelopePage",
                parameters=[
                    CHANNEL,
                    _param("after", "query", _int(0), "the cursor (default 0)"),
                    _param("limit", "query", _int(1, CATCHUP_LIMIT), "at most this many (default 200)"),
                    _param("author", "query", ID, "only this author's stream"),
                    _param("after_seq", "query", _int(0), "with author: after this seq (default 0)"),
                ],
            )
        },
        "/fed/v1/epochs/support": {
            "get": fed("This node takes envelope v2, and the wrap key it wants (protocol 15.12)", "EpochSupport")
        },
        "/fed/v1/channels/{channel}/epochs": {
            "get": fed(
                "A channel's epoch records after a number, and the history grants held for the asking member",
                "EpochPage",
                parameters=[CHANNEL, _param("after", "query", _int(-1), "the last epoch held (default -1)")],
            )
        },
        "/fed/v1/channels/{channel}/accept": {
            "post": fed(
                "An invited node accepts; the owner orders its signed acceptance into the log",
                "ChannelEvents",
                body="Acceptance",
                parameters=[CHANNEL],
            )
        },
        "/fed/v1/audit/checkpoint": {
            "get": fed(
                "The latest checkpoint, with a consistency proof from the size the witness saw",
                "WitnessCheckpoint",
                parameters=[_param("from", "query", _int(0), "the size the witness saw (default 0)")],
            )
        },
        "/fed/v1/audit/cosign": {
            "post": fed("A partner asks this node to co-sign its checkpoint", "CosignAnswer", body="CosignRequest")
        },
        "/fed/v1/audit/cosignatures": {
            "post": fed("A partner returns its cosignature of this node's checkpoint", "Stored", body="Cosignature")
        },
        "/fed/v1/audit/bulletins/{bulletin}": {
            "get": fed(
                "This node's entries about a bulletin with inclusion proofs, for its author and recipients",
                "Evidence",
                parameters=[BULLETIN],
            )
        },
        **_roster_paths(),
    }


def roster_schemas() -> dict[str, Any]:
    """The schemas of roster gossip's answers and offers."""
    return {
        "SignedRosterV2": {"type": "object", "description": "a signed roster v2 version (docs/protocol.md, 6a)"},
        "RosterPage": {
            "type": "object",
            "required": ["version", "versions"],
            "properties": {"version": _int(0), "versions": array(ref("SignedRosterV2"), max_items=32)},
        },
        "RosterOffer": array(ref("SignedRosterV2"), max_items=4),
        "RosterTaken": {
            "type": "object",
            "required": ["version", "hash", "added"],
            "properties": {"version": _int(1), "hash": {"type": "string"}, "added": _int(0)},
        },
    }


def _roster_paths() -> dict[str, Any]:
    """Roster gossip (docs/protocol.md, 6a.11); every /fed/ request and answer also carries the
    Exchange-Roster-Version header."""
    return {
        ROSTER_PATH: {
            "get": _op(
                "A partner pulls the signed roster versions after `after` (a page of them, oldest first)",
                "RosterPage",
                security="mutualTLS",
                parameters=[_param("after", "query", _int(0), "the version the partner holds (default 0)")],
            ),
            "post": _op(
                "Roster versions offered, by a partner or (without a client certificate) by a node that only "
                "a version this node lacks lists (its first contact, the one request it may make before it is "
                "known); at most 16 MiB, one offer per source every 10 s",
                "RosterTaken",
                body="RosterOffer",
                security="mutualTLS",
            ),
        }
    }


def openapi_document(server: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the node at `server`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "exchange node API",
            "version": "1",
            "description": "The client API (/api/v1, bearer tokens) and the federation API (/fed/v1, mutual TLS "
            "with a roster certificate) of one exchange node. Every refusal is RFC 9457 problem+json.",
        },
        "servers": [{"url": server}],
        "components": {
            "schemas": {**components(), **roster_schemas()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a local user's API token"},
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": "TLS 1.3 with the client certificate the federation roster lists for the node",
                },
            },
        },
        "paths": _client_paths() | _audit_paths() | _federation_paths(),
    }


@functools.lru_cache(maxsize=8)
def openapi_json(server: str) -> bytes:
    """The document as the node serves it, built once."""
    return json.dumps(openapi_document(server)).encode()
