"""`model` names to served models, and the checks that an input fits the model.

The router knows each model's vector space (dimension, modalities, Matryoshka sizes) but
nothing of any provider's wire format or weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.config import ModelSettings
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.inputs import ItemSpec
from providers.base import EmbeddingProvider, Modality


@dataclass(slots=True)
class ServedModel:
    """One public model name: its settings and the provider that computes its vectors."""

    settings: ModelSettings
    provider: EmbeddingProvider

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def dimension(self) -> int:
        return self.provider.info.dimension

    @property
    def modalities(self) -> frozenset[Modality]:
        return self.provider.info.modalities

    def check_items(self, specs: Sequence[ItemSpec]) -> None:
        """Refuse parts of a modality the model cannot embed, and fused items it cannot fuse."""
        info = self.provider.info
        for spec in specs:
            if len(spec.parts) > 1 and not info.fuses_parts:
                raise InvalidRequest(
                    f"{spec.param}: model '{self.name}' does not accept interleaved items",
                    param=spec.param,
                    code="unsupported_input",
                )
            for part in spec.parts:
                if part.modality not in info.modalities:
                    accepted = " and ".join(sorted(m.value for m in info.modalities))
                    raise InvalidRequest(
                        f"{part.param} is {part.modality.value}, but model '{self.name}' accepts only {accepted}",
                        param=part.param,
                        code="unsupported_modality",
                    )

    def check_dimensions(self, dimensions: int | None) -> int | None:
        """The size to truncate to, or None to keep the model's own."""
        native = self.dimension
        if dimensions is None or dimensions == native:
            return None
        allowed = self.settings.matryoshka_dimensions
        if not allowed:
            raise InvalidRequest(
                f"model '{self.name}' has {native} dimensions and is not Matryoshka-trained; "
                f"'dimensions' must be {native} or omitted, got {dimensions}",
                param="dimensions",
                code="invalid_dimensions",
            )
        if dimensions not in allowed or not 0 < dimensions < native:
            raise InvalidRequest(
                f"'dimensions' for model '{self.name}' must be one of "
                f"{sorted({*(d for d in allowed if d < native), native})}, got {dimensions}",
                param="dimensions",
                code="invalid_dimensions",
            )
        return dimensions


class Router:
    """The served models by name."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        self._models = {model.name: model for model in models}

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def resolve(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(
                f"The model '{name}' does not exist on this server; GET /v1/models lists the served ones",
                param="model",
                code="model_not_found",
            ) from None
