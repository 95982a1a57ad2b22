"""Settings: one typed object, built once from a YAML file and `GATEWAY_*` variables.

Precedence, highest first: keyword arguments, environment (`GATEWAY_PORT=9000`, nested with
`__`, e.g. `GATEWAY_IMAGES__MAX_BYTES=...`; lists as JSON, e.g. `GATEWAY_MODELS='[...]'`),
the YAML file (`--config FILE` or `GATEWAY_CONFIG`), then the defaults below.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_MODEL = "google/siglip2-base-patch16-224"


class PriceSettings(BaseModel):
    """What a deployment costs; local deployments cost nothing. Costs come from the usage the upstream
    reports; the `estimate_*` fields bound a call's cost *before* it is made, for budget reservations."""

    model_config = ConfigDict(extra="forbid")

    usd_per_1m_tokens: float = Field(default=0.0, ge=0, description="Price per 1M billed tokens.")
    usd_per_1b_pixels: float = Field(default=0.0, ge=0, description="Price per 1B image pixels (Voyage).")
    estimate_tokens_per_image: int = Field(
        default=16_000,
        ge=0,
        description="Upper bound of the tokens one image is billed as, for reservations (Jina bills an image "
        "as tokens: ~4,000 per 512x512 tile for jina-clip-v2).",
    )
    estimate_min_pixels_per_image: int = Field(
        default=50_000, ge=0, description="Pixels an image is billed as at least (Voyage: 50,000)."
    )

    @property
    def is_free(self) -> bool:
        return self.usd_per_1m_tokens == 0 and self.usd_per_1b_pixels == 0


class BudgetSettings(BaseModel):
    """Spend limits in USD per UTC day and month; None: no limit (spend is still recorded)."""

    model_config = ConfigDict(extra="forbid")

    usd_per_day: float | None = Field(default=None, ge=0)
    usd_per_month: float | None = Field(default=None, ge=0)


