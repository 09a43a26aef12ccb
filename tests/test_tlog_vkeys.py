"""The pure parts the node's C2SP witnessing rests on (exchange.audit.tlog_witness): note verifier
keys (c2sp.org/signed-note), checkpoints of any C2SP log (c2sp.org/tlog-checkpoint), and picking a
witness's cosignature out of an add-checkpoint answer: good accepted, each bad one refused."""

from __future__ import annotations

import hashlib

import pytest

from exchange.audit.checkpoint import cosign
from exchange.audit.tlog_witness import (
    LOG_KEY_TYPE,
    WITNESS_KEY_TYPE,
    LogCheckpoint,
    accepted_cosignature,
    cosignature_body,
    parse_verifier_key,
    verifier_key,
)
from exchange.crypto import SigningKey
from exchange.errors import BadSignature, InvalidInput

SUMDB = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"  # golang.org/x/mod/sumdb
WITNESS = SigningKey(hashlib.sha256(b"tlog vkeys test witness").digest())
OTHER = SigningKey(hashlib.sha256(b"tlog vkeys test other").digest())
TEXT = "log.example/a\n3\nRcCI1Nk56ZcSmIEfIn0SleqtV7uvrlXNccFx595Iwl0=\n"


def test_a_published_verifier_key_parses_and_renders_back() -> None:
    vkey = parse_verifier_key(SUMDB, LOG_KEY_TYPE)
    assert (vkey.name, vkey.key_id.hex(), vkey.sig_type) == ("sum.golang.org", "033de0ae", 0x01)
    assert vkey.render() == SUMDB
    mine = verifier_key("witness.test/w", WITNESS_KEY_TYPE, WITNESS.verify_key)
    again = parse_verifier_key(mine.render(), WITNESS_KEY_TYPE)
    assert (again.name, again.key_id, again.sig_type, again.key.raw) == (
        mine.name,
        mine.key_id,
        4,
        WITNESS.verify_key.raw,
    )


@pytest.mark.parametrize(
    ("text", "sig_type"),
    [
        (SUMDB, WITNESS_KEY_TYPE),  # a log key where a witness key is expected
        (SUMDB.replace("033de0ae", "033de0af"), LOG_KEY_TYPE),  # key ID of another key
        (SUMDB.replace("033de0ae", "033DE0AE"), LOG_KEY_TYPE),  # hex in capitals
        (SUMDB.replace("sum.golang.org", "sum golang"), LOG_KEY_TYPE),  # a space in the name
        ("sum.golang.org+033de0ae", LOG_KEY_TYPE),  # no key
        (SUMDB[:-4], LOG_KEY_TYPE),  # a key of 29 bytes
        (SUMDB + "A", LOG_KEY_TYPE),  # not base64
        ("+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8", LOG_KEY_TYPE),  # no name
    ],
)
def test_a_bad_verifier_key_is_refused(text: str, sig_type: int) -> None:
    with pytest.raises(InvalidInput):
        parse_verifier_key(text, sig_type)


def test_a_foreign_checkpoint_may_have_any_origin_line() -> None:
    cp = LogCheckpoint.parse("go.sum database tree\n35225469\nvt5T6GaLCXvyHFl9VUvvItR43XZxfLgftEcTyO3eJCQ=\n")
    assert (cp.origin, cp.size) == ("go.sum database tree", 35225469)
    assert LogCheckpoint.parse(TEXT + "an extension\n").extensions == ("an extension",)


@pytest.mark.parametrize(
    "text",
    [
        "\n3\nRcCI1Nk56ZcSmIEfIn0SleqtV7uvrlXNccFx595Iwl0=\n",  # empty origin
        "log.example/a\n03\nRcCI1Nk56ZcSmIEfIn0SleqtV7uvrlXNccFx595Iwl0=\n",  # leading zero
        "log.example/a\n3\nRcCI1Nk56ZcSmIEfIn0SleqtV7uvrlXNccFx595Iwl0\n",  # unpadded
        "log.example/a\n3\nRcCI\n",  # not 32 bytes
        "log.example/a\n3\n",  # no root
        TEXT + "\n",  # an empty extension line
        "log.example/a\n99999999999999999999\nRcCI1Nk56ZcSmIEfIn0SleqtV7uvrlXNccFx595Iwl0=\n",
    ],
)
def test_a_malformed_foreign_checkpoint_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        LogCheckpoint.parse(text)


def test_the_witness_cosignature_is_picked_and_checked() -> None:
    vkey = verifier_key("witness.test/w", WITNESS_KEY_TYPE, WITNESS.verify_key)
    good = cosign(TEXT, "witness.test/w", WITNESS, 1764460800)
    other = cosign(TEXT, "witness.test/other", OTHER, 1764460800)
    assert accepted_cosignature(cosignature_body([other, good]), TEXT, vkey) == good
    with pytest.raises(BadSignature):  # only another witness's line
        accepted_cosignature(cosignature_body([other]), TEXT, vkey)
    with pytest.raises(BadSignature):  # our name and key ID, but another key's signature
        forged = cosign(TEXT, "witness.test/w", OTHER, 1764460800)
        accepted_cosignature(cosignature_body([type(good)(good.name, good.key_id, forged.signature)]), TEXT, vkey)
    with pytest.raises(BadSignature):  # a cosignature of another checkpoint
        accepted_cosignature(cosignature_body([good]), TEXT.replace("\n3\n", "\n4\n"), vkey)
    with pytest.raises(InvalidInput):  # not a signature line
        accepted_cosignature(b"hello\n", TEXT, vkey)
