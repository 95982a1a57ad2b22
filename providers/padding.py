"""Padding token sequences of different lengths into one batch, on either side.

Encoders pad on the right; decoder embedders pool their last token and pad on the left, so every
row's last real token sits in the last column. One helper for both keeps the families' collates to
what is specific to them (which keys, which pad id, how pictures are listed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_rows(rows: Sequence[torch.Tensor], value: int, *, left: bool = False) -> torch.Tensor:
    """Rows of shape [..., length_i] as one tensor [n, ..., longest], filled with `value` on the
    right (or, with `left`, on the left)."""
    longest = max(row.shape[-1] for row in rows)
    out = torch.full((len(rows), *rows[0].shape[:-1], longest), value, dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        size = row.shape[-1]
        if left:
            out[index, ..., longest - size :] = row
        else:
            out[index, ..., :size] = row
    return out
