"""A bulletin's chain of custody across the nodes of its channel, from their audit logs.

Each node named by the envelope (its author and its recipients) answers with the entries of its
own log that concern the bulletin, each with an inclusion proof in a checkpoint it signed.
`check_evidence` verifies that answer; `chain_of_custody` lines the verified entries up:

    posted at the author
    then, for each recipient: sent (queued) -> received by it -> its signed receipt held -> opened by

A step that must have happened but is in no log is a GAP. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exchange.audit.events import (
    BULLETIN_OPENED,
    BULLETIN_POSTED,
    BULLETIN_RECEIVED,
    SEND_REFUSED,
    delivered_to,
    sent_to,
)
from exchange.audit.log import CheckpointInfo, KeyRing, LogVerifier
from exchange.crypto import b64d
from exchange.errors import AuditTampered, InvalidInput

OK, GAP, NONE, REFUSED = "ok", "gap", "none", "refused"


@dataclass(frozen=True)
class Evidence:
    """One node's verified audit entries about a bulletin, or why there are none."""

    node: str
    entries: tuple[dict[str, Any], ...] = ()
    checkpoint: CheckpointInfo | None = None
    error: str | None = None  # the node did not answer, refused, or answered with bad evidence
    invalid: bool = False  # the answer failed verification: a finding in itself

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Entries of this event whose fields equal `match`."""
        return [e for e in self.entries if e.get("event") == event and all(e.get(k) == v for k, v in match.items())]


def check_evidence(raw: Mapping[str, Any], bulletin: str, keys: KeyRing) -> Evidence:
    """Verify one node's answer: a checkpoint it signed and entries proven to be in it.

    Raises AuditTampered if a signature or proof fails, or an entry is not about the bulletin.
    """
    node = raw.get("node")
    if not isinstance(node, str):
        raise InvalidInput("evidence names no node")
    if raw.get("error") is not None:
        return Evidence(node, error=str(raw["error"]))
    items = raw.get("entries")
    if not isinstance(items, list):
        raise InvalidInput(f"the evidence of {node} holds no list of entries")
    if raw.get("checkpoint") is None:
        if items:
            raise AuditTampered(f"{node} sent entries without a checkpoint to prove them")
        return Evidence(node)
    verifier = LogVerifier(node, keys)
    info = verifier.checkpoint(str(raw["checkpoint"]))
    entries: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("entry"), str) or type(item.get("idx")) is not int:
            raise InvalidInput(f"a malformed evidence entry from {node}")
        try:
            data = item["entry"].encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise InvalidInput(f"evidence entry {item['idx']} from {node} is not text") from exc
        proof = item.get("proof")
        if not isinstance(proof, list) or not all(isinstance(p, str) for p in proof):
            raise InvalidInput(f"an evidence entry from {node} has no proof")
        verifier.proven_entry(item["idx"], data, info.size, [b64d(p) for p in proof])
        body = json.loads(data)  # proven_entry checked it is a JSON object
        if not isinstance(body.get("at"), str):
            raise AuditTampered(f"{node} sent entry {item['idx']}, whose time is not a timestamp")
        if bulletin not in (body.get("bulletin"), body.get("ref")):
            raise AuditTampered(f"{node} sent entry {item['idx']}, which is not about bulletin {bulletin}")
        entries.append(body)
    return Evidence(node, tuple(entries), info)


@dataclass(frozen=True)
class Step:
    """One link of the chain: recorded (ok), missing (gap), optional and absent (none), or refused."""

    kind: str  # posted, sent, received, receipt, opened
    node: str  # the node whose log holds (or should hold) the step
    status: str
    detail: str
    at: str | None = None
    idx: int | None = None


@dataclass(frozen=True)
class Leg:
    """Custody of the bulletin towards one recipient node."""

    recipient: str
    steps: tuple[Step, ...]

    def step(self, kind: str) -> Step:
        """The step of this kind."""
        return next(s for s in self.steps if s.kind == kind)


@dataclass(frozen=True)
class Trace:
    """A bulletin's chain of custody: the posting, one leg per recipient, and the evidence."""

    bulletin: str
    channel: str
    author: str
    recipients: tuple[str, ...]
    posted: Step
    legs: tuple[Leg, ...]
    author_opened: Step
    evidence: tuple[Evidence, ...]

    @property
    def gaps(self) -> list[Step]:
        """Every step that must have happened but is in no log."""
        steps = [self.posted, *(s for leg in self.legs for s in leg.steps)]
        return [s for s in steps if s.status == GAP]

    @property
    def invalid(self) -> list[Evidence]:
        """Answers that failed verification."""
        return [e for e in self.evidence if e.invalid]


def _why_missing(evidence: Evidence | None, node: str, what: str) -> str:
    if evidence is None:
        return f"{node} was not asked"
    if evidence.error is not None:
        return f"{node}'s log could not be checked: {evidence.error}"
    return f"{node}'s log holds no entry of {what}"


