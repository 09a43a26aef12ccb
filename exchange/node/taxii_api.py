"""A read-only TAXII 2.1 server on the client port (OASIS TAXII 2.1; docs/stix.md): discovery, one
API root, and per collection its objects, one object, its versions and the manifest.

Authentication with the node's user tokens: `Bearer <token>`, `Token <token>` (taxii2-client's
TokenAuth), or HTTP Basic with the user name and the token as password. Every rule on what may
be read is in exchange.service.taxii; this module only speaks HTTP and TAXII's media types.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from exchange.errors import ExchangeError, Unauthorized
from exchange.http import params
from exchange.http.appkeys import SERVICE, USER
from exchange.http.problem import status_for
from exchange.service.taxii import DEFAULT_LIMIT, MAX_LIMIT, Filters, Page, Taxii
from exchange.service.users import User

TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"
ROOT = "/taxii2/"
API_ROOT = "/taxii2/exchange/"
COLLECTIONS = API_ROOT + "collections/"
COLLECTION = COLLECTIONS + "{collection}/"
CHALLENGES = ('Basic realm="exchange TAXII"', 'Bearer realm="exchange TAXII"')

Handler = Callable[[web.Request], Awaitable[web.Response]]


def taxii_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, body=json.dumps(body).encode(), headers=headers)
    response.headers["Content-Type"] = TAXII_MEDIA_TYPE
    return response


def taxii_error(status: int, title: str, description: str) -> web.Response:
    """An error in TAXII 2.1's error message format (section 3.6.1)."""
    response = taxii_response({"title": title, "description": description, "http_status": str(status)}, status)
    if status == 401:
        for challenge in CHALLENGES:
            response.headers.add("WWW-Authenticate", challenge)
    return response


def _acceptable(accept: str | None) -> bool:
    """Whether an Accept header lets us answer with TAXII 2.1 JSON (absent: yes)."""
    if accept is None or not accept.strip():
        return True
    for part in accept.split(","):
        kind, *parameters = (p.strip().lower() for p in part.split(";"))
        options = dict(p.partition("=")[::2] for p in parameters)
        if options.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if kind in ("*/*", "application/*"):
            return True
        if kind == "application/taxii+json" and options.get("version", "2.1").strip('"') == "2.1":
            return True
    return False


def _token(header: str) -> tuple[str | None, str]:
    """The user name (Basic only) and token of an Authorization header."""
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            user, sep, token = base64.b64decode(rest.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError) as exc:  # binascii.Error, and ValueError for non-ASCII text
            raise Unauthorized("malformed Basic credentials") from exc
        if not sep:
            raise Unauthorized("malformed Basic credentials")
        return user, token
    if scheme in ("bearer", "token"):
        return None, rest
    raise Unauthorized("use Bearer <token>, Token <token>, or Basic with your user name and token")


async def _user(request: web.Request) -> User:
    header = request.headers.get("Authorization")
    if header is None:
        raise Unauthorized("a token is required")
    name, token = _token(header)
    # One check of the token's characters for all three schemes: the client API's.
    checked = params.bearer_token({"Authorization": f"Bearer {token.strip()}"})
    user = await request.app[SERVICE].users.authenticate(checked)
    if name is not None and name != user.name:
        raise Unauthorized("unknown user or token")
    request[USER] = user.name
    return user


def _taxii(request: web.Request) -> Taxii:
    return request.app[SERVICE].taxii


def _list(request: web.Request, name: str) -> frozenset[str]:
    values = request.query.getall(f"match[{name}]", [])
    return frozenset(v.strip() for value in values for v in value.split(",") if v.strip())


def _filters(request: web.Request) -> Filters:
    return Filters(
        ids=_list(request, "id"),
        types=_list(request, "type"),
        versions=_list(request, "version"),
        spec_versions=_list(request, "spec_version"),
        added_after=request.query.get("added_after"),
    )


def _paged(page: Page, body: dict[str, Any]) -> web.Response:
    headers = {}
    if page.items:
        headers = {
            "X-TAXII-Date-Added-First": page.items[0].date_added,
            "X-TAXII-Date-Added-Last": page.items[-1].date_added,
        }
    out = {"more": page.more, **({"next": page.next} if page.next is not None else {}), **body}
    return taxii_response(out, headers=headers)


