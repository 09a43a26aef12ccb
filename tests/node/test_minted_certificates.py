"""A roster node's TLS certificate is its own trust anchor (self-signed, a CA of path length 0),
so it can sign other certificates, and the TLS stack lets them through (they chain to a roster
certificate). Such a certificate is no roster node's: its connection is refused (403) before it
counts as a partner's. Found by a read-only review: each one was counted as a partner of its own,
keyed by its hash, so a node's operator could open any number of connections, each past the
per-partner connection limit and with a fresh per-partner rate bucket."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import MakeFederation, Member


def mint(signer: Member, folder: Path, i: int) -> tuple[Path, Path]:
    """A certificate for a new key, signed with `signer`'s roster TLS key."""
    keys = signer.config.keys_dir
    issuer = x509.load_pem_x509_certificate((keys / "tls.crt").read_bytes())
    issuer_key = serialization.load_pem_private_key((keys / "tls.key").read_bytes(), None)
    assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"minted {i}")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    crt, pem = folder / f"minted{i}.crt", folder / f"minted{i}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return crt, pem


async def status_line(server: Member, crt: Path, key: Path) -> tuple[str, asyncio.StreamWriter]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=server.service.fed.node(server.id).tls_cert)
    ctx.load_cert_chain(crt, key)
    reader, writer = await asyncio.open_connection(server.config.host, server.config.port, ssl=ctx)
    writer.write(b"GET /fed/v1/roster?after=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    return (await asyncio.wait_for(reader.readline(), 10)).decode().strip(), writer


async def test_a_certificate_a_roster_node_signed_is_refused_and_counts_as_no_partner(
    make_federation: MakeFederation, tmp_path: Path
) -> None:
    fed = await make_federation(options={"max_connections_per_peer": 2})
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    assert nl.node is not None
    writers: list[asyncio.StreamWriter] = []
    try:
        for i in range(4):  # before: each answered, as a partner of its own, past the limit of 2
            line, writer = await status_line(nl, *mint(ke, tmp_path, i))
            writers.append(writer)
            assert " 403 " in f"{line} ", line
        partners = {k for k in nl.node.guard._open if k.startswith("peer:")}
        assert partners <= {"peer:ke-customs"}, partners  # ke-customs' own node may be talking to it
        # ke-customs' own certificate: one partner, all its connections counted under its id.
        keys = ke.config.keys_dir
        lines = []
        for _ in range(3):
            line, writer = await status_line(nl, keys / "tls.crt", keys / "tls.key")
            writers.append(writer)
            lines.append(line)
        assert " 200 " in f"{lines[0]} " and " 429 " in f"{lines[-1]} ", lines
        assert nl.node.guard.connections("peer:ke-customs") == 2
    finally:
        for writer in writers:
            writer.close()
