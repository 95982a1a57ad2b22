"""Settings: one typed object, built once from a YAML file and `GATEWAY_*` variables.

Precedence, highest first: keyword arguments, environment (`GATEWAY_PORT=9000`, nested with
`__`, e.g. `GATEWAY_IMAGES__MAX_BYTES=...`; lists as JSON, e.g. `GATEWAY_MODELS='[...]'`),
the YAML file (`--config FILE` or `GATEWAY_CONFIG`), then the defaults below.
"""

from __future__ import annotations

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


class ModelSettings(BaseModel):
    """One served model. Keys other than the ones below go to the provider (`model`, `device`, ...)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="What clients send as `model`.")
    provider: str = Field(description="Provider kind, e.g. `siglip`.")
    matryoshka_dimensions: list[int] | None = Field(
        default=None,
        description="Dimensions clients may ask for with `dimensions` (truncate + renormalise). "
        "None: the model is not Matryoshka-trained and `dimensions` must equal its own.",
    )

    @property
    def provider_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


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
