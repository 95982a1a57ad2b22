"""One VisRAG-Ret input (a text, a picture, or both) as the model reads it: a token sequence with
placeholder slots, and the pictures whose resampled tokens fill them.

The prompt is the published `prepare_context`'s: the picture's placeholder first (`<image>`,
`query_num` `<unk>`s, `</image>`; then, when it was sliced, `<slice>`, one placeholder per slice
with a newline between grid rows, `</slice>`), a newline, then the text. Tokenised with BOS and
cut at `max_length` tokens as `_convert_to_tensors` does. Pictures stay RGB bytes (uint8, channel
first) until the forward pass normalises them: a queued page holds 6 MB rather than 24.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL.Image import Image as PILImage

from providers.base import Modality, ProviderError
from providers.batching import Features, Prepared
from providers.padding import pad_rows
from providers.visrag_model import VisragConfig
from providers.visrag_slicing import SlicePlan, cut, plan
from providers.visrag_tokenizer import SentencePieceLlamaTokenizer

IMAGE_START, IMAGE_END, SLICE_START, SLICE_END = "<image>", "</image>", "<slice>", "</slice>"


@dataclass(frozen=True, slots=True, eq=False)
class VisragInput:
    """What one vector is computed from: the text (instruction included) and at most one picture."""

    text: str
    image: PILImage | None = None


def pixels(image: PILImage) -> torch.Tensor:
    """[3, H, W] uint8, channel first, as torchvision's ToTensor reads a picture (before scaling)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class PromptBuilder:
    """Turns `VisragInput`s into token ids, placeholder positions and picture tensors."""

    def __init__(self, config: VisragConfig, tokenizer: SentencePieceLlamaTokenizer, max_length: int) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_start = tokenizer.piece_id(IMAGE_START)
        self.image_end = tokenizer.piece_id(IMAGE_END)
        self.placeholder = IMAGE_START + tokenizer.unk_token * config.query_num + IMAGE_END
        probe = torch.tensor(tokenizer.encode(f"{self.placeholder}\n"))
        found = torch.nonzero(probe == self.image_end).flatten() - torch.nonzero(probe == self.image_start).flatten()
        if found.tolist() != [config.query_num + 1]:  # the published code needs exactly query_num slots
            raise ValueError(
                f"the tokenizer does not keep {IMAGE_START}, {config.query_num} x "
                f"{tokenizer.unk_token} and {IMAGE_END} as {config.query_num + 2} tokens"
            )

    def slice_plan(self, image: PILImage) -> SlicePlan:
        config = self.config
        return plan(
            image.size, max_slices=config.max_slice_nums, resolution=config.scale_resolution, patch=config.patch_size
        )

    def picture_prompt(self, image: PILImage) -> tuple[str, list[PILImage]]:
        """The placeholder text and the pictures (overview first, then the slices row by row)."""
        if not self.config.slice_mode:
            return self.placeholder, [image]
        slices = self.slice_plan(image)
        pictures = cut(image, slices)
        if slices.grid is None:
            return self.placeholder, pictures
        columns, rows = slices.grid
        grid = "\n".join(self.placeholder * columns for _ in range(rows))
        return f"{self.placeholder}{SLICE_START}{grid}{SLICE_END}", pictures

    def prepare(self, unit: VisragInput) -> Prepared:
        """Features with a leading batch dimension of 1: `input_ids`, and with a picture
        `vision_positions` (the slots, in order), `pixels.source` [1, 3, H, W] and, when sliced,
        `pixels.slices` [1, n, 3, h, w]."""
        content, pictures = unit.text, list[PILImage]()
        if unit.image is not None:
            placeholder, pictures = self.picture_prompt(unit.image)
            content = f"{placeholder}\n{unit.text}"
        ids = torch.tensor(self.tokenizer.encode(content)[: self.max_length], dtype=torch.long)
        features: Features = {"input_ids": ids.unsqueeze(0)}
        if not pictures:
            return Prepared(Modality.TEXT, features, len(ids))
        positions = self._slots(ids, len(pictures))
        features["vision_positions"] = positions.unsqueeze(0)
        features["pixels.source"] = pixels(pictures[0]).unsqueeze(0)
        if len(pictures) > 1:
            features["pixels.slices"] = torch.stack([pixels(p) for p in pictures[1:]]).unsqueeze(0)
        return Prepared(Modality.IMAGE, features, len(ids))

    def _slots(self, ids: torch.Tensor, pictures: int) -> torch.Tensor:
        """Positions between the first `pictures` `<image>`/`</image>` pairs (the placeholder comes
        first; a literal `<image>` in the text after it stays ordinary text)."""
        starts = torch.nonzero(ids == self.image_start).flatten()[:pictures] + 1
        ends = torch.nonzero(ids == self.image_end).flatten()[:pictures]
        query_num = self.config.query_num
        if len(starts) != pictures or len(ends) != pictures or bool(((ends - starts) != query_num).any()):
            raise ProviderError(f"the picture placeholders do not fit in max_length={self.max_length} tokens")
        return torch.cat([torch.arange(int(s), int(s) + query_num) for s in starts])


def collate(features: Sequence[Features]) -> Features:
    """Right-pad the sequences (id 0) with an attention mask; list the picture groups in item order
    (`pixels.0`, `pixels.1`, ...: an item's overview, then its slices) and where their tokens go
    (`vision_rows`, `vision_columns`, in the same order)."""
    input_ids = pad_rows([f["input_ids"][0] for f in features], 0)
    attention_mask = pad_rows([torch.ones_like(f["input_ids"][0]) for f in features], 0)
    groups: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    columns: list[torch.Tensor] = []
    for index, item in enumerate(features):
        if "vision_positions" not in item:
            continue
        groups.append(item["pixels.source"])
        if "pixels.slices" in item:
            groups.append(item["pixels.slices"][0])
        positions = item["vision_positions"][0]
        rows.append(torch.full_like(positions, index))
        columns.append(positions)
    batch: Features = {"input_ids": input_ids, "attention_mask": attention_mask}
    batch.update((f"pixels.{i}", group) for i, group in enumerate(groups))
    if rows:
        batch["vision_rows"], batch["vision_columns"] = torch.cat(rows), torch.cat(columns)
    return batch


__all__ = ["PromptBuilder", "VisragInput", "collate", "pixels"]
