"""The gateway's one error tree and the one table that turns errors into HTTP statuses.

    GatewayError                      rendered as {"error": {message, type, param, code}}
     ├── InvalidRequest        400    a bad field or input item; `param` names it
     ├── Unauthorized          401    a missing or unknown client key
     ├── PermissionDenied      403    a key used for a model (or route) it may not use
     ├── UnsupportedMediaType  415    the body is not JSON
     ├── ModelNotFound         404    `model` is not served here
     ├── RateLimited           429    a queue is full; carries Retry-After
     │    └── InsufficientQuota 429    a budget is spent (not retried by the openai SDK)
 ├── ClientDisconnected    499    the client left before its answer (nobody reads the body)
     ├── BadGateway            502    every upstream refused our credentials or quota
     └── ServiceUnavailable    503    a dependency (model, upstream) failed

Errors raised by providers (`providers.base`) are translated by `from_provider_error`.
`ERROR_CODES` lists every `code` the gateway answers with, its status and when; the OpenAPI
document is built from it, and a test checks that every code the source raises is listed.
"""

from __future__ import annotations

from typing import Any

from providers.base import InputRejected, Overloaded, ProviderError

ERROR_CODES: dict[str, tuple[int, str]] = {
    # 400: the request or one of its inputs
    "invalid_json": (400, "The body is not JSON, not an object, nested too deeply, or holds a lone surrogate."),
    "unknown_parameter": (400, "A top-level field OpenAI's schema does not have."),
    "missing_required_parameter": (400, "`model` or `input` is missing."),
    "invalid_value": (400, "A field of the wrong type or value (`input_type`, `task`, `dimensions`, `user`)."),
    "invalid_encoding_format": (400, "`encoding_format` is not `float` or `base64`."),
    "invalid_dimensions": (400, "`dimensions` is not one the model offers."),
    "empty_input": (400, "`input`, a string or a token list is empty."),
    "invalid_input": (400, "An element of `input` has an unknown shape or field; `param` names it."),
    "too_many_inputs": (400, "More items than `limits.max_items`."),
    "too_many_parts": (400, "An interleaved item with more parts than `limits.max_parts_per_item`."),
    "text_too_long": (400, "A text over `limits.max_text_chars`, or all texts over `limits.max_request_text_chars`."),
    "too_many_tokens": (
        400,
        "A token-id input over `limits.max_token_ids`, or all over `limits.max_request_token_ids`.",
    ),
    "invalid_token_id": (400, "A token id outside the encoding's vocabulary."),
    "token_ids_unsupported": (400, "Token-id input while the server has no tiktoken file to decode it."),
    "too_many_images": (400, "More image parts than `limits.max_images`."),
    "unsupported_modality": (400, "An image to a text-only model, or the reverse."),
    "unsupported_input": (400, "An interleaved item to a model that cannot fuse parts."),
    "invalid_base64": (400, "An image that is not valid base64, or a data URI without `;base64,`."),
    "invalid_image": (400, "Bytes that are not a supported image, or a truncated one."),
    "image_too_large": (
        400,
        "An image over `limits.max_image_bytes` or `limits.max_image_pixels`, or a request over "
        "`limits.max_request_image_bytes` or `limits.max_request_pixels`.",
    ),
    "invalid_image_url": (400, "An image URL that is malformed or not http(s)."),
    "image_url_forbidden": (400, "An image URL whose host is not a public address."),
    "image_fetch_failed": (400, "An image URL that could not be fetched: unreachable, an HTTP error, too slow."),
    # other 4xx
    "invalid_api_key": (401, "No `Authorization: Bearer` key, or one the gateway does not know."),
    "model_not_allowed": (403, "The client key may not use this model (its `models` list)."),
    "admin_key_required": (403, "`GET /v1/usage` needs the admin key."),
    "not_found": (404, "No such route."),
    "model_not_found": (404, "`model` is not served here."),
    "method_not_allowed": (405, "The route exists, the method does not."),
    "request_too_large": (413, "A body over `limits.max_body_bytes`."),
    "unsupported_media_type": (415, "A body that is not `application/json`."),
    "unsupported_content_encoding": (415, "A compressed request body (`Content-Encoding`); send it plain."),
    "server_overloaded": (
        429,
        "Every deployment of the model is saturated or rate limited; retry after `Retry-After` seconds.",
    ),
    "rate_limit_exceeded": (429, "The client key's `requests_per_minute`; retry after `Retry-After` seconds."),
    "insufficient_quota": (429, "A budget (the key's or every paid deployment's) is spent; the message names it."),
    "client_disconnected": (499, "The client left before its answer (logged; nobody reads it)."),
    # 5xx: the gateway or a dependency; never a wrong vector
    "internal_error": (500, "A bug; logged with its traceback."),
    "http_error": (500, "Any other HTTP-level error."),
    "upstream_refused": (502, "An upstream API refused the gateway's credentials or quota; names the deployment."),
    "model_unavailable": (
        503,
        "No deployment of the model could compute: failed, timed out, malformed vectors, or circuit open.",
    ),
    "interrupted": (503, "The request's work was cancelled inside the gateway; retrying is safe."),
}
MAX_ECHO = 80
MAX_MESSAGE = 1000
MAX_PARAM = 200


def clip(value: object, limit: int = MAX_ECHO) -> str:
    """`repr` of a client's value for an error message, cut so a huge input is not echoed back whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}...({len(text)} chars)"


class GatewayError(Exception):
    """An error with an OpenAI-shaped body."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        if len(message) > MAX_MESSAGE:  # a last guard: messages name inputs, never carry them whole
            message = message[: MAX_MESSAGE - 3] + "..."
        if param is not None and len(param) > MAX_PARAM:  # a client's field names can be long too
            param = param[: MAX_PARAM - 3] + "..."
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "invalid_request_error"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    error_type = "invalid_request_error"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"


class RateLimited(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float, code: str = "server_overloaded") -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {
            "Retry-After": str(max(1, round(self.retry_after))),
            "retry-after-ms": str(int(self.retry_after * 1000)),
        }


class InsufficientQuota(RateLimited):
    """A spent budget: retrying soon does not help, so the openai SDK is told not to (`x-should-retry`)."""

    error_type = "insufficient_quota"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after, code="insufficient_quota")

    def headers(self) -> dict[str, str]:
        return super().headers() | {"x-should-retry": "false"}


class BadGateway(GatewayError):
    status_code = 502
    error_type = "server_error"


class ClientDisconnected(GatewayError):
    status_code = 499
    error_type = "invalid_request_error"


class ServiceUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"


def from_provider_error(exc: ProviderError, item_params: list[str] | None = None) -> GatewayError:
    """Translate a provider's error; `item_params[i]` names item i in the request."""
    if isinstance(exc, Overloaded):
        return RateLimited(str(exc), retry_after=exc.retry_after)
    if isinstance(exc, InputRejected):
        param = item_params[exc.index] if item_params and exc.index < len(item_params) else None
        return InvalidRequest(str(exc), param=param, code="invalid_input")
    return ServiceUnavailable(f"the model could not serve this request: {exc}", code="model_unavailable")