def _opened(node: str, ev: Evidence | None) -> Step:
    opened = ev.find(BULLETIN_OPENED) if ev else []
    if opened:
        who = "; ".join(f"{e.get('user')} at {e.get('at')}" for e in opened)
        return Step("opened", node, OK, f"opened by {who}", opened[0].get("at"), opened[0].get("idx"))
    if ev is None or ev.error is not None:
        return Step("opened", node, NONE, _why_missing(ev, node, "an opening"))
    return Step("opened", node, NONE, f"not opened at {node}")


def _receipt(
    r: str, author: str, at_author: Evidence | None, received: Sequence[dict[str, Any]], evidence: Sequence[Evidence]
) -> Step:
    """R's receipt as held by the author or a relayer (a node R's log says it received the bulletin
    from): never by R's own log, in which a reader that withholds its receipt could claim one, nor
    by any other node's, which could vouch for a receipt R withheld from the author."""
    holders = ({author} | {e.get("from") for e in received}) - {r}
    delivered = sorted(
        ((ev_.node, e) for ev_ in evidence if ev_.node in holders for e in ev_.entries if r in delivered_to(e)),
        key=lambda held: held[0] != author,  # the author's own copy first
    )
    if delivered:
        node, e = delivered[0]
        return Step(
            "receipt", node, OK, f"{r}'s signed receipt of {delivered_to(e)[r]} held", e.get("at"), e.get("idx")
        )
    refused = at_author.find(SEND_REFUSED, to=r) if at_author else []
    if refused:
        e = refused[0]
        return Step("receipt", author, REFUSED, f"{r} refused it: {e.get('reason')}", e.get("at"), e.get("idx"))
    why = f"{author}'s log holds no receipt from {r} (withheld, lost, or not delivered yet)"
    if at_author is None or at_author.error is not None:
        why = _why_missing(at_author, author, f"a receipt from {r}")
    return Step("receipt", author, GAP, why)


def chain_of_custody(
    bulletin: str, channel: str, author: str, recipients: Sequence[str], evidence: Sequence[Evidence]
) -> Trace:
    """Line up the verified entries of every node into the bulletin's chain of custody."""
    by_node = {e.node: e for e in evidence}
    at_author = by_node.get(author)
    posts = at_author.find(BULLETIN_POSTED) if at_author else []
    if posts:
        p = posts[0]
        posted = Step(
            "posted", author, OK, f"posted by {p.get('user')} (seq {p.get('seq')})", p.get("at"), p.get("idx")
        )
    else:
        posted = Step("posted", author, GAP, _why_missing(at_author, author, "the posting"))
    queued_for = set(posts[0].get("recipients", [])) if posts else set()
    legs = []
    for r in recipients:
        if r == author:
            continue
        ev = by_node.get(r)
        steps: list[Step] = []
        sent = [e for e in at_author.entries if r in sent_to(e)] if at_author else []
        if sent:
            steps.append(Step("sent", author, OK, f"sent to {r}", sent[0].get("at"), sent[0].get("idx")))
        elif r in queued_for:
            steps.append(
                Step("sent", author, OK, f"queued for {r} when posted", posts[0].get("at"), posts[0].get("idx"))
            )
        elif at_author is None or at_author.error is not None:
            steps.append(Step("sent", author, GAP, _why_missing(at_author, author, f"a sending to {r}")))
        else:
            steps.append(Step("sent", author, GAP, f"{author}'s log shows no sending to {r}"))
        received = ev.find(BULLETIN_RECEIVED) if ev else []
        if received:
            e = received[0]
            steps.append(Step("received", r, OK, f"received from {e.get('from')}", e.get("at"), e.get("idx")))
        else:
            steps.append(Step("received", r, GAP, _why_missing(ev, r, "receiving it")))
        steps.append(_receipt(r, author, at_author, received, evidence))
        steps.append(_opened(r, ev))
        legs.append(Leg(r, tuple(steps)))
    return Trace(
        bulletin, channel, author, tuple(recipients), posted, tuple(legs), _opened(author, at_author), tuple(evidence)
    )


def assemble(raw: Mapping[str, Any], keys: KeyRing) -> Trace:
    """Verify every node's evidence in a trace answer of the API, then build the chain.

    Evidence that fails verification is kept as an invalid answer from that node, so the trace
    still shows what the other nodes proved.
    """
    bulletin, header = raw.get("bulletin"), raw.get("header")
    if (
        not isinstance(bulletin, str)
        or not isinstance(header, dict)
        or not isinstance(raw.get("evidence"), list)
        or not all(isinstance(header.get(k), str) for k in ("channel", "author"))
        or not isinstance(header.get("recipients"), list)
    ):
        raise InvalidInput("not a trace answer")
    evidence = []
    for item in raw["evidence"]:
        if not isinstance(item, dict):
            evidence.append(Evidence("?", error="INVALID evidence: not a JSON object", invalid=True))
            continue
        try:
            evidence.append(check_evidence(item, bulletin, keys))
        except (AuditTampered, InvalidInput) as exc:
            evidence.append(Evidence(str(item.get("node")), error=f"INVALID evidence: {exc.detail}", invalid=True))
    return chain_of_custody(
        bulletin, str(header["channel"]), str(header["author"]), [str(r) for r in header["recipients"]], evidence
    )
