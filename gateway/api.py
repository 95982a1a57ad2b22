"""Thin Litestar handlers: parse, call one service, encode. No policy lives here."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from litestar import Request, Response, get, post, route
from litestar.datastructures import State
from litestar.enums import HttpMethod
from litestar.exceptions import HTTPException
from litestar.types import Receive

from gateway.auth import KeyRing
from gateway.cache import CachePolicy
from gateway.context import RequestContext
from gateway.encoding import embedding_body
from gateway.errors import ClientDisconnected, GatewayError, InvalidRequest, ServiceUnavailable, clip
from gateway.ratelimit import KeyRateLimiter
from gateway.service import EmbeddingService
from gateway.usage import usage_report

logger = logging.getLogger(__name__)
T = TypeVar("T")
JSON = "application/json"
PARSE_ON_LOOP_BYTES = 64 * 1024  # larger bodies are decoded and walked on a worker thread
WATCH_AFTER_S = 0.005  # a request still working after this watches for its client leaving


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T], where: str = "") -> T:
    """Run `work` in this task, cancelling it (and so dropping its queued parts) if the client
    disconnects (`receive`: the request's ASGI receive, its body already read). The watcher task
    starts only once the work has run `WATCH_AFTER_S`: a cache hit or a fast upstream answer (well
    under a millisecond of work) never pays for one."""
    current = asyncio.current_task()
    assert current is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        await _until_disconnect(receive)
        gone = True
        current.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientDisconnected("The client closed the connection", code="client_disconnected") from None
        if current.cancelling():  # the server is stopping: let the cancellation through
            raise
        # nobody cancelled this task: a bug below, answered as a retryable 503, not a bare 500
        logger.exception("request work was cancelled from within on %s", where)
        raise ServiceUnavailable("The request was interrupted; retry it", code="interrupted") from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def embeddings_answer(
    state: State, header: Callable[[str], str | None], read_body: Callable[[], Awaitable[bytes]], receive: Receive
) -> tuple[bytes, dict[str, str]]:
    """`POST /v1/embeddings` from a request's headers and body to the answer's JSON and headers, for
    the Litestar route and the bare ASGI endpoint (`gateway.embeddings_asgi`) alike."""
    service: EmbeddingService = state.service
    key_ring: KeyRing = state.key_ring
    rate_limiter: KeyRateLimiter = state.rate_limiter
    key = key_ring.authenticate(header("authorization"))  # before anything else is read
    await rate_limiter.hit(key)
    with service.admit():  # before the body is read: refusing overload must stay cheap
        body = await read_body()
        parse = functools.partial(service.parse, body, header("content-type") or "", header("content-encoding") or "")
        parsed = await asyncio.to_thread(parse) if len(body) > PARSE_ON_LOOP_BYTES else parse()
        context = RequestContext(key, CachePolicy.from_header(header("cache-control")))
        result = await cancel_on_disconnect(receive, service.embed(parsed, context), "POST /v1/embeddings")
    response_headers = {"X-Gateway-Cost-USD": f"{result.cost_usd:.9f}"}
    if result.deployments:
        response_headers["X-Gateway-Deployments"] = ",".join(result.deployments)
    if state.expose_cache_headers:
        response_headers |= {"X-Cache-Hits": str(result.cache_hits), "X-Cache-Misses": str(result.cache_misses)}
    return embedding_body(result, parsed.request.encoding_format), response_headers


@post(["/v1/embeddings", "/embeddings"], status_code=200, media_type=JSON)
async def create_embeddings(request: Request[Any, Any, State], state: State) -> Response[bytes]:
    """OpenAI's `POST /v1/embeddings`, extended with image and interleaved inputs. Served by
    `gateway.embeddings_asgi` in front of the router; this route documents it and answers other methods."""
    body, headers = await embeddings_answer(state, request.headers.get, request.body, request.receive)
    return Response(body, media_type=JSON, headers=headers)


def _model_card(model: Any, created: int) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": created,
        "owned_by": "embeddings-gateway",
        "modalities": sorted(m.value for m in model.modalities),
        "dimensions": model.dimension,
        "matryoshka_dimensions": model.matryoshka_dimensions,
    }


@get(["/v1/models", "/models"], media_type=JSON)
async def list_models(request: Request[Any, Any, State], state: State) -> dict[str, Any]:
    """The served models the caller's key may use, in OpenAI's list shape, with modalities and dimension."""
    key = state.key_ring.authenticate(request.headers.get("authorization"))
    models = [m for m in state.service.router if key is None or key.models is None or m.name in key.models]
    return {"object": "list", "data": [_model_card(m, state.started_at) for m in models]}


@get(["/v1/models/{model_id:path}"], media_type=JSON)
async def retrieve_model(request: Request[Any, Any, State], state: State, model_id: str) -> dict[str, Any]:
    """One served model."""
    key = state.key_ring.authenticate(request.headers.get("authorization"))
    model = state.service.router.resolve(model_id.lstrip("/"))
    if key is not None:
        key.check_model(model.name)
    return _model_card(model, state.started_at)


@get(["/v1/usage"], media_type=JSON)
async def usage(request: Request[Any, Any, State], state: State) -> dict[str, Any]:
    """Spend by client key, deployment and UTC day, for the last `days` days (admin key)."""
    state.key_ring.check_admin(request.headers.get("authorization"))
    raw = request.query_params.get("days", "7")
    if not raw.isdigit() or not 1 <= int(raw) <= 400:
        raise InvalidRequest(
            f"days must be an integer from 1 to 400, got {clip(raw)}", param="days", code="invalid_value"
        )
    return await usage_report(state.service.dispatcher.ledger, int(raw))


@route("/health", http_method=[HttpMethod.GET, HttpMethod.HEAD], media_type=JSON)
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/ready", media_type=JSON)
async def ready(state: State) -> Response[dict[str, Any]]:
    """Readiness: every model is loaded and its engine started."""
    is_ready = bool(state.ready)
    service: EmbeddingService | None = getattr(state, "service", None)
    models = list(service.router) if service is not None else []
    body = {
        "status": "ready" if is_ready else "starting",
        "models": [m.name for m in models],
        "deployments": {
            d.name: {"model": m.name, "circuit": d.breaker.state.value, "verified": d.verified}
            for m in models
            for d in m.deployments
        },
    }
    return Response(body, status_code=200 if is_ready else 503, media_type=JSON)


def gateway_error_handler(_: Request[Any, Any, Any], exc: GatewayError) -> Response[dict[str, Any]]:
    return Response(exc.body(), status_code=exc.status_code, headers=exc.headers(), media_type=JSON)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    message = f"{exc.detail}: {request.method} {request.url.path}" if status in (404, 405) else str(exc.detail)
    error = {
        "message": message,
        "type": "server_error" if status >= 500 else "invalid_request_error",
        "param": None,
        "code": HTTP_CODES.get(status, "http_error"),
    }
    return Response({"error": error}, status_code=status, headers=exc.headers or {}, media_type=JSON)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = GatewayError("The server had an internal error", code="internal_error").body()
    return Response(body, status_code=500, media_type=JSON)


ROUTES = [create_embeddings, list_models, retrieve_model, usage, health, ready]
EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    GatewayError: gateway_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}
