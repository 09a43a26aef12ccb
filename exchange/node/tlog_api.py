"""The C2SP tlog-witness route (c2sp.org/tlog-witness): `POST /c2sp/tlog-witness/add-checkpoint`,
by which the foreign logs this node's operator configured get their checkpoints co-signed.

It is served on the node's one TLS port, with no client certificate required: the protocol
authenticates the checkpoint by its log's signature, not the caller, and a log outside the
federation has no roster certificate (docs/audit.md, section 4). Callers fall under the limits of
clients without a certificate (per address). Answers are text, as the specification gives them,
not problem+json; each refusal is audited like any refused request. `GET /c2sp/tlog-witness/vkey`
shows this node's witness verifier key, for the operators of the logs it witnesses.
"""

from __future__ import annotations

from aiohttp import web

from exchange.audit.tlog_witness import ADD_CHECKPOINT, MAX_BODY
from exchange.http import params
from exchange.http.appkeys import SERVICE

PREFIX = "/c2sp/tlog-witness"


async def post_add_checkpoint(request: web.Request) -> web.Response:
    """One add-checkpoint request: 200 with cosignature lines, or 400, 403, 404, 409, 422."""
    service = request.app[SERVICE]
    service.audit.ensure_running()
    body = await params.body_bytes(request, MAX_BODY)
    answer = await service.audit.tlog_witnessing.add_checkpoint(bytes(body))
    if answer.status >= 400:
        await service.audit_rejection(
            method=request.method,
            path=request.path,
            status=answer.status,
            reason=f"tlog-witness: {answer.reason}",
            peer=None,
            user=None,
            address=request.remote,
        )
    return web.Response(status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type})


async def get_vkey(request: web.Request) -> web.Response:
    """This node's witness verifier key (cosignature/v1, type 0x04), one line."""
    vkey = request.app[SERVICE].audit.tlog_witnessing.vkey
    return web.Response(text=vkey + "\n", content_type="text/plain")


def routes() -> list[web.RouteDef]:
    return [
        web.post(f"{PREFIX}/{ADD_CHECKPOINT}", post_add_checkpoint),
        web.get(f"{PREFIX}/vkey", get_vkey),
    ]
