"""The OpenAPI document: current in docs/, valid OpenAPI 3.1, named operations, errors
in the project's shape, and a document that says what the API really answers."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from httpx import AsyncClient
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from openapi_spec_validator import validate

from app.core.config import Settings
from scripts import openapi as openapi_script
from tests.support import ROOT, auth_headers

DOCUMENT: dict[str, Any] = openapi_script.document()
OPERATIONS = [
    (path, method, operation)
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
]
ERROR_REF = "#/components/schemas/ErrorResponse"


def test_the_committed_document_is_current() -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == openapi_script.render(DOCUMENT), "run `make openapi` and commit it"
    assert openapi_script.main(["--check"]) == 0


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)


def test_operation_ids_are_unique_camel_case_names() -> None:
    ids = [operation["operationId"] for _, _, operation in OPERATIONS]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", name) for name in ids), ids
    assert {"listItems", "createItem", "readItem", "readMyProfile"} <= set(ids)


def test_errors_use_the_projects_shape_and_fastapis_is_gone() -> None:
    text = json.dumps(DOCUMENT)
    assert "HTTPValidationError" not in text
    for path, method, operation in OPERATIONS:
        for status, response in operation["responses"].items():
            if int(status) < 400 or path.endswith("/health/ready"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (method, path, status)


def test_headers_are_declared() -> None:
    for path, method, operation in OPERATIONS:
        for status, response in operation["responses"].items():
            assert "X-Request-ID" in response["headers"], (method, path, status)
            if status in ("429", "503") and not path.endswith("/health/ready"):
                assert "Retry-After" in response["headers"], (method, path, status)
    create = DOCUMENT["paths"]["/api/v1/items"]["post"]["responses"]
    assert {"Location", "ETag", "Idempotent-Replayed", "RateLimit-Remaining"} <= set(
        create["201"]["headers"]
    )
    assert (
        "ETag" in DOCUMENT["paths"]["/api/v1/items/{item_id}"]["get"]["responses"]["200"]["headers"]
    )


def test_rate_limited_and_conditional_routes_say_so() -> None:
    item = DOCUMENT["paths"]["/api/v1/items/{item_id}"]
    assert {"412", "429"} <= set(item["patch"]["responses"])
    assert "429" not in item["get"]["responses"]
    assert "412" not in item["get"]["responses"]


@pytest.mark.parametrize(
    ("path", "method", "operation"), OPERATIONS, ids=[f"{m} {p}" for p, m, _ in OPERATIONS]
)
async def test_a_documented_401_is_what_the_route_answers_without_a_token(
    client: AsyncClient, path: str, method: str, operation: dict[str, Any]
) -> None:
    url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
    response = await client.request(method.upper(), url)
    documented = set(operation["responses"])
    assert (response.status_code == 401) == ("401" in documented), (method, path)
    assert str(response.status_code) in documented, (method, path, response.status_code)


def documented_body(path: str, method: str, status: str) -> Validator:
    """A validator for the JSON body the document promises for this response."""
    response = DOCUMENT["paths"][path][method]["responses"][status]
    schema = response["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]})


async def test_responses_match_the_document(client: AsyncClient, settings: Settings) -> None:
    """What the handlers send is what the document describes (they build some responses
    themselves, so the declared model alone would not catch a drift)."""
    headers = auth_headers(settings, f"doc-{uuid.uuid4().hex[:8]}", tenant="acme")
    items = "/api/v1/items"
    created = await client.post(items, json={"title": "documented"}, headers=headers)
    item_url = f"{items}/{created.json()['id']}"
    exchanges = [
        (created, items, "post", "201"),
        (await client.get(items, headers=headers), items, "get", "200"),
        (await client.get(item_url, headers=headers), f"{items}/{{item_id}}", "get", "200"),
        (await client.get(items, params={"limit": 0}, headers=headers), items, "get", "422"),
        (await client.get(items), items, "get", "401"),
        (await client.get("/api/v1/users/me", headers=headers), "/api/v1/users/me", "get", "200"),
    ]
    for response, path, method, status in exchanges:
        assert str(response.status_code) == status, (method, path, response.text)
        documented_body(path, method, status).validate(response.json())
        declared = DOCUMENT["paths"][path][method]["responses"][status]["headers"]
        for name in declared:
            if name not in ("Idempotent-Replayed", "Retry-After") and not name.startswith(
                "RateLimit"
            ):
                assert name.lower() in response.headers, (method, path, status, name)
