"""This node's log asks C2SP tlog-witnesses to co-sign its checkpoints (c2sp.org/tlog-witness,
"add-checkpoint"), beside its partners' JSON witnessing (`exchange.service.audit.witness`).

Each round, the checkpoint the keeper signed is POSTed to `<url>/add-checkpoint` of every configured
witness with a consistency proof from the size that witness last co-signed (0 on first contact); a
409 `text/x.tlog.size` answer names the size it holds, and the request is made again from there. The
cosignature line returned must be a valid cosignature/v1 (type 0x04) by the witness's configured key
over our checkpoint; only then is it kept next to the partners' (`audit_cosignatures`, under the
witness's key name), where `audit verify` and trace evidence count it. A request that fails (no
answer, an error status, an answer that does not verify) is logged and counted as the partners'
are (`WitnessFailures`, partner = the witness's key name). The HTTP client is the `TlogClient` the
service is given.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from exchange.audit.checkpoint import WITNESS_PREFIX, check_cosignature_time
from exchange.audit.keeper import StoredCheckpoint
from exchange.audit.note import parse_note
from exchange.audit.tlog_witness import (
    ADD_CHECKPOINT,
    SIZE_CONTENT_TYPE,
    WITNESS_KEY_TYPE,
    VerifierKey,
    accepted_cosignature,
    add_checkpoint_body,
    parse_size_body,
    parse_verifier_key,
)
from exchange.audit.witness_sets import MAX_C2SP_WITNESSES
from exchange.clock import utc_now
from exchange.config import TlogWitnessConfig
from exchange.crypto import VerifyKey
from exchange.errors import ConfigError, InvalidInput, PeerRefused
from exchange.service.audit.keeper import LogKeeper
from exchange.service.audit.witness_failures import WitnessFailures

NODE_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")  # a roster node id's form (exchange.model.NodeIdStr)

MAX_NAME = 64  # the witness column of audit_cosignatures
ATTEMPTS = 3  # requests per round and witness: a 409 names the size to prove from, then once more


@dataclass(frozen=True)
class TlogReply:
    """A witness's HTTP answer."""

    status: int
    content_type: str
    body: bytes


class TlogClient(Protocol):
    """POSTs an add-checkpoint body to a witness (PeerError if it cannot be reached)."""

    async def post(self, url: str, body: bytes, ca_file: Path | None) -> TlogReply: ...


@dataclass(frozen=True)
class C2spWitness:
    """A configured C2SP witness: where to POST and the key its cosignatures must verify with."""

    url: str
    key: VerifierKey
    ca_file: Path | None = None

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/" + ADD_CHECKPOINT


def c2sp_witnesses(configs: Sequence[TlogWitnessConfig]) -> list[C2spWitness]:
    """The configured witnesses; ConfigError for more than MAX_C2SP_WITNESSES (a note co-signed by
    all of them and every designated witness must still parse), a malformed verifier key, one of
    another type than 0x04, a name in the exchange witness namespace or longer than 64 characters,
    or a duplicate."""
    if len(configs) > MAX_C2SP_WITNESSES:
        raise ConfigError(f"tlog_witnesses: at most {MAX_C2SP_WITNESSES} C2SP witnesses, not {len(configs)}")
    found: dict[str, C2spWitness] = {}
    for config in configs:
        try:
            vkey = parse_verifier_key(config.vkey, WITNESS_KEY_TYPE)
        except InvalidInput as exc:
            raise ConfigError(f"tlog_witnesses: {config.url}: {exc.detail}") from exc
        if (
            vkey.name.startswith(WITNESS_PREFIX)
            or NODE_ID.fullmatch(vkey.name)
            or len(vkey.name) > MAX_NAME
            or vkey.name in found
        ):
            raise ConfigError(
                f"tlog_witnesses: {vkey.name!r}: a witness name is unique, at most {MAX_NAME} characters, "
                f"outside {WITNESS_PREFIX} (the federation's own witnesses) and not of the form of a node id "
                "(its cosignatures would be taken for that node's): a host name such as witness.example.org"
            )
        found[vkey.name] = C2spWitness(config.url, vkey, config.ca_file)
    return list(found.values())


class TlogPush:
    """Put this node's checkpoints to its C2SP witnesses and keep their verified cosignatures."""

    def __init__(
        self,
        me: str,
        keeper: LogKeeper,
        witnesses: Sequence[C2spWitness],
        client: TlogClient | None,
        failures: WitnessFailures | None = None,
    ) -> None:
        if witnesses and client is None:
            raise ConfigError("tlog_witnesses are configured but the node has no HTTP client for them")
        self.me = me
        # Failed requests, logged and counted by witness key name, direction `push` (GET /metrics)
        self.failures = failures if failures is not None else WitnessFailures(me)
        self.keeper = keeper
        self.witnesses = list(witnesses)
        self._client = client
        self._locks = {w.name: asyncio.Lock() for w in self.witnesses}
        self._held: dict[str, int] = {}  # the size each witness last said it holds

    @property
    def keys(self) -> dict[str, VerifyKey]:
        """Witness key name -> key, for checking the cosignatures kept."""
        return {w.name: w.key.key for w in self.witnesses}

    async def push(self, cp: StoredCheckpoint) -> dict[str, str]:
        """Ask every witness to co-sign `cp`; return witness name -> outcome."""
        outcomes = await asyncio.gather(*(self._push(w, cp) for w in self.witnesses))
        return {w.name: o for w, o in zip(self.witnesses, outcomes, strict=True)}

    async def _push(self, witness: C2spWitness, cp: StoredCheckpoint) -> str:
        if witness.name in cp.witnesses:
            return "cosigned"
        async with self._locks[witness.name]:
            try:
                return await self._ask(witness, cp)
            except Exception as exc:  # one witness's failure must not stop the others
                what = f"C2SP witness {witness.name} did not co-sign checkpoint {cp.size}"
                return self.failures.record(witness.name, "push", exc, what)

    async def _ask(self, witness: C2spWitness, cp: StoredCheckpoint) -> str:
        assert self._client is not None
        text = parse_note(cp.note).text
        old = max(self._held.get(witness.name, 0), await self.keeper.cosigned_size(witness.name))
        for _ in range(ATTEMPTS):
            if old > cp.size:
                # Not kept for the next rounds: a witness that named a size beyond this log's (its
                # own error, or a reset) is asked again then, not skipped for good until a restart;
                # and the refusal is a failure, logged and counted (GET /metrics), not a quiet outcome.
                self._held.pop(witness.name, None)
                raise PeerRefused(f"{witness.name} holds size {old}, beyond this log's {cp.size}", 409)
            proof = await self.keeper.consistency(old, cp.size) if 0 < old < cp.size else []
            reply = await self._client.post(witness.endpoint, add_checkpoint_body(old, proof, cp.note), witness.ca_file)
            if reply.status == 200:
                sig = accepted_cosignature(reply.body, text, witness.key)  # BadSignature: nothing kept
                check_cosignature_time(sig, cp.at, int(utc_now().timestamp()))  # InvalidInput: nor here
                await self.keeper.add_cosignature(cp.size, witness.name, sig.line())
                self._held[witness.name] = cp.size
                return "cosigned"
            if reply.status == 409 and reply.content_type == SIZE_CONTENT_TYPE:
                old = parse_size_body(reply.body)
                self._held[witness.name] = old
                continue
            detail = reply.body[:200].decode("utf-8", "replace").strip()
            raise PeerRefused(f"{witness.name} answered {reply.status}: {detail}", reply.status)
        return "stale"
