"""The start-up canary: proof that a model's deployments are one vector space before it serves.

Every deployment of a model (unless `canary: false`) embeds the same fixed probes: a few texts
and, where it takes images, one generated image. Each must agree with the model's reference
deployment (the first by priority that answers) to `canary_threshold` cosine. A disagreement at
start-up stops the process, naming both deployments and the cosine. A deployment that cannot be
reached is held out (never served unverified) and checked again in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from gateway.deployments import Deployment
from gateway.dispatch import check_vectors
from gateway.router import ServedModel
from providers.base import EmbedOptions, Image, Item, ProviderError, Text, Vectors

logger = logging.getLogger(__name__)
PROBE_TEXTS = (
    "a photo of a dog running on a beach",
    "Quarterly revenue grew by four percent, driven by subscriptions.",
    "東京の夜景はとても美しい",
)
RECHECK_S = 30.0


class CanaryFailed(Exception):
    """Two deployments of one model disagree: the gateway must not start."""


def probe_image() -> Image:
    """A fixed, generated picture (no file ships with the gateway): shapes and a gradient, as PNG."""
    picture = PILImage.new("RGB", (96, 64))
    picture.putdata([(x * 255 // 95, y * 255 // 63, 128) for y in range(64) for x in range(96)])
    draw = ImageDraw.Draw(picture)
    draw.ellipse((10, 10, 50, 50), fill=(220, 30, 30))
    draw.rectangle((55, 20, 90, 58), fill=(20, 40, 200))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    return Image(data=data, mime="image/png", sha256=hashlib.sha256(data).hexdigest(), pixels=picture)


def probes() -> list[Item]:
    return [Item((Text(text),)) for text in PROBE_TEXTS] + [Item((probe_image(),))]


def cosines(a: Vectors, b: Vectors) -> Vectors:
    """Row-wise cosine of two stacks of vectors."""
    values: Vectors = (
        np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    ).astype(np.float32)
    return values


@dataclass(slots=True)
class Canary:
    """One model's canary state: the reference vectors and the deployments still to verify."""

    model: ServedModel
    items: list[Item] = field(default_factory=probes)
    reference: tuple[str, dict[int, np.ndarray]] | None = None
    pending: list[Deployment] = field(default_factory=list)

    async def run(self) -> None:
        """At start-up: raises `CanaryFailed` on a disagreement; holds out deployments it cannot reach."""
        model = self.model
        if len(model.deployments) < 2:
            return
        for deployment in model.deployments:
            if not deployment.settings.canary:
                logger.warning(
                    "model %s: deployment %s skips the canary (canary: false): its vectors are NOT checked "
                    "against the model's other deployments",
                    model.name,
                    deployment.name,
                )
        self.pending = sorted((d for d in model.deployments if d.settings.canary), key=lambda d: d.priority)
        for deployment in self.pending:
            deployment.verified = False
        await self.check_pending(at_start=True)

    async def check_pending(self, *, at_start: bool = False) -> None:
        still: list[Deployment] = []
        for deployment in self.pending:
            try:
                vectors = await self._embed(deployment)
            except ProviderError as exc:
                logger.warning(
                    "model %s: canary could not reach deployment %s (%s); held out until it answers",
                    self.model.name,
                    deployment.name,
                    exc,
                )
                still.append(deployment)
                continue
            try:
                self._compare(deployment, vectors)
            except CanaryFailed as exc:
                if at_start:
                    raise
                logger.error("%s; deployment %s stays out of service", exc, deployment.name)  # noqa: TRY400 (no traceback: the message says it all)
                continue
            deployment.verified = True
        self.pending = still

    async def _embed(self, deployment: Deployment) -> dict[int, np.ndarray]:
        """The probe vectors it can compute, by probe number."""
        info = deployment.provider.info
        numbers = [i for i, item in enumerate(self.items) if item.modalities <= info.modalities]
        if not numbers:
            return {}
        result = await deployment.provider.embed([self.items[i] for i in numbers], EmbedOptions())
        problem = check_vectors(result, len(numbers), info.dimension)
        if problem is not None:
            raise ProviderError(f"deployment '{deployment.name}' {problem}")
        return dict(zip(numbers, result.vectors, strict=True))

    def _compare(self, deployment: Deployment, vectors: dict[int, np.ndarray]) -> None:
        model = self.model
        if self.reference is None:
            self.reference = (deployment.name, vectors)
            return
        name, reference = self.reference
        shared = sorted(set(reference) & set(vectors))
        if not shared:
            logger.warning(
                "model %s: deployments %s and %s share no probe modality; the canary cannot compare them",
                model.name,
                name,
                deployment.name,
            )
            return
        values = cosines(np.stack([reference[i] for i in shared]), np.stack([vectors[i] for i in shared]))
        worst = int(np.argmin(values))
        if values[worst] < model.settings.canary_threshold:
            probe = self.items[shared[worst]].parts[0]
            what = f"text {probe.text!r}" if isinstance(probe, Text) else "the generated image"
            raise CanaryFailed(
                f"model '{model.name}': deployments '{name}' and '{deployment.name}' disagree on the canary probe "
                f"{what}: cosine {values[worst]:.4f} < canary_threshold {model.settings.canary_threshold}. "
                "They are not one vector space; fix the config (or set `canary: false` on one to accept the risk)"
            )
        logger.info(
            "model %s: deployment %s agrees with %s (lowest probe cosine %.5f)",
            model.name,
            deployment.name,
            name,
            float(values.min()),
        )


async def run_canaries(models: Sequence[ServedModel]) -> list[Canary]:
    """Check every model at start-up; the ones with deployments left to verify are returned."""
    canaries = [Canary(model) for model in models]
    for canary in canaries:
        await canary.run()
    return [c for c in canaries if c.pending]


async def verify_spaces(models: Sequence[ServedModel]) -> list[Canary]:
    """Start every deployment, run the canaries, stop them again: the CLI's check before it binds a port,
    so a config that mixes spaces never serves. Returns the canaries with deployments left to verify."""
    deployments = [d for model in models for d in model.deployments]
    try:
        for deployment in deployments:
            await deployment.provider.start()
        return await run_canaries(models)
    finally:
        for deployment in deployments:
            await deployment.provider.close()


async def recheck_forever(canaries: list[Canary], every_s: float = RECHECK_S) -> None:
    """Retry unreachable deployments until each has been checked (a background task)."""
    while canaries:
        await asyncio.sleep(every_s)
        for canary in canaries:
            await canary.check_pending()
        canaries = [c for c in canaries if c.pending]
