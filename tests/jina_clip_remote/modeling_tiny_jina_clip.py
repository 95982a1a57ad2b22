"""A tiny model with jina-clip-v2's published calling contract (jinaai/jina-clip-implementation,
`modeling_clip.py` and `hf_model.py`), loaded by transformers as remote code (`auto_map`).

What it keeps of the published code: the text tower is a real `XLMRobertaModel` whose attention mask
is derived from the pad id and whose output is mean-pooled (`HFTextEncoder` with `mean_pooler`);
task instructions come from the text tower's config and `get_instruction_from_task`; the vision
tower returns one pooled, projected vector per image; projections are identities when
`add_projections` is false; `get_text_features(input_ids=...)` / `get_image_features(pixel_values)`
return unnormalised features; `encode_text(sentences, task=..., truncate_dim=..., **tokenizer_kwargs)`
prepends the task's instruction, tokenises with `padding=True, max_length=512, truncation=True` by
default, truncates to `truncate_dim or config.truncate_dim` and then normalises; `encode_image` runs
the checkpoint's own image processor the same way. What it replaces: EVA02 by a CLIP ViT, the
LoRA-adapted XLM-R (rotary, flash attention) by the plain transformers class."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as f
from PIL import Image
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BatchEncoding,
    BatchFeature,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from .configuration_tiny_jina_clip import TinyJinaCLIPConfig, TinyJinaCLIPTextConfig, TinyJinaCLIPVisionConfig


class MeanPooler(nn.Module):
    def forward(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        masked = last_hidden_state * attention_mask.unsqueeze(-1)
        return masked.sum(dim=1) / attention_mask.sum(-1, keepdim=True)


class ClsPooler(nn.Module):
    def forward(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return last_hidden_state[:, 0, :]


POOLERS = {"mean_pooler": MeanPooler, "cls_pooler": ClsPooler}


class HFTextEncoder(nn.Module):
    """XLM-R, pooled and projected; knows its task instructions."""

    def __init__(self, config: TinyJinaCLIPTextConfig) -> None:
        super().__init__()
        self.config = XLMRobertaConfig(**config.hf_model_config_kwargs)
        self.transformer = XLMRobertaModel(self.config, add_pooling_layer=False)
        self.pooler = POOLERS[config.pooler_type or "mean_pooler"]()
        width = self.config.hidden_size
        if width == config.embed_dim and config.proj_type is None:
            self.proj: nn.Module = nn.Identity()
        else:
            self.proj = nn.Linear(width, config.embed_dim, bias=config.proj_bias)
        self._task_instructions: dict[str, str] = dict(config.hf_model_config_kwargs.get("task_instructions") or {})
        self._default_instruction = (
            self.get_instruction_from_task(config.default_instruction_task) if config.default_instruction_task else None
        )

    @property
    def task_instructions(self) -> dict[str, str]:
        return self._task_instructions

    def get_instruction_from_task(self, task: str | None) -> str | None:
        if not self._task_instructions:
            return None
        if task is None:
            return self._default_instruction
        if task not in self._task_instructions:
            raise ValueError(f"Unsupported task '{task}'. Choose one of: {', '.join(self._task_instructions)}")
        return self._task_instructions[task]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention_mask = (x != self.config.pad_token_id).long()
        out = self.transformer(input_ids=x, attention_mask=attention_mask)
        return self.proj(self.pooler(out.last_hidden_state, attention_mask))


class VisionTower(nn.Module):
    """A CLIP ViT standing in for EVA02: the pooled (CLS) state through a linear head."""

    def __init__(self, config: TinyJinaCLIPVisionConfig) -> None:
        super().__init__()
        vit = CLIPVisionConfig(
            hidden_size=config.width,
            intermediate_size=int(config.width * config.mlp_ratio),
            num_hidden_layers=config.layers,
            num_attention_heads=config.width // config.head_width,
            image_size=config.image_size,
            patch_size=config.patch_size,
        )
        self.trunk = CLIPVisionModel(vit)
        self.head = nn.Linear(config.width, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(pixel_values=x).pooler_output)


class TinyJinaCLIPModel(PreTrainedModel):
    config_class = TinyJinaCLIPConfig
    base_model_prefix = "clip"

    def __init__(self, config: TinyJinaCLIPConfig) -> None:
        super().__init__(config)
        self.text_model = HFTextEncoder(config.text_config)
        self.vision_model = VisionTower(config.vision_config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        if config.add_projections:
            self.visual_projection: nn.Module = nn.Linear(
                config.vision_config.embed_dim, config.projection_dim, bias=False
            )
            self.text_projection: nn.Module = nn.Linear(config.text_config.embed_dim, config.projection_dim, bias=False)
        else:
            self.visual_projection = nn.Identity()
            self.text_projection = nn.Identity()
        self.tokenizer: Any = None
        self.preprocess: Any = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.2)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.normal_(module.bias, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if hasattr(module, "class_embedding"):
            nn.init.normal_(module.class_embedding, std=0.2)

    def get_tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.config._name_or_path, trust_remote_code=True)
        return self.tokenizer

    def get_preprocess(self) -> Any:
        if not self.preprocess:
            self.preprocess = AutoImageProcessor.from_pretrained(self.config._name_or_path, trust_remote_code=True)
        return self.preprocess

    def get_text_features(
        self, input_ids: torch.Tensor | BatchEncoding | None = None, *_: Any, **__: Any
    ) -> torch.Tensor:
        x = input_ids.input_ids if isinstance(input_ids, BatchEncoding) else input_ids
        return self.text_projection(self.text_model(x=x))

    def get_image_features(
        self, pixel_values: torch.Tensor | BatchFeature | None = None, *_: Any, **__: Any
    ) -> torch.Tensor:
        x = pixel_values.pixel_values if isinstance(pixel_values, BatchFeature) else pixel_values
        return self.visual_projection(self.vision_model(x=x))

    def _truncate_embeddings(self, embeddings: torch.Tensor, truncate_dim: int) -> torch.Tensor:
        return embeddings[:, :truncate_dim]

    @staticmethod
    def _open_image(image: Any) -> Image.Image:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if isinstance(image, str) and image.startswith("data:image/"):
            return Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[1]))).convert("RGB")
        if isinstance(image, str):
            return Image.open(image).convert("RGB")
        raise ValueError("Unsupported image format")

    def _finish(self, embeddings: torch.Tensor, truncate_dim: int | None, normalize_embeddings: bool) -> torch.Tensor:
        truncate_dim = truncate_dim or self.config.truncate_dim
        if truncate_dim:
            embeddings = self._truncate_embeddings(embeddings, truncate_dim)
        if normalize_embeddings:
            embeddings = f.normalize(embeddings, p=2, dim=1)
        return embeddings

    @torch.inference_mode()
    def encode_text(  # noqa: PLR0917 (the published signature)
        self,
        sentences: str | list[str],
        task: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: torch.device | None = None,
        normalize_embeddings: bool = True,
        truncate_dim: int | None = None,
        **tokenizer_kwargs: Any,
    ) -> Any:
        was_training = self.training
        self.eval()
        tokenizer = self.get_tokenizer()
        single = isinstance(sentences, str)
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        if device is not None:
            self.to(device)
        permutation = np.argsort([-len(s) for s in sentences])
        inverse = np.argsort(permutation)
        sentences = [sentences[i] for i in permutation]
        tokenizer_kwargs["padding"] = tokenizer_kwargs.get("padding", True)
        tokenizer_kwargs["max_length"] = tokenizer_kwargs.get("max_length", 512)
        tokenizer_kwargs["truncation"] = tokenizer_kwargs.get("truncation", True)
        instruction = self.text_model.get_instruction_from_task(task)
        if instruction:
            sentences = [instruction + sentence for sentence in sentences]
        rows: list[torch.Tensor] = []
        for start in range(0, len(sentences), batch_size):
            tokens = tokenizer(sentences[start : start + batch_size], return_tensors="pt", **tokenizer_kwargs)
            tokens = tokens.to(self.device)
            embeddings = self._finish(self.get_text_features(input_ids=tokens), truncate_dim, normalize_embeddings)
            rows.extend(embeddings.cpu() if convert_to_numpy else embeddings)
        rows = [rows[i] for i in inverse]
        self.train(was_training)
        return self._collect(rows, single, convert_to_numpy, convert_to_tensor)

    @torch.inference_mode()
    def encode_image(  # noqa: PLR0917 (the published signature)
        self,
        images: Any,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: torch.device | None = None,
        normalize_embeddings: bool = True,
        truncate_dim: int | None = None,
    ) -> Any:
        was_training = self.training
        self.eval()
        preprocess = self.get_preprocess()
        single = isinstance(images, str) or not hasattr(images, "__len__")
        images = [images] if single else list(images)
        if device is not None:
            self.to(device)
        permutation = np.argsort([-len(str(i)) for i in images])
        inverse = np.argsort(permutation)
        images = [images[i] for i in permutation]
        rows: list[torch.Tensor] = []
        for start in range(0, len(images), batch_size):
            pixels = preprocess([self._open_image(image) for image in images[start : start + batch_size]])
            pixels = pixels.to(self.device)
            embeddings = self._finish(self.get_image_features(pixels), truncate_dim, normalize_embeddings)
            rows.extend(embeddings.cpu() if convert_to_numpy else embeddings)
        rows = [rows[i] for i in inverse]
        self.train(was_training)
        return self._collect(rows, single, convert_to_numpy, convert_to_tensor)

    @staticmethod
    def _collect(rows: list[torch.Tensor], single: bool, convert_to_numpy: bool, convert_to_tensor: bool) -> Any:
        result: Any = rows
        if convert_to_tensor:
            result = torch.stack(rows)
        elif convert_to_numpy:
            result = np.asarray([row.to(torch.float32).numpy() for row in rows])
        return result[0] if single else result

    def forward(
        self,
        input_ids: torch.Tensor | BatchEncoding | None = None,
        pixel_values: torch.Tensor | BatchFeature | None = None,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = f.normalize(self.get_text_features(input_ids=input_ids), dim=-1)
        image = f.normalize(self.get_image_features(pixel_values=pixel_values), dim=-1)
        return text, image
