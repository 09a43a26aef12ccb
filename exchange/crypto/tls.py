"""TLS key material for mutual TLS between nodes: self-signed certificates pinned by SPKI hash."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import NameOID

from exchange.crypto.encoding import b64e, sha256
from exchange.errors import ConfigError


def generate_tls_identity(
    common_name: str, now: dt.datetime, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> tuple[bytes, bytes]:
    """A new P-256 key and a self-signed certificate for it; returns (key PEM, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return key_pem, cert.public_bytes(Encoding.PEM)


def _load(cert: bytes) -> x509.Certificate:
    try:
        if cert.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise ConfigError("not an X.509 certificate") from exc


def spki_pin(cert: bytes) -> str:
    """The public-key pin of a certificate (PEM or DER): base64url SHA-256 of its SPKI."""
    return _pin(bytes(cert))


@functools.lru_cache(maxsize=1024)
def _pin(cert: bytes) -> str:
    """(Kept per certificate: a partner's is pinned again on every request it makes.)"""
    spki = _load(cert).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return b64e(sha256(spki))


def cert_subject(cert: bytes) -> str:
    """A certificate's subject name (RFC 4514 text): OpenSSL finds a trust anchor by it, so two
    certificates of one node trusted at once (a TLS rotation's overlap) must differ in it."""
    return _load(cert).subject.rfc4514_string()


def cert_pem(cert: bytes) -> str:
    """The PEM text of a certificate given as PEM or DER."""
    return _load(cert).public_bytes(Encoding.PEM).decode("ascii")
