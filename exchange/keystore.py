"""Key files on disk: private files are written 0600 and never overwritten without force."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from exchange.clock import utc_now
from exchange.config import NodeConfig
from exchange.crypto import (
    DecryptionKey,
    NodeKeys,
    SigningKey,
    VerifyKey,
    b64d,
    b64e,
    generate_tls_identity,
    spki_pin,
    strict_loads,
)
from exchange.errors import ConfigError, Conflict, ExchangeError, InvalidInput
from exchange.model import ChannelEvent, SignedRoster
from exchange.protocol.roster import Federation

SIGNING = "signing.key"
ENCRYPTION = "encryption.key"
TLS_KEY = "tls.key"
TLS_CERT = "tls.crt"
PRESENTED = "presented.crt"  # a copy of the certificate the node presents now
PUBLIC = "public.json"
ROSTER_PIN = "roster-pin.json"


def write_private(path: Path, data: bytes, *, force: bool = False) -> None:
    """Create `path` with mode 0600; refuse to replace an existing file unless `force`.

    Always written to a new file, never through an existing one or a symbolic link: a file left
    with mode 0644 (a restored or copied keys folder) kept that mode while `--force` wrote the new
    key into it, and a link had the key written where it pointed. With `force` the new file (0600
    from its creation) then replaces the old one, which readers see whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force and (path.exists() or path.is_symlink()):
        raise Conflict(f"{path} exists; use --force to replace it")
    target = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp") if force else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as exc:
        raise Conflict(f"{path} exists; use --force to replace it") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask made of the mode
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(target, path)
    except BaseException:
        if force:
            target.unlink(missing_ok=True)
        raise


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"missing key file {path}; run `exchange keys generate` first") from exc


@dataclass(frozen=True)
class NodeKeyFiles:
    """The key folder of one node: keys/<node>/."""

    folder: Path

    @property
    def tls_key(self) -> Path:
        return self.folder / TLS_KEY

    @property
    def tls_cert(self) -> Path:
        return self.folder / TLS_CERT

    def exists(self) -> bool:
        return (self.folder / SIGNING).exists()

    def generate(self, node_id: str, *, force: bool = False) -> NodeKeys:
        """Create all key material of a node. Existing keys are kept unless `force`."""
        if self.exists() and not force:
            raise Conflict(f"keys already exist in {self.folder}; use --force to replace them")
        keys = NodeKeys.generate()
        tls_key, tls_cert = generate_tls_identity(f"exchange node {node_id}", utc_now())
        write_private(self.folder / SIGNING, b64e(keys.signing.private_bytes()).encode() + b"\n", force=force)
        write_private(self.folder / ENCRYPTION, b64e(keys.decryption.private_bytes()).encode() + b"\n", force=force)
        write_private(self.tls_key, tls_key, force=force)
        write_public(self.tls_cert, tls_cert)
        public = {
            "node": node_id,
            "signing_key": b64e(keys.signing.verify_key.raw),
            "signing_kid": keys.signing.kid,
            "encryption_key": b64e(keys.decryption.public.raw),
            "encryption_kid": keys.decryption.kid,
            "tls_pin": spki_pin(tls_cert),
        }
        write_public(self.folder / PUBLIC, json.dumps(public, indent=2).encode() + b"\n")
        return keys

    def load(self, signing_kid: str | None = None, encryption_kid: str | None = None) -> NodeKeys:
        """The node's keys: those of `signing.key` and `encryption.key`, or after a rotation the
        ones with the kids the roster lists as active (`signing-<kid>.key`, `encryption-<kid>.key`,
        written by `exchange node rotate`). Every other decryption key of the folder is kept as a
        former one: what was wrapped for it still opens."""
        try:
            signing = {k.kid: k for k in (SigningKey(_read(p)) for p in self._files(SIGNING))}
            decryption = {k.kid: k for k in (DecryptionKey(_read(p)) for p in self._files(ENCRYPTION))}
        except (InvalidInput, UnicodeDecodeError) as exc:
            raise ConfigError(f"unreadable key file in {self.folder}") from exc
        first_signing, first_decryption = next(iter(signing.values())), next(iter(decryption.values()))
        sign = signing.get(signing_kid) if signing_kid else first_signing
        current = decryption.get(encryption_kid) if encryption_kid else first_decryption
        if sign is None or current is None:
            missing = signing_kid if sign is None else encryption_kid
            raise ConfigError(f"no key with kid {missing} in {self.folder}: the roster lists one this host never made")
        return NodeKeys(sign, current, [k for k in decryption.values() if k.kid != current.kid])

    def _files(self, name: str) -> list[Path]:
        """`name` (read_file: an error if missing) and the rotated keys of its use, oldest name first."""
        stem = name.removesuffix(".key")
        return [self.folder / name, *sorted(self.folder.glob(f"{stem}-*.key"))]

    def rotated(self, use: str, kid: str) -> Path:
        """Where `exchange node rotate` writes a new key of `use` ("signing" or "encryption")."""
        return self.folder / f"{use}-{kid}.key"

    def tls_cert_pem(self) -> str:
        return read_file(self.tls_cert).decode("ascii")

    @property
    def presented_cert(self) -> Path:
        """The certificate the running node presents now (written at start and at each TLS rotation):
        what its own CLI, and an operator's scraper or TAXII client, trust."""
        return self.folder / PRESENTED

    def presented_pem(self) -> str:
        """The certificate to trust for this node: the one it presents, or `tls.crt` before it ran."""
        path = self.presented_cert if self.presented_cert.exists() else self.tls_cert
        return read_file(path).decode("ascii")

    def write_presented(self, identity: TlsIdentity) -> None:
        """Record the certificate the node presents, whole or not at all (a CLI may read it now)."""
        tmp = self.folder / f".{PRESENTED}.tmp"
        write_public(tmp, read_file(identity.cert))
        os.replace(tmp, self.presented_cert)

    def rotated_tls(self, kid: str) -> tuple[Path, Path]:
        """Where `exchange node rotate --use tls` writes a new TLS certificate and its key."""
        return self.folder / f"tls-{kid}.crt", self.folder / f"tls-{kid}.key"

    def new_tls(self, node_id: str) -> tuple[str, bytes, bytes]:
        """A new TLS key and certificate for `node_id`: its kid (exchange.protocol.rosterchain.tls_kid),
        the key PEM and the certificate PEM; `write_tls` puts them in the folder."""
        now = utc_now()  # a subject name of its own: partners trust the old and the new one at once
        key, cert = generate_tls_identity(f"exchange node {node_id} {now:%Y-%m-%dT%H:%M:%SZ}", now)
        return b64d(spki_pin(cert))[:8].hex(), key, cert

    def write_tls(self, kid: str, key: bytes, cert: bytes) -> Path:
        """Write a TLS key (0600, it never leaves this host) and its certificate beside the current ones."""
        cert_path, key_path = self.rotated_tls(kid)
        write_private(key_path, key)
        write_public(cert_path, cert)
        return key_path

    def tls_identity(self, pin: str) -> TlsIdentity:
        """The certificate and key of the folder whose certificate has `pin` (the roster's active TLS
        key of this node): `tls.crt` or one `exchange node rotate` wrote. ConfigError if none has."""
        for cert in [self.tls_cert, *sorted(self.folder.glob("tls-*.crt"))]:
            try:
                if cert.exists() and spki_pin(cert.read_bytes()) == pin:
                    key = self.tls_key if cert == self.tls_cert else cert.with_suffix(".key")
                    return TlsIdentity(cert, key, pin)
            except ConfigError as exc:
                raise ConfigError(f"unreadable TLS certificate {cert}") from exc
        raise ConfigError(
            f"no TLS certificate with pin {pin} in {self.folder}: the roster lists one this host never made"
        )


