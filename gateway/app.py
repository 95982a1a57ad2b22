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
from gateway.cache import VectorCache
from gateway.config import Settings
from gateway.images import ImageLoader
from gateway.inputs import InputResolver
from gateway.logs import RequestContextMiddleware
from gateway.openapi import OPENAPI_ROUTES
from gateway.router import Router, ServedModel
from gateway.service import EmbeddingService
from gateway.stores import MemoryStore, RedisStore, TieredStore, VectorStore
from gateway.tokens import LOAD_TIMEOUT_S, TokenDecoder
from providers.registry import create_provider
from providers.torch_device import resolve_device

logger = logging.getLogger(__name__)


def build_models(settings: Settings) -> list[ServedModel]:
    """One provider per configured model; nothing is loaded yet."""
    return [ServedModel(m, create_provider(m.provider, m.provider_options, name=m.name)) for m in settings.models]


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


def describe_source(model: ServedModel) -> str:
    """Where a model's weights come from and where it runs, for the log line before a long load."""
    options = model.settings.provider_options
    source = str(options.get("model", "?"))
    where = f"local directory {source}" if Path(source).is_dir() else f"hub repository {source}"
    if options.get("revision"):
        where += f" (revision {options['revision']})"
    return f"{where} on {resolve_device(str(options.get('device', 'auto')))}"


def load_models(models: Sequence[ServedModel]) -> None:
    """Load weights (blocking, logged before and after); raises the provider's `ModelLoadError`."""
    for model in models:
        logger.info(
            "loading model %s (provider %s) from %s", model.name, model.settings.provider, describe_source(model)
        )
        started = time.perf_counter()
        model.provider.load()
        elapsed = time.perf_counter() - started
        logger.info("loaded model %s (%d dimensions) in %.1f s", model.name, model.dimension, elapsed)


def create_app(
    settings: Settings, models: Sequence[ServedModel] | None = None, *, token_load_timeout_s: float = LOAD_TIMEOUT_S
) -> Litestar:
    """Build the app; `models` may be pre-loaded (the CLI does, to fail fast with one line).

    Start-up waits at most `token_load_timeout_s` for tiktoken's file (see `gateway.tokens`).
    """
    preloaded = models is not None
    served = list(models) if models is not None else build_models(settings)
    state = State(
        {"ready": False, "started_at": int(time.time()), "expose_cache_headers": settings.cache.expose_headers}
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        images = ImageLoader(settings.images, settings.limits)
        tokens = TokenDecoder(settings.token_encoding, load_timeout_s=token_load_timeout_s)
        resolver = InputResolver(images, tokens, settings.limits)
        store = build_store(settings)
        cache = VectorCache(store, prefix=settings.cache.key_prefix)
        app.state.service = EmbeddingService(Router(served), resolver, cache, settings.limits)
        tokens_loaded = tokens.load()
        if preloaded:
            await tokens_loaded
        else:
            await asyncio.gather(asyncio.to_thread(load_models, served), tokens_loaded)
        for model in served:
            await model.provider.start()
        collector = metrics.register(served, cache)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            metrics.unregister(collector)
            for model in served:
                await model.provider.close()
            await images.aclose()
            await store.aclose()

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
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)
    return app
