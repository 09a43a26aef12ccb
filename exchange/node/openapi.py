"""The node's OpenAPI 3.1 document, with schemas taken from the pydantic models."""

from __future__ import annotations

from typing import Any

from exchange.model import Bulletin, Envelope, Receipt

PROBLEM = {
    "description": "Error",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _op(summary: str, ok: str = "200", body: str | None = None, auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: {"description": "OK"}, "4XX": PROBLEM},
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if auth:
        op["security"] = [{"bearer": []}]
    return op


def openapi_document(server: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (Bulletin, Envelope, Receipt):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Problem"] = {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("type", "title", "detail")} | {"status": {"type": "integer"}},
    }
    channel = {"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "exchange node API", "version": "1"},
        "servers": [{"url": server}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/api/v1/whoami": {"get": _op("The authenticated user")},
            "/api/v1/channels": {"get": _op("Channels this node is a member of")},
            "/api/v1/channels/{channel}/bulletins": {
                "post": {**_op("Post a bulletin", "201", "Bulletin"), "parameters": [channel]}
            },
            "/api/v1/bulletins": {"get": _op("List bulletins (cursor paging with ?after=)")},
            "/api/v1/bulletins/{id}": {"get": _op("Read one bulletin; audited and receipted as opened")},
            "/api/v1/peers": {"get": _op("Sync status per partner node")},
            "/fed/v1/envelopes": {
                "post": {
                    "summary": "Partner nodes push a transaction of envelopes (mutual TLS, roster certificates only)",
                    "responses": {"200": {"description": "Signed receipts"}, "4XX": PROBLEM},
                }
            },
        },
    }
