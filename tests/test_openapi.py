"""The OpenAPI document tells the truth: valid 3.1, every error code documented, examples that work."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import jsonschema_rs
import numpy as np
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from gateway.config import LimitSettings
from gateway.errors import ERROR_CODES
from gateway.openapi import DocumentedModel, openapi_document

JSON = "application/json"


@pytest.fixture(scope="module")
def document(gateway_url: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway_url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)
    body: dict[str, Any] = response.json()
    return body


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A JSON Schema 2020-12 validator for `schema`, its `$ref`s resolved inside `document`."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


def component(document: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    return validator(document, {"$ref": f"#/components/schemas/{name}"})


def documented_codes(document: dict[str, Any]) -> dict[str, set[str]]:
    """status -> every `error.code` the document lists under it, in operations and shared responses."""
    responses = [r for item in document["paths"].values() for op in item.values() for r in op["responses"].items()]
    responses += [(name.removeprefix("Routing"), r) for name, r in document["components"]["responses"].items()]
    codes: dict[str, set[str]] = {}
    for status, response in responses:
        schema = response.get("content", {}).get(JSON, {}).get("schema", {})
        error = schema.get("properties", {}).get("error")
        if error is not None:
            codes.setdefault(status, set()).update(error["properties"]["code"]["enum"])
    return codes


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    OPENAPI_31_VALIDATOR.validate(document)
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def test_every_error_code_is_documented_under_its_status(document: dict[str, Any]) -> None:
    codes = documented_codes(document)
    missing = [(code, status) for code, (status, _) in ERROR_CODES.items() if code not in codes.get(str(status), ())]
    assert not missing
    embeddings = document["paths"]["/v1/embeddings"]["post"]["responses"]
    assert "`too_many_inputs`" in embeddings["400"]["description"]
    assert set(embeddings["429"]["headers"]) == {"Retry-After", "retry-after-ms"}


def test_every_example_request_is_accepted_and_answered_as_documented(
    gateway_url: str, document: dict[str, Any]
) -> None:
    operation = document["paths"]["/v1/embeddings"]["post"]
    examples = operation["requestBody"]["content"][JSON]["examples"]
    request = component(document, "EmbeddingRequest")
    answer = validator(document, operation["responses"]["200"]["content"][JSON]["schema"])
    assert len(examples) >= 10
    for name, example in examples.items():
        assert request.is_valid(example["value"]), name
        response = httpx.post(f"{gateway_url}/v1/embeddings", json=example["value"], timeout=30)
        assert response.status_code == 200, (name, response.text)
        answer.validate(response.json())


def test_response_examples_show_both_encodings_of_one_vector(document: dict[str, Any]) -> None:
    ok = document["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"][JSON]
    answer = validator(document, ok["schema"])
    for example in ok["examples"].values():
        answer.validate(example["value"])
    floats = ok["examples"]["float"]["value"]["data"][0]["embedding"]
    packed = base64.b64decode(ok["examples"]["base64"]["value"]["data"][0]["embedding"])
    assert np.frombuffer(packed, dtype="<f4").tolist() == floats


def test_the_documented_request_schema_refuses_what_the_server_refuses(
    gateway_url: str, document: dict[str, Any]
) -> None:
    request = component(document, "EmbeddingRequest")
    refused = [
        {"model": "siglip-tiny", "input": "a", "temperature": 1},
        {"model": "siglip-tiny", "input": ""},
        {"model": "siglip-tiny", "input": []},
        {"model": "siglip-tiny", "input": [{"text": "a", "image": "b"}]},
        {"model": "siglip-tiny", "input": [{"type": "image_url", "image_url": {"url": "x", "size": 1}}]},
        {"model": "siglip-tiny", "input": {"content": []}},
        {"model": "siglip-tiny", "input": [[1, "a"]]},
        {"model": "siglip-tiny", "input": "a", "encoding_format": "int8"},
        {"model": "siglip-tiny", "input": "a", "input_type": "passage"},
        {"model": "no-such-model", "input": "a"},
        {"input": "a"},
    ]
    for body in refused:
        assert not request.is_valid(body), body
        status = httpx.post(f"{gateway_url}/v1/embeddings", json=body).status_code
        assert status in (400, 404), (body, status)


def test_models_enum_lists_the_served_models(gateway_url: str, document: dict[str, Any]) -> None:
    served = [card["id"] for card in httpx.get(f"{gateway_url}/v1/models").json()["data"]]
    model = document["components"]["schemas"]["EmbeddingRequest"]["properties"]["model"]
    assert model["enum"] == served
    component(document, "ModelList").validate(httpx.get(f"{gateway_url}/v1/models").json())
    component(document, "Readiness").validate(httpx.get(f"{gateway_url}/ready").json())
    assert httpx.head(f"{gateway_url}/health").status_code == 200
    assert "head" in document["paths"]["/health"]


def test_document_states_the_configured_limits() -> None:
    limits = LimitSettings(max_items=7, max_text_chars=99, max_parts_per_item=3, max_token_ids=50)
    schemas = openapi_document(limits, [DocumentedModel("m")])["components"]["schemas"]
    lists = [s for s in schemas["Input"]["anyOf"] if s.get("type") == "array"]
    assert {s["maxItems"] for s in lists} == {7}
    assert schemas["Text"]["maxLength"] == 99
    assert schemas["TokenIds"]["maxItems"] == 50
    assert schemas["InterleavedItem"]["properties"]["content"]["maxItems"] == 3
    assert "| `limits.max_items` | 7 |" in openapi_document(limits, [])["info"]["description"]


def test_docs_page_loads_the_document(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '"/openapi.json"' in response.text
    assert "swagger-ui" in response.text


def test_litestar_generated_schema_is_not_served(gateway_url: str) -> None:
    for path in ("/schema", "/schema/openapi.json", "/schema/swagger"):
        assert httpx.get(f"{gateway_url}{path}").status_code == 404
