"""The OpenAPI document names exactly the routes the node serves, each with its parameters, request
and response schemas and security, and is served at its URL."""

from __future__ import annotations

import re

import pytest

from exchange.node.app import api_application
from exchange.node.openapi import openapi_document
from tests.conftest import MakeFederation

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def served() -> set[tuple[str, str]]:
    """(method, path) of every API and federation route of the node, as aiohttp routes them."""
    app = api_application()
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method in METHODS
        and route.resource is not None
        and route.resource.canonical.startswith(("/api/", "/fed/"))
    }


def test_the_document_names_every_route_the_node_serves_and_no_other() -> None:
    doc = openapi_document("https://127.0.0.1:8441")
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert documented == served()


def test_every_operation_has_its_parameters_schemas_and_security() -> None:
    doc = openapi_document("https://127.0.0.1:8441")
    schemas = doc["components"]["schemas"]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "mutualTLS"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            named = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert named == set(re.findall(r"\{(\w+)\}", path)), f"{where}: path parameters undefined"
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert len(ok) == 1 and op["responses"][ok[0]]["content"], f"{where}: no success schema"
            assert "application/problem+json" in op["responses"]["4XX"]["content"], where
            expected: list[dict[str, list[str]]] = (
                []
                if path == "/api/v1/openapi.json"
                else [{"mutualTLS": []}]
                if path.startswith("/fed/")
                else [{"bearer": []}]
            )
            assert op["security"] == expected, where
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in schemas, where
    # `handling` is optional where the server fills in the channel's default, and only there.
    assert "handling" not in schemas["NewBulletin"]["required"]
    assert "handling" in schemas["Bulletin"]["required"]
    post = doc["paths"]["/api/v1/channels/{channel}/bulletins"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/NewBulletin")
    # Dates that the models check on the calendar say so.
    expires = schemas["NewBulletin"]["properties"]["expires"]["anyOf"][0]
    assert expires["format"] == "date"


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_the_document_is_served_at_its_url_without_a_token(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    status, doc, ctype = await nl.api("GET", "/api/v1/openapi.json", user="")
    assert (status, ctype) == (200, "application/json")
    assert doc["servers"] == [{"url": nl.config.endpoint}] and doc["openapi"] == "3.1.0"
    assert doc == openapi_document(nl.config.endpoint)
