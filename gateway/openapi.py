"""The OpenAPI 3.1 document, built from the running settings, and the interactive docs page.

The embeddings handler parses its body by hand (`gateway.schema`, `gateway.inputs`) so that
errors name exact elements, so Litestar cannot describe it; this module states the same rules
as JSON Schema instead. It must never be stricter than the server (what it calls invalid is
refused with a 4xx); it may be looser where a rule spans fields or needs I/O (a text-only
model, an unfetchable URL), which the descriptions say. `tests/test_fuzz.py` holds it to that.
Error responses come from `gateway.errors.ERROR_CODES`, so a new code is documented on arrival.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from gateway.config import LimitSettings
from gateway.errors import ERROR_CODES

Schema = dict[str, Any]
JSON = "application/json"
OPENAPI_PATH = "/openapi.json"
ROUTING_CODES = frozenset({"not_found", "method_not_allowed"})  # about a URL or method, not an operation
ADMIN_CODES = frozenset({"admin_key_required"})
AUTH_CODES = ("invalid_api_key",)
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {}]  # a key when `auth.keys` are configured, else none
GENERIC_CODES = frozenset({"internal_error", "http_error"})  # any operation may answer these
# A 2x2 PNG: the examples must be embeddable by any image model, offline.
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mP4z8DA8J+BkYHh////DAAe9gT9CzF8CQAAAABJRU5ErkJggg=="
)
PNG_DATA_URI = f"data:image/png;base64,{PNG_BASE64}"


@dataclass(frozen=True, slots=True)
class DocumentedModel:
    """What the document says about one served model: its name and whether it embeds images."""

    name: str
    multimodal: bool = True


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], required: Sequence[str], **extra: Any) -> Schema:
    schema = {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}
    return schema | extra


def _const(value: str) -> Schema:
    return {"type": "string", "const": value}


def input_schemas(limits: LimitSettings) -> dict[str, Schema]:
    """Every accepted spelling of `input` (see `gateway.inputs`), bounded by `limits`."""
    image = {
        "type": "string",
        "minLength": 1,
        "description": "An http(s) URL, a data URI (`data:image/png;base64,...`) or bare base64; PNG, JPEG, "
        f"WebP, GIF or BMP, at most {limits.max_image_bytes} bytes and {limits.max_image_pixels} pixels.",
        "examples": [PNG_DATA_URI],
    }
    return {
        "Text": {
            "type": "string",
            "minLength": 1,
            "maxLength": limits.max_text_chars,
            "description": f"A text; all texts of a request together at most {limits.max_request_text_chars} "
            "characters.",
            "examples": ["a photo of a cat"],
        },
        "TokenIds": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "minItems": 1,
            "maxItems": limits.max_token_ids,
            "description": "Token ids of one text in tiktoken's `cl100k_base` (LangChain's default), decoded "
            f"back to text; ids must be in the vocabulary; at most {limits.max_request_token_ids} per request.",
            "examples": [[64, 6685, 315, 264, 8415]],
        },
        "ImageReference": image,
        "JinaText": _object({"text": _ref("Text")}, ["text"], title="Jina text"),
        "JinaImage": _object({"image": _ref("ImageReference")}, ["image"], title="Jina image"),
        "OpenAITextPart": _object({"type": _const("text"), "text": _ref("Text")}, ["type", "text"]),
        "OpenAIImagePart": _object(
            {
                "type": _const("image_url"),
                "image_url": _object(
                    {"url": _ref("ImageReference"), "detail": {"description": "Accepted and ignored."}}, ["url"]
                ),
            },
            ["type", "image_url"],
        ),
        "VoyageImageUrlPart": _object(
            {"type": _const("image_url"), "image_url": _ref("ImageReference")}, ["type", "image_url"]
        ),
        "VoyageImageBase64Part": _object(
            {"type": _const("image_base64"), "image_base64": _ref("ImageReference")}, ["type", "image_base64"]
        ),
        "PartObject": {
            "anyOf": [
                _ref(name)
                for name in (
                    "JinaText",
                    "JinaImage",
                    "OpenAITextPart",
                    "OpenAIImagePart",
                    "VoyageImageUrlPart",
                    "VoyageImageBase64Part",
                )
            ],
            "description": "One text or image part, in Jina's, OpenAI's or Voyage's spelling.",
        },
        "Part": {"anyOf": [_ref("Text"), _ref("PartObject")]},
        "InterleavedItem": _object(
            {
                "content": {
                    "type": "array",
                    "items": _ref("Part"),
                    "minItems": 1,
                    "maxItems": limits.max_parts_per_item,
                }
            },
            ["content"],
            description="Parts fused into one vector (SigLIP: the normalised mean of the parts' vectors).",
        ),
        "ItemObject": {"anyOf": [_ref("PartObject"), _ref("InterleavedItem")]},
        "Item": {"anyOf": [_ref("Text"), _ref("TokenIds"), _ref("ItemObject")]},
        "Input": {
            "anyOf": [
                _ref("Text"),
                {"type": "array", "items": _ref("Text"), "minItems": 1, "maxItems": limits.max_items},
                _ref("TokenIds"),
                {"type": "array", "items": _ref("TokenIds"), "minItems": 1, "maxItems": limits.max_items},
                {"type": "array", "items": _ref("Item"), "minItems": 1, "maxItems": limits.max_items},
                _ref("ItemObject"),
            ],
            "description": f"One input, or 1 to {limits.max_items} items; each item gives one vector, in order. "
            f"At most {limits.max_images} image parts per request.",
        },
    }


def request_schema(models: Sequence[DocumentedModel]) -> Schema:
    """`EmbeddingRequest` of `gateway.schema`: unknown fields are refused, as OpenAI does."""
    model: Schema = {"type": "string", "description": "A served model: `GET /v1/models` lists them."}
    if models:
        model["enum"] = [m.name for m in models]
    return _object(
        {
            "model": model,
            "input": _ref("Input"),
            "encoding_format": {
                "type": "string",
                "enum": ["float", "base64"],
                "default": "float",
                "description": "`base64`: each vector as base64 of little-endian float32 (the openai SDK's default).",
            },
            "dimensions": {
                "type": ["integer", "null"],
                "description": "Truncate and renormalise to this size: one of the model's `matryoshka_dimensions`, "
                "or its own size.",
            },
            "input_type": {
                "enum": ["query", "document", None],
                "description": "Passed to models that embed queries and documents differently.",
            },
            "task": {
                "enum": ["retrieval.query", "retrieval.passage", None],
                "description": "Jina's spelling of `input_type`; must agree with it when both are sent.",
            },
            "user": {"type": ["string", "null"], "description": "Accepted and ignored."},
        },
        ["model", "input"],
    )


def response_schemas() -> dict[str, Schema]:
    """The bodies the server answers with (`gateway.encoding`, `gateway.api`)."""
    count = {"type": "integer", "minimum": 0}
    return {
        "Embedding": _object(
            {
                "object": _const("embedding"),
                "index": count,
                "embedding": {
                    "anyOf": [
                        {"type": "array", "items": {"type": "number"}, "title": "float"},
                        {"type": "string", "contentEncoding": "base64", "title": "base64 little-endian float32"},
                    ]
                },
            },
            ["object", "index", "embedding"],
        ),
        "EmbeddingList": _object(
            {
                "object": _const("list"),
                "data": {"type": "array", "items": _ref("Embedding")},
                "model": {"type": "string"},
                "usage": _object(
                    {"prompt_tokens": count, "total_tokens": count},
                    ["prompt_tokens", "total_tokens"],
                    description="What was computed: text tokens and image patches; cached items cost 0.",
                ),
            },
            ["object", "data", "model", "usage"],
        ),
        "Model": _object(
            {
                "id": {"type": "string"},
                "object": _const("model"),
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
                "modalities": {"type": "array", "items": {"enum": ["image", "text"]}},
                "dimensions": {"type": "integer", "minimum": 1},
                "matryoshka_dimensions": {"type": ["array", "null"], "items": {"type": "integer"}},
            },
            ["id", "object", "created", "owned_by", "modalities", "dimensions", "matryoshka_dimensions"],
        ),
        "ModelList": _object(
            {"object": _const("list"), "data": {"type": "array", "items": _ref("Model")}}, ["object", "data"]
        ),
        "Health": _object({"status": _const("ok")}, ["status"]),
        "Readiness": _object(
            {
                "status": {"enum": ["ready", "starting"]},
                "models": {"type": "array", "items": {"type": "string"}},
                "deployments": {
                    "type": "object",
                    "description": "Each deployment's circuit breaker and canary state, by deployment name.",
                    "additionalProperties": _object(
                        {
                            "model": {"type": "string"},
                            "circuit": {"enum": ["closed", "half_open", "open"]},
                            "verified": {"type": "boolean"},
                        },
                        ["model", "circuit", "verified"],
                    ),
                },
            },
            ["status", "models"],
        ),
        "Usage": _object(
            {
                "object": _const("usage"),
                "days": count,
                "total_usd": {"type": "number", "minimum": 0},
                "keys": {"type": "object", "additionalProperties": {"type": "number"}},
                "deployments": {"type": "object", "additionalProperties": {"type": "number"}},
                "data": {
                    "type": "array",
                    "items": _object(
                        {
                            "date": {"type": "string", "format": "date"},
                            "total_usd": {"type": "number", "minimum": 0},
                            "keys": {"type": "object", "additionalProperties": {"type": "number"}},
                            "deployments": {"type": "object", "additionalProperties": {"type": "number"}},
                        },
                        ["date", "total_usd", "keys", "deployments"],
                    ),
                },
            },
            ["object", "days", "total_usd", "keys", "deployments", "data"],
        ),
    }


def _error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return "rate_limit_error" if status == 429 else "invalid_request_error"


def error_response(status: int, codes: Sequence[str]) -> Schema:
    """The OpenAI error envelope for `status`, its `code` limited to `codes`, each explained."""
    error = _object(
        {
            "message": {"type": "string"},
            "type": _const(_error_type(status)),
            "param": {"type": ["string", "null"], "description": "The offending field or element: `input[3].image`."},
            "code": {"type": "string", "enum": list(codes)},
        },
        ["message", "type", "param", "code"],
    )
    lines = "\n".join(f"- `{code}`: {ERROR_CODES[code][1]}" for code in codes)
    response: Schema = {
        "description": f"Error.\n\n{lines}",
        "content": {JSON: {"schema": _object({"error": error}, ["error"])}},
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds to wait."},
            "retry-after-ms": {"schema": {"type": "integer", "minimum": 0}, "description": "The same in ms."},
        }
    return response


def error_responses(codes: Sequence[str]) -> dict[str, Schema]:
    """One response per status that `codes` span."""
    statuses = sorted({ERROR_CODES[code][0] for code in codes})
    return {
        str(status): error_response(status, [c for c in codes if ERROR_CODES[c][0] == status]) for status in statuses
    }


def _json(description: str, schema: Schema, **extra: Any) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}} | extra


def request_examples(model: str) -> dict[str, Schema]:
    """One example per accepted shape of `input`; all of them embeddable offline."""
    inputs: dict[str, tuple[str, Any]] = {
        "text": ("A string", "a photo of a cat"),
        "texts": ("string[]", ["a photo of a cat", "a dog"]),
        "token_ids": ("int[]: token ids (cl100k_base)", [64, 6685, 315, 264, 8415]),
        "token_id_lists": ("int[][]: one token list per vector", [[64, 6685, 315, 264, 8415], [64, 5679]]),
        "jina": ("Jina objects", [{"text": "a photo of a cat"}, {"image": PNG_DATA_URI}]),
        "openai_parts": (
            "OpenAI content parts",
            [
                {"type": "text", "text": "a photo of a cat"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URI, "detail": "auto"}},
            ],
        ),
        "voyage_parts": (
            "Voyage parts",
            [{"type": "image_url", "image_url": PNG_DATA_URI}, {"type": "image_base64", "image_base64": PNG_BASE64}],
        ),
        "interleaved": (
            "An interleaved item: text and image fused into one vector",
            [{"content": ["a red car", {"type": "image_base64", "image_base64": PNG_BASE64}]}],
        ),
        "single_item": ("A single item object as `input`", {"image": PNG_BASE64}),
    }
    examples = {
        key: {"summary": summary, "value": {"model": model, "input": value}} for key, (summary, value) in inputs.items()
    }
    examples["options"] = {
        "summary": "base64 output, a query embedding",
        "value": {"model": model, "input": "a cat", "encoding_format": "base64", "input_type": "query", "user": "u1"},
    }
    return examples


def response_examples(model: str) -> dict[str, Schema]:
    """The two encodings of the same (4-dimensional, for brevity) vector."""
    vector = [0.5, -0.5, 0.5, -0.5]
    packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    usage = {"prompt_tokens": 5, "total_tokens": 5}

    def body(embedding: Any) -> Schema:
        data = [{"object": "embedding", "index": 0, "embedding": embedding}]
        return {"object": "list", "data": data, "model": model, "usage": usage}

    return {
        "float": {"summary": "encoding_format: float", "value": body(vector)},
        "base64": {"summary": "encoding_format: base64 (little-endian float32)", "value": body(packed)},
    }


def _embeddings_operation(models: Sequence[DocumentedModel], operation_id: str, *, cache_headers: bool) -> Schema:
    example_model = next((m.name for m in models if m.multimodal), models[0].name if models else "MODEL")
    codes = [code for code in ERROR_CODES if code not in ROUTING_CODES | ADMIN_CODES]
    count_header = {"schema": {"type": "integer", "minimum": 0}, "required": True}
    headers = {
        "X-Gateway-Cost-USD": {
            "schema": {"type": "string", "pattern": r"^\d+\.\d{9}$"},
            "required": True,
            "description": "What the request cost on paid deployments, in USD (cache hits and local models: 0).",
        },
        "X-Gateway-Deployments": {
            "schema": {"type": "string"},
            "description": "The deployments that computed its vectors, comma-separated; absent when all were cached.",
        },
    }
    if cache_headers:
        headers |= {
            "X-Cache-Hits": count_header | {"description": "Items answered from the cache."},
            "X-Cache-Misses": count_header | {"description": "Items computed."},
        }
    return {
        "operationId": operation_id,
        "summary": "Create embeddings (OpenAI's request, extended with images and interleaved items)",
        "tags": ["embeddings"],
        "security": SECURITY,
        "parameters": [
            {
                "name": "Cache-Control",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "`no-cache`: skip the cache lookup (still store); `no-store`: do not store.",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _ref("EmbeddingRequest"), "examples": request_examples(example_model)}},
        },
        "responses": {
            "200": {
                "description": "Unit-length vectors in input order.",
                "content": {JSON: {"schema": _ref("EmbeddingList"), "examples": response_examples(example_model)}},
                "headers": headers,
            },
            **error_responses(codes),
        },
    }


def _get(operation_id: str, summary: str, ok: Schema, codes: Sequence[str] = (), **extra: Any) -> Schema:
    responses = {"200": ok, **error_responses([*codes, *sorted(GENERIC_CODES)])}
    return {"get": {"operationId": operation_id, "summary": summary, "responses": responses} | extra}


def paths(models: Sequence[DocumentedModel], *, cache_headers: bool = False) -> dict[str, Schema]:
    """Every route the app serves, the docs excepted; `cache_headers`: `cache.expose_headers` is on."""
    model_list = _json("The served models.", _ref("ModelList"))
    model_id = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "A served model's name; may contain `/` (hub ids), sent as is.",
    }
    head_ok = {"description": "The process answers."}
    ready = _json("Readiness: every model is loaded.", _ref("Readiness"))
    metrics = {
        "description": "Prometheus text format: requests and latency per route, model and cache counters.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    ready_operation = _get("ready", "Readiness", ready, tags=["operations"])
    ready_operation["get"]["responses"]["503"] = _json("Still loading models.", _ref("Readiness"))
    return {
        "/v1/embeddings": {"post": _embeddings_operation(models, "createEmbedding", cache_headers=cache_headers)},
        "/embeddings": {
            "post": _embeddings_operation(models, "createEmbeddingUnversioned", cache_headers=cache_headers)
        },
        "/v1/models": _get(
            "listModels", "List the served models", model_list, AUTH_CODES, tags=["models"], security=SECURITY
        ),
        "/models": _get(
            "listModelsUnversioned",
            "List the served models",
            model_list,
            AUTH_CODES,
            tags=["models"],
            security=SECURITY,
        ),
        "/v1/models/{model_id}": _get(
            "retrieveModel",
            "One served model",
            _json("The model.", _ref("Model")),
            ["model_not_found", "model_not_allowed", *AUTH_CODES],
            tags=["models"],
            parameters=[model_id],
            security=SECURITY,
        ),
        "/v1/usage": _get(
            "usage",
            "Spend by client key, deployment and UTC day (admin key)",
            _json("Spend over the last `days` days.", _ref("Usage")),
            ["invalid_value", "admin_key_required", *AUTH_CODES],
            tags=["operations"],
            security=SECURITY,
            parameters=[
                {
                    "name": "days",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 400, "default": 7},
                }
            ],
        ),
        "/health": _get("health", "Liveness", _json("The process answers.", _ref("Health")), tags=["operations"])
        | {"head": {"operationId": "healthHead", "summary": "Liveness, no body", "responses": {"200": head_ok}}},
        "/ready": ready_operation,
        "/metrics": _get("metrics", "Prometheus metrics", metrics, tags=["operations"]),
    }


def _limits_table(limits: LimitSettings) -> str:
    rows = "\n".join(
        f"| `limits.{name}` | {getattr(limits, name)} | {field.description or ''} |"
        for name, field in LimitSettings.model_fields.items()
    )
    return f"| limit | value | |\n|---|---|---|\n{rows}"


def _version() -> str:
    try:
        return metadata.version("embeddings-gateway")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def openapi_document(
    limits: LimitSettings, models: Sequence[DocumentedModel], *, cache_headers: bool = False
) -> Schema:
    """The whole document for a server with these limits and models (`cache_headers`: see `paths`)."""
    codes = [code for code in ERROR_CODES if code in ROUTING_CODES]
    description = (
        "OpenAI-compatible embeddings for text and images. Every error is "
        '`{"error": {"message", "type", "param", "code"}}`; an unknown route answers 404 `not_found`, '
        f"a wrong method 405 `method_not_allowed`.\n\nThis server's limits:\n\n{_limits_table(limits)}"
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "embeddings-gateway", "version": _version(), "description": description},
        "paths": paths(models, cache_headers=cache_headers),
        "components": {
            "schemas": {
                "EmbeddingRequest": request_schema(models),
                **input_schemas(limits),
                **response_schemas(),
            },
            "responses": {f"Routing{status}": resp for status, resp in error_responses(codes).items()},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client key from `auth.keys`; none needed while no keys are configured.",
                }
            },
        },
    }


@get(OPENAPI_PATH, media_type=JSON, sync_to_thread=False)
def openapi_json(state: State) -> Response[Schema]:
    """The OpenAPI 3.1 document of this server: its own limits and models, so it states what is enforced."""
    service = state.service
    models = [DocumentedModel(m.name, {"text", "image"} <= {str(x) for x in m.modalities}) for m in service.router]
    document = openapi_document(service.limits, models, cache_headers=bool(state.get("expose_cache_headers")))
    return Response(document, media_type=JSON)


DOCS_HTML = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>embeddings-gateway API</title>
  <link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({{url: "{OPENAPI_PATH}", dom_id: "#swagger-ui"}});</script>
</body>
</html>
"""


@get("/docs", media_type="text/html", sync_to_thread=False)
def docs() -> str:
    """Swagger UI (from a CDN) on this server's document."""
    return DOCS_HTML


OPENAPI_ROUTES: list[Any] = [openapi_json, docs]
