"""The node's hybrid (ML-KEM-768 + X25519) wrap key for epoch keys (docs/protocol.md, 15.4, 15.12),
read from its keys folder when the node is built."""

from __future__ import annotations

from exchange.config import NodeConfig
from exchange.crypto import b64d
from exchange.crypto.epoch import HybridDecryptionKey
from exchange.errors import ConfigError, InvalidInput

# In the node's keys folder: base64url of its 32-byte ML-KEM-768 + X25519 (X-Wing) seed (15.4).
HYBRID_KEY_FILE = "epoch-hybrid.key"


def epoch_hybrid_key(config: NodeConfig) -> HybridDecryptionKey | None:
    """The node's hybrid wrap key, if its keys folder holds one (SuiteUnsupported if this
    `cryptography` cannot use it); None: it takes X25519 wraps only."""
    path = config.keys_dir / HYBRID_KEY_FILE
    if not path.is_file():
        return None
    try:
        return HybridDecryptionKey(b64d(path.read_text(encoding="ascii").strip()))
    except (InvalidInput, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not base64url of a 32-byte hybrid key seed") from exc