class BreakerSettings(BaseModel):
    """A deployment's circuit breaker: after `failure_threshold` failures in a row it is skipped for
    `cooldown_s`, then one request probes it."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class DeploymentSettings(BaseModel):
    """One place a model's vectors are computed: a local checkpoint or an API. Keys other than the ones
    below go to the provider (`model`, `device`, `base_url`, `api_key`, ...)."""

    model_config = ConfigDict(extra="allow")

    provider: str = Field(
        description="Provider kind: `siglip`, `visrag`, `text_encoder`, `jina_clip`, `e5v`, `qwen2_vl` (local); "
        "`jina`, `voyage`, `openai_compatible` (APIs)."
    )
    name: str = Field(
        default="",
        description="Unique name in logs, metrics, budgets and errors. Default: the model's name for its only "
        "deployment, else `<model>/<provider>` (numbered when repeated).",
    )
    priority: int = Field(
        default=0,
        description="0 is tried first. Equal priorities share load (fewest requests in flight first); a higher "
        "number is tried only when every lower one is skipped or has failed.",
    )
    canary: bool = Field(
        default=True,
        description="Embed the start-up probes here and compare them with the model's other deployments. "
        "`false` for an API whose probes would cost money: start-up warns that its space is unverified.",
    )
    price: PriceSettings = Field(default_factory=PriceSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)

    @property
    def provider_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def __repr_args__(self) -> Any:
        """Provider options may hold an `api_key`: a repr (in a log or a traceback) masks secrets."""
        for name, value in super().__repr_args__():
            yield name, "**********" if name is not None and SECRET_NAME.search(name) else value


SECRET_NAME = re.compile(r"key|secret|token|password", re.IGNORECASE)
MODEL_KEYS = {"name", "deployments", "matryoshka_dimensions", "space", "canary_threshold"}


class ModelSettings(BaseModel):
    """One served model: one public name, one vector space, deployments tried in priority order.

    The flat form of earlier versions (`{name, provider, model, ...}`) is one deployment."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What clients send as `model`.")
    deployments: list[DeploymentSettings] = Field(min_length=1)
    matryoshka_dimensions: list[int] | None = Field(
        default=None,
        description="Dimensions clients may ask for with `dimensions` (truncate + renormalise). "
        "None: the model is not Matryoshka-trained and `dimensions` must equal its own.",
    )
    space: str | None = Field(
        default=None,
        description="Declares that deployments whose own spaces differ (a local checkpoint and the API serving "
        "the same weights, bf16 on a GPU host and fp32 here) are one vector space; the start-up canary checks "
        "the claim. Also the cache's namespace. None: every deployment must report the same space.",
    )
    canary_threshold: float = Field(
        default=0.99, gt=0, le=1, description="Lowest cosine between two deployments' vectors of one probe."
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_flat_form(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "deployments" in data:
            return data
        model = {k: v for k, v in data.items() if k in MODEL_KEYS}
        model["deployments"] = [{k: v for k, v in data.items() if k not in MODEL_KEYS}]
        return model

    @model_validator(mode="after")
    def _name_deployments(self) -> ModelSettings:
        if len(self.deployments) == 1 and not self.deployments[0].name:
            self.deployments[0].name = self.name
        seen: dict[str, int] = {}
        for deployment in self.deployments:
            if not deployment.name:
                base = f"{self.name}/{deployment.provider}"
                seen[base] = seen.get(base, 0) + 1
                deployment.name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"deployment names of model {self.name!r} must be unique: {names}")
        return self

    @property
    def provider(self) -> str:
        """The first deployment's provider kind (for messages about single-deployment models)."""
        return self.deployments[0].provider

    @property
    def provider_options(self) -> dict[str, Any]:
        """The first deployment's provider options."""
        return self.deployments[0].provider_options


class ClientKeySettings(BaseModel):
    """A key for one of your clients. Store `key_sha256` (`python -m gateway hash-key`), not the key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Names the key in usage, metrics, logs and budget messages; never secret.")
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 hex of the key.")
    key: SecretStr | None = Field(default=None, description="The key itself (hashed at start-up); prefer key_sha256.")
    models: list[str] = Field(default=["*"], description="Models it may use; `*`: all.")
    requests_per_minute: int | None = Field(default=None, ge=1)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)

    @model_validator(mode="after")
    def _one_key(self) -> ClientKeySettings:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"client key {self.name!r} needs exactly one of `key_sha256` and `key`")
        return self


class AuthSettings(BaseModel):
    """Client keys. None configured: the gateway is open (start-up warns when bound beyond loopback)."""

    model_config = ConfigDict(extra="forbid")

    keys: list[ClientKeySettings] = Field(default_factory=list)
    admin_key_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 hex of the key for `GET /v1/usage`."
    )
    admin_key: SecretStr | None = Field(default=None, description="The admin key itself; prefer admin_key_sha256.")

    @field_validator("keys")
    @classmethod
    def _unique(cls, keys: list[ClientKeySettings]) -> list[ClientKeySettings]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"client key names must be unique: {names}")
        return keys


class LimitSettings(BaseModel):
    """Every per-request limit in one place. Each is checked before the work it bounds, and going over
    one is a 4xx whose message names the setting (`limits.max_text_chars`) and `param` the input."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Largest request body (413).")
    max_concurrent_requests: int = Field(
        default=256,
        ge=1,
        description="Embedding requests handled at once, process-wide; more get an immediate 429 before "
        "their body is read, so overload is refused cheaply instead of queueing in front of the model's queue.",
    )
    max_items: int = Field(default=2048, ge=1, description="Items (vectors) per request, as OpenAI.")
    max_parts_per_item: int = Field(default=16, ge=1, description="Parts of one interleaved item.")
    max_text_chars: int = Field(default=65_536, ge=1, description="Characters of one text part.")
    max_request_text_chars: int = Field(default=2_000_000, ge=1, description="Characters of all texts of a request.")
    max_token_ids: int = Field(default=8192, ge=1, description="Token ids of one int[] input, as OpenAI.")
    max_request_token_ids: int = Field(default=300_000, ge=1, description="Token ids per request, as OpenAI.")
    max_images: int = Field(default=32, ge=1, description="Image parts per request (Infinity allows 32).")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Encoded bytes of one image.")
    max_request_image_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Encoded image bytes per request, fetched and inline."
    )
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="width*height of one image, checked from its header before decoding."
    )
    max_request_pixels: int = Field(default=120_000_000, ge=1, description="width*height of all images of a request.")


