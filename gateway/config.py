"""Settings: one typed object, built once from a YAML file and `GATEWAY_*` variables.

Precedence, highest first: keyword arguments, environment (`GATEWAY_PORT=9000`, nested with
`__`, e.g. `GATEWAY_IMAGES__MAX_BYTES=...`; lists as JSON, e.g. `GATEWAY_MODELS='[...]'`),
the YAML file (`--config FILE` or `GATEWAY_CONFIG`), then the defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
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


class ImageSettings(BaseModel):
    """Limits on images fetched from URLs and decoded from bytes."""

    fetch_timeout_s: float = Field(default=10.0, gt=0, description="Total time to fetch one URL.")
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest encoded image accepted.")
    max_pixels: int = Field(default=40_000_000, gt=0, description="Largest width*height (decompression bombs).")
    max_redirects: int = Field(default=3, ge=0)
    max_concurrent_fetches: int = Field(default=16, ge=1, description="URL fetches in flight, process-wide.")
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
    max_inputs: int = Field(default=2048, ge=1, description="Items per request (OpenAI's limit).")
    max_request_bytes: int = Field(default=64 * 1024 * 1024, description="Largest request body (base64 images).")
    token_encoding: str = Field(
        default="cl100k_base", description="tiktoken encoding used to decode token-id inputs (LangChain's default)."
    )

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
