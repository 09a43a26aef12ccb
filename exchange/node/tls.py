"""SSL contexts for mutual TLS 1.3: servers trust exactly the roster's certificates, clients pin one peer.

The server's trust follows the roster version the node holds, live (`ServerTls`): every handshake
is switched, when the client's hello arrives, to the context built for the version held then, and
with it the certificate the node presents (its `TlsIdentity`, moved by a TLS key rotation, 6a.13).
A node's accepted certificates are its active one and, during a rotation's overlap, its retiring one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from exchange.crypto import spki_pin
from exchange.errors import UnknownPeer
from exchange.keystore import TlsIdentity
from exchange.model import RosterNode
from exchange.protocol.roster import Federation


def server_context(cert: Path, key: Path, fed: Federation) -> ssl.SSLContext:
    """Ask every client for a certificate; one that is not in the roster fails the handshake.

    Clients without a certificate (people using the API or console) are let through TLS; the
    federation routes then refuse them because they have no roster identity.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=fed.tls_certs_pem())
    # No session tickets: partners (aiohttp) and the CLI never resume a session, and TLS 1.3's two
    # tickets per handshake cost both sides about a quarter of the handshake (bench/tls_reuse.py).
    ctx.num_tickets = 0
    return ctx


class ServerTls:
    """The server's TLS: one listening context whose handshakes each take the context of the roster
    version held when they begin (`install` builds it), so a node listed in a new version can
    connect at once and one no longer listed (revoked, suspended) is refused at the handshake."""

    def __init__(self, identity: TlsIdentity, fed: Federation) -> None:
        self._identity = identity
        self._current = server_context(identity.cert, identity.key, fed)
        self.context = server_context(identity.cert, identity.key, fed)
        self.context.sni_callback = self._switch

    def _switch(self, ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        ssl_object.context = self._current  # called on every client hello, with or without a name

    def install(self, fed: Federation) -> None:
        """The version held now: its certificates trusted, and the node's identity as it is now."""
        self._current = server_context(self._identity.cert, self._identity.key, fed)


def peer_context(peer: RosterNode, cert: Path | None, key: Path | None, trusted: str | None = None) -> ssl.SSLContext:
    """Trust only `peer`'s roster certificates (`trusted`, PEM: its active and retiring ones; by
    default its active one), and present ours if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the certificate itself is pinned, whatever name it carries
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=trusted or peer.tls_cert)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def client_context(server_cert_pem: str) -> ssl.SSLContext:
    """For the CLI: trust one node's certificate, present none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=server_cert_pem)
    return ctx


def roster_identity(fed: Federation) -> Callable[[bytes], str | None]:
    """For the server's connection guard: the roster node (held now) whose active or retiring
    certificate a client presented (DER), or None. The TLS stack lets through any certificate that
    chains to a roster certificate, and a node's certificate can sign others (6a.7): such a
    certificate is no node's, and its connection is refused before it counts as a partner's."""

    def identify(der: bytes) -> str | None:
        try:
            return str(fed.node_by_pin(spki_pin(der)).id)
        except UnknownPeer:
            return None

    return identify


_NONE: frozenset[str] = frozenset()  # one object: `roster_addresses` compares what it is given by identity


def roster_addresses(
    fed: Federation, resolved: Callable[[], frozenset[str]] | None = None
) -> Callable[[], tuple[frozenset[str], frozenset[str]]]:
    """For the server's connection guard: the client addresses (`client_key`) that the held
    roster's endpoints name as IP addresses, with those its host-name endpoints resolve to
    (`resolved`: exchange.node.endpoint_names, looked up in the background), and the nodes it
    lists as active; computed again (a new object) when either changes."""
    # Here, not at the top: the offline verifier imports this module, and the service layer with
    # the database's code must stay out of it (tests/test_audit.py).
    from exchange.service.rejections import client_key

    held: list[Any] = [None, None, (frozenset(), frozenset())]

    def listed() -> tuple[frozenset[str], frozenset[str]]:
        roster = fed.roster
        names = resolved() if resolved is not None else _NONE
        if held[0] is not roster or held[1] is not names:
            addresses, nodes = set(names), set()
            for node in roster.nodes:
                if not fed.listed(node.id):
                    continue
                nodes.add(str(node.id))
                host = urlsplit(node.endpoint).hostname or ""
                with contextlib.suppress(ValueError):
                    addresses.add(client_key(str(ipaddress.ip_address(host))))
            held[:] = [roster, names, (frozenset(addresses), frozenset(nodes))]
        return cast(tuple[frozenset[str], frozenset[str]], held[2])

    return listed


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, fed: Federation) -> RosterNode:
    """The roster node behind a TLS connection, by the pin of the certificate it presented."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise UnknownPeer("a roster client certificate is required")
    return fed.node_by_pin(spki_pin(der))
