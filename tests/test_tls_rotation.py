"""A node rotates its TLS key, on real nodes over mutual TLS, on SQLite and PostgreSQL
(docs/protocol.md, 6a.13; docs/operations.md, "Rotating a node's keys").

ke-customs makes a new TLS key and certificate on its own host (`exchange node rotate --use
tls`); roster version 2 lists the new certificate active and the old one retiring. Once a node
runs on version 2, it trusts both of ke-customs' certificates; ke-customs presents the new one,
as a server and as a client, without a restart, and bulletins flow both ways. Version 3 ends the
overlap: the old certificate is refused at the handshake (the attacker who kept the old key is
out). ke-customs restarts on the new certificate.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from exchange.cli.main import cli
from exchange.clock import timestamp, utc_now
from exchange.crypto import SigningKey, b64d, cert_subject, generate_tls_identity, spki_pin
from exchange.errors import InvalidInput, UnknownPeer
from exchange.keystore import NodeKeyFiles
from exchange.node.tls import peer_context
from exchange.protocol.rosterchain import TrustedRoster
from exchange.protocol.rostermigration import propose
from exchange.protocol.rosterview import federation_view
from exchange.protocol.rotation import (
    RotationRequest,
    parse_rotation_request,
    rotate,
    sign_rotation_request,
    verify_rotation_request,
)
from tests.conftest import MakeFederation, Member, eventually
from tests.protocol.test_roster_join import FEDERATION
from tests.test_key_rotation import CUSTOMS3, audit_verifies, opens_everywhere, post
from tests.test_roster_gossip import CONVERGE, Authority, import_at, runs_on

CHECKPOINT = "/fed/v1/audit/checkpoint"


async def presented_pin(member: Member) -> str:
    """The pin of the certificate `member`'s server presents to a handshake begun now."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # read the certificate, trust nothing
    _, writer = await asyncio.open_connection(member.config.host, member.config.port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return spki_pin(der)


async def fed_get_as(receiver: Member, cert: Path, key: Path) -> int | str:
    """GET a federation route at `receiver` presenting `cert`: the status, or the failure's name."""
    ctx = peer_context(
        receiver.service.fed.node(receiver.id), cert, key, receiver.service.fed.tls_certs_pem(receiver.id)
    )
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.get(receiver.config.endpoint + CHECKPOINT) as resp,
        ):
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, OSError) as exc:
        return type(exc).__name__


async def test_a_node_rotates_its_tls_key_live(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=CUSTOMS3)
    nl, ke, gb = fed["nl-customs"], fed["ke-customs"], fed["gb-avsec"]
    everyone = [nl, ke, gb]
    auth = Authority.of(fed)
    version1 = auth.migration()
    assert await import_at(nl.config, version1) == 1
    for member in everyone:
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")
    folder = ke.config.keys_dir
    old_cert, old_key = folder / "tls.crt", folder / "tls.key"
    old_pin = spki_pin(old_cert.read_bytes())
    assert await presented_pin(ke) == old_pin
    before = await post(ke, "before, from ke")

    # On ke-customs' host: a new TLS key (0600) and certificate, and the request.
    done = await asyncio.to_thread(
        CliRunner().invoke, cli, ["node", "rotate", "--node", str(fed.folder / "ke-customs.toml"), "--use", "tls"]
    )
    assert done.exit_code == 0 and "request hash" in done.output, done.output
    (request_file,) = folder.glob("rotate-tls-*.json")
    request = parse_rotation_request(request_file.read_bytes())
    kid = request.request.key.kid
    new_cert, new_key = NodeKeyFiles(folder).rotated_tls(kid)
    assert new_cert.exists() and os.stat(new_key).st_mode & 0o777 == 0o600
    new_pin = spki_pin(new_cert.read_bytes())
    assert await presented_pin(ke) == old_pin  # nothing changes before a version lists it

    # Version 2: the new certificate active, the old retiring; imported at ONE node, gossiped.
    version2 = auth.sign(
        rotate(version1.roster, propose(version1.roster, timestamp(), version1.roster.expires), [request])
    )
    assert await import_at(nl.config, version2) == 2
    for member in everyone:
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")

    async def presents_new() -> bool:
        return await presented_pin(ke) == new_pin

    await eventually(presents_new, timeout=CONVERGE, what="ke-customs presenting its new certificate")
    # Its CLI trusts what it presents now (keys/<node>/presented.crt), not every certificate it made.
    assert spki_pin(NodeKeyFiles(folder).presented_pem().encode()) == new_pin
    # Both ways, over the new certificate: ke-customs as client (its posts) and as server.
    during = [await post(ke, "during, from ke"), await post(nl, "during, from nl")]
    for bid in (before, *during):
        await opens_everywhere(everyone, bid)
    # The overlap: the old certificate is still accepted, the new one too; a stranger's is not.
    assert await fed_get_as(nl, old_cert, old_key) == 200
    assert await fed_get_as(nl, new_cert, new_key) == 200
    stranger = fed.folder / "stranger"
    _, stranger_key, stranger_cert = NodeKeyFiles(stranger).new_tls("stranger")
    NodeKeyFiles(stranger).write_tls("x", stranger_key, stranger_cert)
    assert await fed_get_as(nl, *NodeKeyFiles(stranger).rotated_tls("x")) != 200

    # Version 3 ends the overlap: the old certificate is refused at every node.
    version3 = auth.sign(
        rotate(version2.roster, propose(version2.roster, timestamp(), version2.roster.expires), [], ["ke-customs"])
    )
    assert await import_at(gb.config, version2, version3) == 3
    for member in everyone:
        await eventually(runs_on(member, 3), timeout=CONVERGE, what=f"version 3 at {member.id}")
    for receiver in (nl, gb):
        assert await fed_get_as(receiver, old_cert, old_key) != 200, receiver.id
        assert await fed_get_as(receiver, new_cert, new_key) == 200, receiver.id
    after = await post(ke, "after, from ke")
    await opens_everywhere(everyone, after)

    # A restart presents the certificate the roster lists, and everything still verifies.
    await fed.stop("ke-customs")
    await fed.start("ke-customs")
    ke = fed["ke-customs"]
    assert await presented_pin(ke) == new_pin
    await opens_everywhere([nl, ke, gb], await post(ke, "after the restart"))
    for member in (nl, ke, gb):
        await audit_verifies(member, fed.folder)


