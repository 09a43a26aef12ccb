"""Wire models of envelope v2 (docs/protocol.md, 15): epoch records, history grants, v2 envelopes.

Strict, frozen and closed like exchange.model, whose field types they reuse.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from exchange.crypto.encoding import canonical_json
from exchange.model import (
    INT32_MAX,
    MAX_RECIPIENTS,
    B64Ciphertext,
    B64Key,
    B64Signature,
    ChannelIdStr,
    Handling,
    Hex64,
    Kid,
    NodeIdStr,
    StateRef,
    Timestamp,
    Version2,
)

CONTENT_SUITE = "epoch-hkdfsha256-aes256gcm"
MAX_GRANT_EPOCHS = 1000  # epochs one history grant wraps; more history takes several grants
# base64url of a wrap of the hybrid suite (1168 bytes: 1558 characters), with room.
MAX_EPOCH_WRAP_TEXT = 1600

WrapSuiteName = Literal["x25519-hkdfsha256-aes256gcm", "xwing-hkdfsha256-aes256gcm"]
B64EpochWrap = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=MAX_EPOCH_WRAP_TEXT)]
EpochNumber = Annotated[int, Field(ge=0, le=(1 << 53) - 1)]

_WIRE = ConfigDict(extra="forbid", frozen=True, strict=True)


class EpochWrap(BaseModel):
    """The epoch key wrapped for one reader, with the key and the suite it is wrapped for."""

    model_config = _WIRE
    node: NodeIdStr
    kid: Kid
    suite: WrapSuiteName
    wrap: B64EpochWrap


class EpochRecord(BaseModel):
    """One epoch of a channel: its key, wrapped for every reader of one state, signed by the owner."""

    model_config = _WIRE
    v: Version2
    channel: ChannelIdStr
    owner: NodeIdStr
    n: EpochNumber
    prev: Hex64 | None
    state: StateRef
    created: Timestamp
    commitment: B64Key
    wraps: Annotated[list[EpochWrap], Field(min_length=1, max_length=MAX_RECIPIENTS)]
    signer: Kid
    signature: B64Signature

    @field_validator("wraps")
    @classmethod
    def _sorted_unique(cls, value: list[EpochWrap]) -> list[EpochWrap]:
        nodes = [w.node for w in value]
        if nodes != sorted(set(nodes)):
            raise ValueError("wraps must be sorted by node id, without repeats")
        return value

    @cached_property
    def readers(self) -> list[str]:
        return [w.node for w in self.wraps]

    @cached_property
    def canonical(self) -> bytes:
        """RFC 8785 form of the whole record, computed once: its hash is the epoch hash."""
        return canonical_json(self.model_dump(mode="json"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> EpochRecord:
        """A copy that computes its own `canonical` and `readers` (pydantic would copy the cached ones)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("canonical", None)
        copied.__dict__.pop("readers", None)
        return copied

    def wrap_for(self, node: str) -> EpochWrap | None:
        return next((w for w in self.wraps if w.node == node), None)


class EpochRef(BaseModel):
    """The epoch a v2 envelope is encrypted under: its number and its hash."""

    model_config = _WIRE
    n: EpochNumber
    hash: Hex64


class GrantedEpoch(BaseModel):
    model_config = _WIRE
    n: EpochNumber
    hash: Hex64
    wrap: B64EpochWrap


class HistoryGrant(BaseModel):
    """Earlier epoch keys wrapped for one member that the channel granted its history."""

    model_config = _WIRE
    v: Version2
    channel: ChannelIdStr
    owner: NodeIdStr
    node: NodeIdStr
    state: StateRef
    created: Timestamp
    kid: Kid
    suite: WrapSuiteName
    epochs: Annotated[list[GrantedEpoch], Field(min_length=1, max_length=MAX_GRANT_EPOCHS)]
    signer: Kid
    signature: B64Signature

    @field_validator("epochs")
    @classmethod
    def _ascending(cls, value: list[GrantedEpoch]) -> list[GrantedEpoch]:
        ns = [e.n for e in value]
        if any(a >= b for a, b in itertools.pairwise(ns)):
            raise ValueError("granted epochs must be sorted by n, without repeats")
        return value


class EnvelopeHeaderV2(BaseModel):
    """The signed, cleartext part of a v2 envelope. Its canonical hash is the bulletin id."""

    model_config = _WIRE
    v: Version2
    suite: Literal["epoch-hkdfsha256-aes256gcm"]
    channel: ChannelIdStr
    author: NodeIdStr
    signer: Kid
    seq: Annotated[int, Field(ge=1, le=INT32_MAX)]
    state: StateRef
    epoch: EpochRef
    handling: Handling
    created: Timestamp
    salt: B64Key
    ciphertext_sha256: B64Key

    @cached_property
    def canonical(self) -> bytes:
        """RFC 8785 form of the header, computed once."""
        return canonical_json(self.model_dump(mode="json"))


class EnvelopeV2(BaseModel):
    """A signed bulletin encrypted under a key derived from its channel's epoch key: no wraps."""

    model_config = _WIRE
    header: EnvelopeHeaderV2
    ciphertext: B64Ciphertext
    signature: B64Signature
