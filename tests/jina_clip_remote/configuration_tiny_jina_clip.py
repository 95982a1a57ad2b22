"""Config classes of the tiny jina-clip stand-in, shaped as the published `configuration_clip.py`
(jinaai/jina-clip-implementation): a `jina_clip` config holding a text config (XLM-R kwargs with the
task instructions, pooler) and a vision config (width, image size, patch size), plus
`matryoshka_dimensions` and `truncate_dim` at the top level. Loaded by transformers as remote code."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig


class TinyJinaCLIPTextConfig(PretrainedConfig):
    """The text tower: `hf_model_config_kwargs` builds the XLM-R encoder (and carries its task instructions)."""

    model_type = "jina_clip_text"

    def __init__(  # noqa: PLR0917 (the published config's positional signature)
        self,
        embed_dim: int = 32,
        hf_model_config_kwargs: dict[str, Any] | None = None,
        default_instruction_task: str | None = None,
        default_lora_task: str | None = None,
        pooler_type: str | None = "mean_pooler",
        proj_type: str | None = None,
        proj_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.hf_model_config_kwargs = hf_model_config_kwargs or {}
        self.default_instruction_task = default_instruction_task
        self.default_lora_task = default_lora_task
        self.pooler_type = pooler_type
        self.proj_type = proj_type
        self.proj_bias = proj_bias


class TinyJinaCLIPVisionConfig(PretrainedConfig):
    """The vision tower (a CLIP ViT standing in for EVA02) and the size of its output."""

    model_type = "jina_clip_vision"

    def __init__(  # noqa: PLR0917 (the published config's positional signature)
        self,
        embed_dim: int = 32,
        width: int = 32,
        image_size: int = 32,
        patch_size: int = 8,
        layers: int = 2,
        head_width: int = 8,
        mlp_ratio: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.width = width
        self.image_size = image_size
        self.patch_size = patch_size
        self.layers = layers
        self.head_width = head_width
        self.mlp_ratio = mlp_ratio


class TinyJinaCLIPConfig(PretrainedConfig):
    """The whole model, as the published `JinaCLIPConfig` lays it out."""

    model_type = "jina_clip"
    sub_configs: ClassVar[dict[str, type[PretrainedConfig]]] = {
        "text_config": TinyJinaCLIPTextConfig,
        "vision_config": TinyJinaCLIPVisionConfig,
    }

    def __init__(  # noqa: PLR0917 (the published config's positional signature)
        self,
        text_config: dict[str, Any] | TinyJinaCLIPTextConfig | None = None,
        vision_config: dict[str, Any] | TinyJinaCLIPVisionConfig | None = None,
        add_projections: bool = False,
        projection_dim: int = 32,
        logit_scale_init_value: float = 2.6592,
        matryoshka_dimensions: list[int] | None = None,
        truncate_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(text_config, dict) or text_config is None:
            text_config = TinyJinaCLIPTextConfig(**(text_config or {}))
        if isinstance(vision_config, dict) or vision_config is None:
            vision_config = TinyJinaCLIPVisionConfig(**(vision_config or {}))
        self.text_config = text_config
        self.vision_config = vision_config
        self.add_projections = add_projections
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.matryoshka_dimensions = matryoshka_dimensions
        self.truncate_dim = truncate_dim
        super().__init__(**kwargs)