class ImageSettings(BaseModel):
    """How images are fetched from URLs (their sizes are bounded in `limits`)."""

    fetch_timeout_s: float = Field(
        default=10.0, gt=0, description="Time to fetch one URL, the wait for a fetch slot included."
    )
    request_fetch_timeout_s: float = Field(
        default=30.0, gt=0, description="Time for all of one request's fetches together."
    )
    max_redirects: int = Field(default=3, ge=0)
    max_concurrent_fetches: int = Field(default=16, ge=1, description="URL fetches in flight, process-wide.")
    max_fetches_per_request: int = Field(
        default=4, ge=1, description="URL fetches one request may have in flight, so it cannot take every slot."
    )
    dns_threads: int = Field(default=4, ge=1, description="Threads resolving image hosts (apart from decoding).")
    decode_threads: int = Field(default=4, ge=1, description="Threads hashing and decoding images.")
    allowed_private_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs that image URLs may resolve to although private, loopback or link-local, "
        "e.g. ['127.0.0.1/32'] for tests or ['10.0.0.0/8'] for an internal bucket.",
    )


class CacheSettings(BaseModel):
    """The per-item vector cache."""

    memory_mb: float = Field(
        default=256, ge=0, description="In-process cache size; with Redis, the L1 in front of it. 0 turns it off."
    )
    ttl_s: int | None = Field(default=None, gt=0, description="Expiry of Redis entries; None keeps them.")
    key_prefix: str = Field(default="emb:", description="Prefix of every Redis key.")
    expose_headers: bool = Field(
        default=False,
        description="Answer with `X-Cache-Hits` / `X-Cache-Misses`. Off by default: they tell one client "
        "that another embedded the same input. Turn on when every client is trusted.",
    )
    redis_cluster: bool = Field(default=False, description="Use redis-py's cluster client for `redis_url`.")
    redis_timeout_s: float = Field(default=0.25, gt=0, description="Socket timeout: a slow Redis becomes a miss.")
    redis_retry_after_s: float = Field(
        default=1.0, ge=0, description="Pause before trying Redis again after a failure."
    )
    write_delay_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="Computed vectors are stored after the answer, gathered for up to this long into one "
        "write (until then they are served from the process). 0: one write per request, right after it.",
    )


class Settings(BaseSettings):
    """Everything the gateway reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid")

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=8000, description="Port to listen on.")
    log_level: str = Field(default="info")
    request_read_timeout_s: float = Field(
        default=60.0, gt=0, description="A request's headers and body must arrive within this (slow clients)."
    )
    max_connections: int = Field(
        default=2048, ge=1, description="Connections served at once; beyond it uvicorn answers 503."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="`json`: one JSON object per log line.")
    access_log: bool = Field(
        default=True, description="One line per request (~14 us each); off for the last few % of cached-hit req/s."
    )
    models: list[ModelSettings] = Field(
        default_factory=lambda: [
            ModelSettings.model_validate({"name": DEFAULT_MODEL, "provider": "siglip", "model": DEFAULT_MODEL})
        ],
        description="Served models, in the order `/v1/models` lists them.",
    )
    images: ImageSettings = Field(default_factory=ImageSettings)
    redis_url: SecretStr | None = Field(
        default=None, description="redis://[:password@]host:6379/0 (GATEWAY_REDIS_URL); None: in-process cache only."
    )
    cache: CacheSettings = Field(default_factory=CacheSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    token_encoding: str = Field(
        default="cl100k_base", description="tiktoken encoding used to decode token-id inputs (LangChain's default)."
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_legacy_limits(cls, data: Any) -> Any:
        """Configs written before `limits` existed keep working: their keys move into it."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        legacy = {"max_inputs": "max_items", "max_request_bytes": "max_body_bytes"}
        images = dict(data.get("images") or {})
        image_legacy = {"max_bytes": "max_image_bytes", "max_pixels": "max_image_pixels"}
        lifted = {new: data.pop(old) for old, new in legacy.items() if old in data}
        lifted |= {new: images.pop(old) for old, new in image_legacy.items() if old in images}
        if lifted:
            data["limits"] = {**lifted, **dict(data.get("limits") or {})}
            if "images" in data:
                data["images"] = images
        return data

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        names = [m.name for m in models]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"model names must be unique: {sorted(duplicates)}")
        deployments = [d.name for m in models for d in m.deployments]
        duplicates = {n for n in deployments if deployments.count(n) > 1}
        if duplicates:
            raise ValueError(f"deployment names must be unique across models: {sorted(duplicates)}")
        return models


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from `config_file` (YAML, optional), the environment and `overrides`."""

    class _Settings(Settings):
        model_config = SettingsConfigDict(yaml_file=config_file)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file is not None:
                sources += (YamlConfigSettingsSource(settings_cls),)
            return sources

    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    return _Settings(**overrides)
