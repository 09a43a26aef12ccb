"""What a new mutual-TLS connection costs against a kept-alive one (the reason for the node
setting `peer_keepalive_seconds`).

One aiohttp server and one client in this process, over loopback, with what nodes use: TLS 1.3,
P-256 certificates from `exchange.crypto.tls.generate_tls_identity`, a client certificate, and the
server trusting `--roster` certificates (a federation's roster). It POSTs a 1.5 KB body (about
one envelope) `--count` times on one kept-alive connection, then each on a new connection, and
prints the CPU (client and server together) and wall time per request, the handshake's share,
and the load average. The "ceiling" is the kept-alive request measured in the same run. New
connections are measured twice: to a server that sends no session tickets, as a node's does
(exchange/node/tls.py), and to one with TLS 1.3's default of two tickets per handshake.

    .venv/bin/python bench/tls_reuse.py
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import ssl
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from exchange.crypto.tls import generate_tls_identity


def identity(folder: Path, name: str) -> tuple[Path, Path, str]:
    key, cert = generate_tls_identity(name, dt.datetime.now(dt.UTC))
    (folder / f"{name}.key").write_bytes(key)
    (folder / f"{name}.crt").write_bytes(cert)
    return folder / f"{name}.crt", folder / f"{name}.key", cert.decode()


async def main(count: int, roster: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="tls-reuse-"))
    server_cert, server_key, server_pem = identity(folder, "server")
    client_cert, client_key, client_pem = identity(folder, "client")
    others = "".join(
        generate_tls_identity(f"n{i}", dt.datetime.now(dt.UTC))[1].decode() for i in range(max(0, roster - 1))
    )

    def server_ctx(tickets: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(server_cert, server_key)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=client_pem + others)
        ctx.num_tickets = tickets
        return ctx

    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.check_hostname = False
    client_ctx.load_verify_locations(cadata=server_pem)
    client_ctx.load_cert_chain(client_cert, client_key)

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/x", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    urls = {}
    for tickets in (0, 2):
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx(tickets))
        await site.start()
        urls[tickets] = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/x"  # type: ignore[union-attr]
    body = b"x" * 1500
    figures: dict[str, tuple[float, float]] = {}
    load = os.getloadavg()[0]
    print(f"{count} POSTs of 1.5 KB each way; the server trusts {roster} roster certificates; load {load:.2f}")
    modes = {"kept-alive": urls[0], "new connection": urls[0], "new, 2 tickets": urls[2]}
    for mode, url in modes.items():
        connector = aiohttp.TCPConnector(ssl=client_ctx, force_close=mode != "kept-alive")
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(20):  # warm-up
                async with session.post(url, data=body) as resp:
                    await resp.read()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(count):
                async with session.post(url, data=body) as resp:
                    await resp.read()
            figures[mode] = ((time.process_time() - cpu) / count * 1e3, (time.perf_counter() - wall) / count * 1e3)
        print(f"  {mode:15} {figures[mode][0]:.3f} ms CPU per request (both sides), {figures[mode][1]:.3f} ms wall")
    await runner.cleanup()
    kept, new, ticketed = figures["kept-alive"][0], figures["new connection"][0], figures["new, 2 tickets"][0]
    print(
        f"a new connection costs {new - kept:.3f} ms of CPU more (both sides): {new / kept:.1f}x the kept-alive "
        f"request (the ceiling, same run); with two session tickets {ticketed - kept:.3f} ms more; "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=500, help="requests per mode (default 500)")
    p.add_argument("--roster", type=int, default=200, help="certificates the server trusts (default 200)")
    a = p.parse_args()
    asyncio.run(main(a.count, a.roster))
