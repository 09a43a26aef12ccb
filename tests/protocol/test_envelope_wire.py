"""`build_envelope_bytes`, the author's way to an envelope: the bytes `envelope_bytes` writes for the
same envelope, whatever the ciphertext's length, and the same bound on the payload as the model.
"""

from __future__ import annotations

from typing import Any

import pytest

from exchange.crypto import SealedContent, b64d, strict_loads
from exchange.errors import InvalidInput
from exchange.model import MAX_CIPHERTEXT, MAX_PAYLOAD_BYTES, Bulletin, NodeId
from exchange.protocol import envelope
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope import (
    BuiltEnvelope,
    build_envelope_bytes,
    envelope_bytes,
    open_envelope,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from exchange.protocol.roster import Federation
from tests.vectors.make_vectors import (
    ENVELOPE_FILE,
    ReplayRandom,
    decryption_key,
    recorded_federation,
    recorded_state,
    signing_key,
)

V: dict[str, Any] = strict_loads(ENVELOPE_FILE.read_text("utf-8"))
INPUTS, OUTPUTS = V["inputs"], V["outputs"]
POST = INPUTS["post"]
DRAWS = [b64d(d) for d in INPUTS["rng"]["draws"]]  # the content key, then the nonce


@pytest.fixture(scope="module")
def fed() -> Federation:
    return recorded_federation(OUTPUTS)


@pytest.fixture(scope="module")
def state(fed: Federation) -> ChannelState:
    return recorded_state(fed, OUTPUTS)


def built(fed: Federation, state: ChannelState, payload: bytes) -> BuiltEnvelope:
    return build_envelope_bytes(
        payload,
        Bulletin.model_validate(INPUTS["bulletin"]).handling,
        state=state,
        author=NodeId(POST["author"]),
        key=signing_key(POST["author"]),
        seq=POST["seq"],
        readers=[(n, fed.encryption_key(n)) for n in state.readers],
        created=POST["created"],
        rng=ReplayRandom(DRAWS),
    )


def same_as_the_model_writes(out: BuiltEnvelope) -> None:
    """`out.wire` is what `envelope_bytes` writes for its header, wraps and ciphertext (the HPKE
    wraps are random, so the envelope is re-signed over the wraps it has: Ed25519 is deterministic)."""
    env = parse_envelope(bytes(out.wire))
    assert env.header == out.header
    again = sign_envelope(out.header, env.wraps, b64d(env.ciphertext), signing_key(POST["author"]))
    assert envelope_bytes(again) == out.wire


def test_the_golden_bulletin_gives_the_golden_header_and_ciphertext(fed: Federation, state: ChannelState) -> None:
    bulletin = Bulletin.model_validate(INPUTS["bulletin"])
    out = built(fed, state, bulletin.payload_bytes)
    assert out.header.canonical.decode() == OUTPUTS["header_jcs"]
    assert out.id == OUTPUTS["bulletin_id"]
    env = parse_envelope(bytes(out.wire))
    assert env.ciphertext == OUTPUTS["content"]["ciphertext"]
    same_as_the_model_writes(out)
    # With the wraps recorded in the vector, the golden envelope, byte for byte.
    golden = sign_envelope(out.header, OUTPUTS["envelope"]["wraps"], b64d(env.ciphertext), signing_key(POST["author"]))
    assert envelope_bytes(golden).decode() == OUTPUTS["envelope_jcs"]
    assert verify_envelope(env, fed, state) == out.id
    for r in env.header.recipients:
        assert open_envelope(env, out.id, NodeId(r.node), decryption_key(r.node)) == bulletin


CHUNK = envelope._B64_CHUNK
TAG = 16  # the AES-GCM tag: a ciphertext is 16 bytes longer than its payload


@pytest.mark.parametrize(
    "size",
    [0, 1, 2, 3, 4, CHUNK - TAG - 1, CHUNK - TAG, CHUNK - TAG + 1, CHUNK - TAG + 2, 3 * CHUNK - TAG + 5, 5 * CHUNK],
)
def test_the_ciphertext_is_encoded_whole_at_every_chunk_boundary(
    size: int, fed: Federation, state: ChannelState
) -> None:
    payload = bytes(i % 251 for i in range(size))
    out = built(fed, state, payload)
    env = parse_envelope(bytes(out.wire))
    assert b64d(env.ciphertext) == SealedContent(payload, ReplayRandom(DRAWS)).ciphertext
    assert len(env.ciphertext) == (4 * (size + TAG) + 2) // 3
    assert envelope_bytes(env) == out.wire
    same_as_the_model_writes(out)


def test_a_payload_at_the_bound_is_built_and_one_byte_more_is_refused(fed: Federation, state: ChannelState) -> None:
    out = built(fed, state, bytes(MAX_PAYLOAD_BYTES))
    env = parse_envelope(bytes(out.wire))
    assert len(env.ciphertext) <= MAX_CIPHERTEXT
    assert verify_envelope(env, fed, state) == out.id
    with pytest.raises(InvalidInput, match="more than"):
        built(fed, state, bytes(MAX_PAYLOAD_BYTES + 1))
