"""The gateway's one error tree and the one table that turns errors into HTTP statuses.

    GatewayError                      rendered as {"error": {message, type, param, code}}
     ├── InvalidRequest        400    a bad field or input item; `param` names it
     ├── UnsupportedMediaType  415    the body is not JSON
     ├── ModelNotFound         404    `model` is not served here
     ├── RateLimited           429    a queue is full; carries Retry-After
 ├── ClientDisconnected    499    the client left before its answer (nobody reads the body)
     └── ServiceUnavailable    503    a dependency (model, upstream) failed

Errors raised by providers (`providers.base`) are translated by `from_provider_error`.
"""

from __future__ import annotations

from typing import Any

from providers.base import InputRejected, Overloaded, ProviderError


class GatewayError(Exception):
    """An error with an OpenAI-shaped body."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
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
