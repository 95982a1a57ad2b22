"""Prometheus metrics: per-route request counts and latency (Litestar's middleware) plus
what each model's provider reports (parts computed, batches run, queue depth)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.cache import VectorCache
from gateway.router import ServedModel

PROVIDER_METRICS = {
    "parts_total": ("gateway_model_parts", "Inputs (text or image parts) a model has computed.", CounterMetricFamily),
    "batches_total": ("gateway_model_batches", "Forward passes a model has run.", CounterMetricFamily),
    "forward_seconds_total": (
        "gateway_model_forward_seconds",
        "Time spent in forward passes; its rate is the model's utilisation.",
        CounterMetricFamily,
    ),
    "queued": ("gateway_model_queued", "Inputs admitted and not yet answered.", GaugeMetricFamily),
}


class ProviderCollector(Collector):
    """Reads `stats()` of every served model, and the cache's counters, at scrape time."""

    def __init__(self, models: Iterable[ServedModel], cache: VectorCache) -> None:
        self.models = list(models)
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("gateway_cache_hits", "Items answered from the cache.", value=self.cache.hits)
        yield CounterMetricFamily("gateway_cache_misses", "Items computed.", value=self.cache.misses)
        store = self.cache.store.stats()
        if "redis_errors" in store:
            yield CounterMetricFamily("gateway_redis_errors", "Failed Redis calls.", value=store["redis_errors"])
            yield GaugeMetricFamily("gateway_redis_up", "1 while Redis is in use.", value=store["redis_up"])
        if "memory_entries" in store:
            yield GaugeMetricFamily("gateway_cache_memory_bytes", "In-process cache size.", value=store["memory_bytes"])
        for key, (name, documentation, family_type) in PROVIDER_METRICS.items():
            family = family_type(name, documentation, labels=["model"])
            for model in self.models:
                value = model.provider.stats().get(key)
                if value is not None:
                    family.add_metric([model.name], value)
            yield family


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(app_name="embeddings-gateway", prefix="gateway", group_path=True, exclude=["/metrics"])


class MetricsController(PrometheusController):
    """`GET /metrics` in the Prometheus text format."""

    path = "/metrics"


def register(models: Iterable[ServedModel], cache: VectorCache) -> Collector:
    collector = ProviderCollector(models, cache)
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    REGISTRY.unregister(collector)
