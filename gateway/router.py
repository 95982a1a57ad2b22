"""`model` names to served models, and the checks that an input fits the model.

The router knows each model's vector space (dimension, modalities, Matryoshka sizes) but
nothing of any provider's wire format or weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.config import ModelSettings
from gateway.deployments import Deployment
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.inputs import ItemSpec
from providers.base import Modality


class SpaceMismatch(Exception):
    """Deployments of one model that are not one vector space: the gateway refuses to start."""


@dataclass(slots=True)
class ServedModel:
    """One public model name: one vector space, computed by its deployments in priority order."""

    settings: ModelSettings
    deployments: list[Deployment]
    space: str = ""
    """The cache's namespace: the declared `space`, else the one space every deployment reports."""

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def dimension(self) -> int:
        return self.deployments[0].provider.info.dimension

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset().union(*(d.provider.info.modalities for d in self.deployments))

    @property
    def matryoshka_dimensions(self) -> list[int] | None:
        """Sizes `dimensions` may ask for: the model's config, else what its first deployment was trained to."""
        configured = self.settings.matryoshka_dimensions
        if configured is not None:
            return configured
        trained = self.deployments[0].provider.info.matryoshka_dimensions
        return list(trained) if trained else None

    def settle_space(self) -> None:
        """After loading: every deployment has the same dimension, and either reports the same space or
        the model declares one (which the canary then checks). Otherwise `SpaceMismatch`."""
        first = self.deployments[0]
        for other in self.deployments[1:]:
            if other.provider.info.dimension != first.provider.info.dimension:
                raise SpaceMismatch(
                    f"model '{self.name}': deployment '{first.name}' has {first.provider.info.dimension} dimensions "
                    f"and '{other.name}' has {other.provider.info.dimension}: they are not one vector space"
                )
        if self.settings.space:
            self.space = f"declared:{self.settings.space}"
            return
        for other in self.deployments[1:]:
            if other.provider.info.space != first.provider.info.space:
                raise SpaceMismatch(
                    f"model '{self.name}': deployments '{first.name}' ({first.provider.info.space}) and "
                    f"'{other.name}' ({other.provider.info.space}) are different vector spaces. Vectors of one "
                    "model must be interchangeable; if these serve the same weights, declare `space:` on the model "
                    "and the start-up canary will check the claim"
                )
        self.space = first.provider.info.space

    def check_items(self, specs: Sequence[ItemSpec]) -> None:
        """Refuse parts of a modality no deployment embeds, and fused items none can fuse."""
        modalities = self.modalities
        for spec in specs:
            for part in spec.parts:
                if part.modality not in modalities:
                    accepted = " and ".join(sorted(m.value for m in modalities))
                    raise InvalidRequest(
                        f"{part.param} is {part.modality.value}, but model '{self.name}' accepts only {accepted}",
                        param=part.param,
                        code="unsupported_modality",
                    )
            if len(spec.parts) > 1:
                needed = {part.modality for part in spec.parts}
                if not any(
                    d.provider.info.fuses_parts and needed <= d.provider.info.modalities for d in self.deployments
                ):
                    raise InvalidRequest(
                        f"{spec.param}: model '{self.name}' does not accept interleaved items",
                        param=spec.param,
                        code="unsupported_input",
                    )

    def check_dimensions(self, dimensions: int | None) -> int | None:
        """The size to truncate to, or None to keep the model's own."""
        native = self.dimension
        if dimensions is None or dimensions == native:
            return None
        allowed = self.matryoshka_dimensions
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