async def _refused(request: web.Request, response: web.Response, reason: str) -> web.Response:
    """Audit a refused TAXII request as the node audits every refused request (the problem
    middleware audits only those that raise; these answer in TAXII's error format instead)."""
    await request.app[SERVICE].audit_rejection(
        method=request.method,
        path=request.path,
        status=response.status,
        reason=reason,
        peer=None,
        user=request.get(USER),
        address=request.remote,
    )
    return response


def taxii_route(handler: Callable[[web.Request, User], Awaitable[web.Response]]) -> Handler:
    """GET only (405 otherwise), content negotiation (406), authentication (401) and every
    error as a TAXII error message."""

    async def route(request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            response = taxii_error(405, "Method Not Allowed", "this TAXII server is read-only")
            response.headers["Allow"] = "GET, HEAD"
            return await _refused(request, response, "read-only")
        if not _acceptable(request.headers.get("Accept")):
            response = taxii_error(406, "Not Acceptable", f"this server answers {TAXII_MEDIA_TYPE} only")
            return await _refused(request, response, "not acceptable")
        try:
            return await handler(request, await _user(request))
        except ExchangeError as exc:
            status = status_for(exc)
            response = taxii_error(400 if status == 422 else status, exc.title, exc.detail)
            return await _refused(request, response, exc.detail) if status < 500 else response

    return route


async def discovery(request: web.Request, user: User) -> web.Response:
    base = request.app[SERVICE].config.endpoint
    return taxii_response(
        {
            "title": f"exchange node {request.app[SERVICE].me}",
            "description": "The channels you read at this node, as STIX 2.1 (read-only).",
            "default": base + API_ROOT,
            "api_roots": [base + API_ROOT],
        }
    )


async def api_root(request: web.Request, user: User) -> web.Response:
    return taxii_response(
        {
            "title": f"exchange node {request.app[SERVICE].me}",
            "description": "One collection per channel you read now.",
            "versions": [TAXII_MEDIA_TYPE],
            "max_content_length": 0,
        }
    )


async def collections(request: web.Request, user: User) -> web.Response:
    found = _taxii(request).collections(user)
    return taxii_response({"collections": [c.as_json() for c in found]} if found else {})


async def collection(request: web.Request, user: User) -> web.Response:
    return taxii_response(_taxii(request).collection(user, request.match_info["collection"]).as_json())


def _limit(request: web.Request) -> int:
    return params.integer(request.query, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)


async def objects(request: web.Request, user: User) -> web.Response:
    page = await _taxii(request).read(
        user,
        request.match_info["collection"],
        resource="objects",
        limit=_limit(request),
        next_token=request.query.get("next"),
        filters=_filters(request),
    )
    return _paged(page, {"objects": [s.obj for s in page.items]})


async def manifest(request: web.Request, user: User) -> web.Response:
    page = await _taxii(request).read(
        user,
        request.match_info["collection"],
        resource="manifest",
        limit=_limit(request),
        next_token=request.query.get("next"),
        filters=_filters(request),
    )
    return _paged(page, {"objects": [s.manifest() for s in page.items]})


async def one_object(request: web.Request, user: User) -> web.Response:
    page = await _taxii(request).one(
        user,
        request.match_info["collection"],
        request.match_info["object"],
        resource="object",
        filters=_filters(request),
    )
    return _paged(page, {"objects": [s.obj for s in page.items]})


async def versions(request: web.Request, user: User) -> web.Response:
    page = await _taxii(request).one(
        user,
        request.match_info["collection"],
        request.match_info["object"],
        resource="versions",
        filters=_filters(request),
    )
    return _paged(page, {"versions": [s.version for s in page.items]})


def routes() -> list[web.RouteDef]:
    table: list[tuple[str, Callable[[web.Request, User], Awaitable[web.Response]]]] = [
        (ROOT, discovery),
        (API_ROOT, api_root),
        (COLLECTIONS, collections),
        (COLLECTION, collection),
        (COLLECTION + "objects/", objects),
        (COLLECTION + "objects/{object}/", one_object),
        (COLLECTION + "objects/{object}/versions/", versions),
        (COLLECTION + "manifest/", manifest),
    ]
    return [web.route("*", path, taxii_route(handler)) for path, handler in table]
