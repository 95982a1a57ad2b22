"""The application factory: settings in, a Litestar app with its models' lifecycle out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State

from gateway import metrics
from gateway.api import EXCEPTION_HANDLERS, ROUTES
from gateway.auth import KeyRing
from gateway.cache import VectorCache
from gateway.canary import Canary, recheck_forever, run_canaries
from gateway.config import DeploymentSettings, Settings
from gateway.deployments import Deployment
from gateway.dispatch import Dispatcher
from gateway.embeddings_asgi import EmbeddingsEndpoint
from gateway.images import ImageLoader
from gateway.inputs import InputResolver
from gateway.ledger import MemoryLedger, RedisLedger, SpendLedger
from gateway.logs import RequestContextMiddleware
from gateway.openapi import OPENAPI_ROUTES
from gateway.ratelimit import KeyRateLimiter
from gateway.router import Router, ServedModel
from gateway.service import EmbeddingService
from gateway.stores import MemoryStore, RedisStore, TieredStore, VectorStore
from gateway.tokens import LOAD_TIMEOUT_S, TokenDecoder
from providers.registry import create_provider, loads_weights
from providers.torch_device import resolve_device

logger = logging.getLogger(__name__)


def build_models(settings: Settings) -> list[ServedModel]:
    """One provider per configured deployment; nothing is loaded yet."""
    return [
        ServedModel(
            m,
            [
                Deployment.from_settings(d, create_provider(d.provider, d.provider_options, name=d.name))
                for d in m.deployments
            ],
        )
        for m in settings.models
    ]


def build_ledger(settings: Settings) -> SpendLedger:
    """Budgets in Redis when configured (shared by replicas), else in this process."""
    if settings.redis_url is None:
        return MemoryLedger()
    return RedisLedger.from_url(
        settings.redis_url.get_secret_value(),
        settings.cache.key_prefix,
        retry_after_s=settings.cache.redis_retry_after_s,
        cluster=settings.cache.redis_cluster,
    )


def build_store(settings: Settings) -> VectorStore:
    """Memory only by default; Redis when configured, with memory as its L1 unless memory_mb is 0."""
    cache = settings.cache
    memory = MemoryStore(int(cache.memory_mb * 1024 * 1024))
    if settings.redis_url is None:
        return memory
    redis = RedisStore(
        settings.redis_url.get_secret_value(),
        ttl_s=cache.ttl_s,
        timeout_s=cache.redis_timeout_s,
        retry_after_s=cache.redis_retry_after_s,
        cluster=cache.redis_cluster,
    )
    return TieredStore(memory, redis) if cache.memory_mb > 0 else redis


def weights_source(settings: DeploymentSettings) -> str | None:
    """The hub id or directory a local deployment loads its weights from; None for an API."""
    return str(settings.provider_options.get("model", "")) if loads_weights(settings.provider) else None


def describe_source(settings: DeploymentSettings) -> str:
    """Where a deployment's weights come from and where it runs, for the log line before a long load."""
    options = settings.provider_options
    source = weights_source(settings)
    if source is None:
        return f"an API at {options.get('base_url', 'its default URL')}"
    where = f"local directory {source}" if Path(source).is_dir() else f"hub repository {source}"
    if options.get("revision"):
        where += f" (revision {options['revision']})"
    return f"{where} on {resolve_device(str(options.get('device', 'auto')))}"


def load_models(models: Sequence[ServedModel]) -> None:
    """Load every deployment (blocking, logged before and after), then check each model is one space.

    Raises the provider's `ModelLoadError`, or `SpaceMismatch`."""
    for model in models:
        for deployment in model.deployments:
            load_deployment(model, deployment)
        model.settle_space()


def load_deployment(model: ServedModel, deployment: Deployment) -> None:
    """Load one deployment's weights or check its API settings, logged before and after."""
    logger.info(
        "loading model %s deployment %s (provider %s) from %s",
        model.name,
        deployment.name,
        deployment.settings.provider,
        describe_source(deployment.settings),
    )
    started = time.perf_counter()
    deployment.provider.load()
    elapsed = time.perf_counter() - started
    logger.info("loaded %s (%d dimensions) in %.1f s", deployment.name, deployment.provider.info.dimension, elapsed)


def create_app(
    settings: Settings,
    models: Sequence[ServedModel] | None = None,
    *,
    canaries: Sequence[Canary] | None = None,
    token_load_timeout_s: float = LOAD_TIMEOUT_S,
) -> Litestar:
    """Build the app; `models` may be pre-loaded and `canaries` already run (the CLI does both, to fail
    fast with one line: then `canaries` are the ones with deployments still to verify).

    Start-up waits at most `token_load_timeout_s` for tiktoken's file (see `gateway.tokens`).
    """
    preloaded = models is not None
    served = list(models) if models is not None else build_models(settings)
    state = State(
        {
            "ready": False,
            "started_at": int(time.time()),
            "expose_cache_headers": settings.cache.expose_headers,
            "key_ring": KeyRing(settings.auth),
        }
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        images = ImageLoader(settings.images, settings.limits)
        tokens = TokenDecoder(settings.token_encoding, load_timeout_s=token_load_timeout_s)
        resolver = InputResolver(images, tokens, settings.limits)
        store = build_store(settings)
        cache = VectorCache(store, prefix=settings.cache.key_prefix, write_delay_s=settings.cache.write_delay_ms / 1000)
        ledger = build_ledger(settings)
        dispatcher = Dispatcher(ledger)
        app.state.service = EmbeddingService(Router(served), resolver, cache, settings.limits, dispatcher)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
        app.state.rate_limiter = KeyRateLimiter(
            redis_url, prefix=settings.cache.key_prefix, timeout_s=settings.cache.redis_timeout_s
        )
        tokens_loaded = tokens.load()
        if preloaded:
            await tokens_loaded
        else:
            await asyncio.gather(asyncio.to_thread(load_models, served), tokens_loaded)
        deployments = [d for model in served for d in model.deployments]
        recheck: asyncio.Task[None] | None = None
        try:
            for deployment in deployments:
                await deployment.provider.start()
            unverified = list(canaries) if canaries is not None else await run_canaries(served)
            if unverified:
                recheck = asyncio.create_task(recheck_forever(unverified), name="canary-recheck")
            collector = metrics.register(served, cache, dispatcher, app.state.rate_limiter)
            app.state.ready = True
            try:
                yield
            finally:
                app.state.ready = False
                metrics.unregister(collector)
        finally:
            if recheck is not None:
                recheck.cancel()
            for deployment in deployments:
                await deployment.provider.close()
            await images.aclose()
            await cache.drain()  # vectors already computed are stored before the store closes
            await store.aclose()
            await ledger.aclose()

    prometheus = metrics.prometheus_config()
    app = Litestar(
        route_handlers=[*ROUTES, *OPENAPI_ROUTES, metrics.MetricsController],
        middleware=[prometheus.middleware],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=state,
        request_max_body_size=settings.limits.max_body_bytes,
        openapi_config=None,
        logging_config=None,  # Litestar's default would replace the root handler that `gateway.logs` set up
    )
    # Around Litestar's own handler, not in `middleware=`: that runs only for matched routes, and the
    # request id and access line are wanted on 404s and on errors raised before a handler too.
    # `POST /v1/embeddings` is served in front of the router (`gateway.embeddings_asgi`: Litestar's
    # per-request work was ~20% of a miss); the rest goes to Litestar's handler.
    embeddings = EmbeddingsEndpoint(app.asgi_handler, app.state, settings.limits.max_body_bytes)
    app.asgi_handler = RequestContextMiddleware(embeddings)
    return app