def _tls_request(current: SigningKey, old: str | None = None, name: str | None = None) -> tuple[RotationRequest, str]:
    """fr-customs asks for a new TLS certificate: the request and the new certificate's pin."""
    from tests.protocol.test_rotation import MADE, version1

    fr = next(n for n in version1().roster.nodes if n.id == "fr-customs")
    active = next(k for k in fr.keys if k.use == "tls" and k.state == "active")
    za = next(n for n in version1().roster.nodes if n.id == "za-customs")
    names = {
        "same": cert_subject(b64d(active.key)).removeprefix("CN="),
        "another node's": cert_subject(b64d(next(k.key for k in za.keys if k.use == "tls"))).removeprefix("CN="),
    }
    _, cert = generate_tls_identity(names.get(name or "", "exchange node fr-customs, rotated"), utc_now())
    return sign_rotation_request(FEDERATION, "fr-customs", MADE, current, cert, old=old or active.kid), spki_pin(cert)


def test_a_tls_rotation_request_is_listed_and_a_forged_one_refused() -> None:
    """The proposer's rules for use `tls`, and what each held version accepts at the handshake:
    the new certificate active and the old retiring (both accepted), then the old one refused
    once the overlap ends; a request the node's active signing key did not sign, or that names a
    key other than its active TLS key, is refused and nothing is built."""
    from tests.protocol.test_rotation import FR_SIGNING, next_doc, sign, version1

    v1 = version1()
    old_pin = federation_view(TrustedRoster.restore(v1)).node("fr-customs").tls_pin
    request, new_pin = _tls_request(FR_SIGNING)
    verify_rotation_request(request, v1.roster)
    v2 = sign(next_doc(v1.roster, [request]))
    held2 = TrustedRoster.restore(v1).accept(v2)
    fed2 = federation_view(held2)
    assert fed2.node("fr-customs").tls_pin == new_pin
    assert fed2.node_by_pin(old_pin).id == fed2.node_by_pin(new_pin).id == "fr-customs"
    assert fed2.tls_certs_pem("fr-customs").count("BEGIN CERTIFICATE") == 2
    fed3 = federation_view(held2.accept(sign(next_doc(v2.roster, [], ("fr-customs",)))))
    assert fed3.node_by_pin(new_pin).id == "fr-customs"
    with pytest.raises(UnknownPeer):
        fed3.node_by_pin(old_pin)
    assert fed3.tls_certs_pem("fr-customs").count("BEGIN CERTIFICATE") == 1

    forged, _ = _tls_request(SigningKey.generate())
    not_active, _ = _tls_request(FR_SIGNING, old="00" * 8)
    same_name, _ = _tls_request(FR_SIGNING, name="same")
    others_name, _ = _tls_request(FR_SIGNING, name="another node's")
    for bad, why in (
        (forged, "not signed by its active signing key"),
        (not_active, "is not its active tls key"),
        (same_name, "subject name of a certificate some node has"),  # OpenSSL would pick the wrong anchor
        (others_name, "subject name of a certificate some node has"),  # and cut za-customs off
    ):
        with pytest.raises(InvalidInput, match=why):
            verify_rotation_request(bad, v1.roster)
        with pytest.raises(InvalidInput):
            next_doc(v1.roster, [bad])