@dataclass
class TlsIdentity:
    """The certificate and key a node presents in TLS (server and client), and its pin. One object,
    shared by the node's server, its client sessions and `OwnKeys`, which moves it to a rotated
    certificate when the roster lists that one as the node's active TLS key (6a.13)."""

    cert: Path
    key: Path
    pin: str

    def use(self, other: TlsIdentity) -> None:
        self.cert, self.key, self.pin = other.cert, other.key, other.pin


def _read(path: Path) -> bytes:
    return b64d(read_file(path).decode().strip())


def load_authority_public(path: Path) -> VerifyKey:
    try:
        return VerifyKey(b64d(read_file(path).decode().strip()))
    except (InvalidInput, UnicodeDecodeError) as exc:
        raise ConfigError(f"unreadable authority key {path}") from exc


def load_federation(config: NodeConfig) -> Federation:
    """The roster, verified against the federation authority's public key."""
    try:
        signed = SignedRoster.model_validate(strict_loads(read_file(config.roster_path)))
    except (InvalidInput, ValueError) as exc:
        raise ExchangeError(f"unreadable roster {config.roster_path}: {exc}") from exc
    return Federation.verify(signed, load_authority_public(config.authority_key_path))


def read_provisioned_channels(folder: Path) -> list[list[ChannelEvent]]:
    """Channels set up by `federation init`: each file holds a whole owner-signed log."""
    if not folder.is_dir():
        return []
    # The operator's own files, written by `federation init`: a channel of 200 members is a log of
    # 400 events, denser in JSON values than the budget for what partners send; its size bounds it.
    out = []
    for path in sorted(folder.glob("*.json")):
        data = path.read_bytes()
        out.append([ChannelEvent.model_validate(e) for e in strict_loads(data, min_values=len(data))])
    return out


_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RosterPin:
    """The highest roster v2 version this node took, kept beside its keys, outside its database
    (`roster-pin.json`: `{"version": n, "hash": "<64 hex>"}`). At start the node's stored chain must
    reach that version with that hash (exchange.service.federation): a database rolled back to an
    older chain, which may still trust a node since revoked, or given another chain, is refused
    rather than trusted. A lower bound: written after the version is stored, never lowered."""

    keys_dir: Path

    @property
    def path(self) -> Path:
        return self.keys_dir / ROSTER_PIN

    def read(self) -> tuple[int, str] | None:
        """The pinned (version, hash), or None if nothing is pinned yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        fix = "restore it from the keys' backup, or remove it (the node then pins what its database holds)"
        try:
            doc = strict_loads(raw)
            version, digest = doc["version"], doc["hash"]
        except (InvalidInput, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path} is not a roster pin ({exc}): {fix}") from exc
        if type(version) is not int or version < 1 or not isinstance(digest, str) or not _HASH.fullmatch(digest):
            raise ConfigError(f'{self.path} is not a roster pin (not {{"version": n, "hash": "<64 hex>"}}): {fix}')
        return version, digest

    def write(self, version: int, digest: str) -> None:
        """Pin `version` unless a later one is pinned already. Under a lock on the keys folder (the
        workers of one node share it), the file is written whole to a temporary file of its own,
        synced, and renamed over the pin: a crash leaves the old pin or the new one."""
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.keys_dir, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pinned = self.read()
            if pinned is not None and pinned[0] >= version:
                return
            fd, tmp = tempfile.mkstemp(prefix=ROSTER_PIN + ".", dir=self.keys_dir)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(json.dumps({"version": version, "hash": digest}).encode() + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            os.fsync(lock)  # the rename, in the folder
        finally:
            os.close(lock)
