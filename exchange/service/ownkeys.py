"""This node's own keys across rotations (docs/protocol.md, 6a.13; docs/operations.md, "Rotating a
node's keys").

`exchange node rotate` makes a new key in the node's keys folder, on its own host; the private key
never leaves it. Once the node runs on a roster version that lists that key as its active one, it
takes the key from the folder and signs or opens with it from then on, without a restart; the
decryption keys it had stay held, so what was wrapped for them still opens. A new TLS key is
presented from then on, by the server to handshakes that begin after it and by new client sessions
(partners on that version accept the retiring one too, until the overlap ends), and copied to the
folder's `presented.crt`, which the node's CLI trusts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from exchange.crypto import NodeKeys
from exchange.errors import ConfigError
from exchange.keystore import NodeKeyFiles, TlsIdentity
from exchange.protocol.roster import Federation

log = logging.getLogger("exchange.node")


class OwnKeys:
    """Follows the roster for this node's own signing and encryption keys: `keys` is the one
    NodeKeys that the node's parts read through, swapped whole (`NodeKeys.install`)."""

    def __init__(self, me: str, folder: Path, keys: NodeKeys, tls: TlsIdentity | None = None) -> None:
        self.me = me
        self.files = NodeKeyFiles(folder)
        self.keys = keys
        self.tls = tls  # the certificate presented, moved in place (the server and client sessions share it)

    def tls_identity(self) -> TlsIdentity:
        if self.tls is None:
            raise ConfigError(f"{self.me} was started without its TLS identity")
        return self.tls

    def follow(self, fed: Federation) -> bool:
        """Hold the keys that `fed` lists as this node's current ones: whether the signing or
        encryption key changed (the TLS identity moves in place; its users read it at each install).

        A listed key that the folder does not hold (a rotation proposed from a request this host
        never made) is logged and changes nothing: the node keeps signing with the key it has,
        which its partners refuse once that key is no longer accepted (6a.13).
        """
        node = fed.node(self.me)
        self._follow_tls(node.tls_pin, fed.roster.version)
        held = (self.keys.signing.kid, self.keys.decryption.kid)
        if (node.signing_kid, node.encryption_kid) == held:
            return False
        try:
            new = self.files.load(node.signing_kid, node.encryption_kid)
        except ConfigError as exc:
            log.error("%s keeps its keys: roster version %d lists others: %s", self.me, fed.roster.version, exc)
            return False
        self.keys.install(new)
        log.info(
            "%s signs with %s and opens with %s from roster version %d (former decryption keys held: %d)",
            self.me,
            new.signing.kid,
            new.decryption.kid,
            fed.roster.version,
            len(new.former),
        )
        return True

    def _follow_tls(self, pin: str, version: int) -> None:
        if self.tls is None or self.tls.pin == pin:
            return
        try:
            new = self.files.tls_identity(pin)
        except ConfigError as exc:
            log.error("%s keeps its TLS key: roster version %d lists another: %s", self.me, version, exc)
            return
        self.tls.use(new)
        try:
            self.files.write_presented(new)  # what the node's CLI trusts from now on
        except (OSError, ConfigError) as exc:
            log.error("%s could not record its new TLS certificate for its CLI: %s", self.me, exc)
        log.info("%s presents the TLS certificate %s from roster version %d", self.me, new.cert.name, version)
