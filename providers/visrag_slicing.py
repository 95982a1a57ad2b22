"""How MiniCPM-V 2.0 (and so VisRAG-Ret) cuts a page into slices before its vision tower sees it.

A picture of at most `scale_resolution`² pixels is resized (up or down) to about that area with
sides divisible by the patch size, and that is all. A bigger one gives a downscaled overview
(the "source") plus a grid of up to `max_slices` slices of about `scale_resolution`² each, cut
from a copy resized so the grid divides it exactly; the grid is the one whose aspect ratio is
closest (in log space) to the picture's, among the factorisations of the slice count and its
two neighbours. The numbers must be the model's own, to the pixel: a slice one patch wider
changes every vector. Python's `round` (half to even) and `int` truncation are part of that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL.Image import Image as PILImage
from PIL.Image import Resampling

Size = tuple[int, int]
"""(width, height), as PIL spells sizes."""


@dataclass(frozen=True, slots=True)
class SlicePlan:
    """Where the pixels of one picture go: the overview's size, and the grid the rest is cut into."""

    source: Size
    grid: tuple[int, int] | None = None
    """(columns, rows); None when the picture is small enough to need no slices."""
    refined: Size | None = None
    """The size the picture is resized to before the grid cuts it into equal slices."""

    @property
    def slice_count(self) -> int:
        return 0 if self.grid is None else self.grid[0] * self.grid[1]


def snap(length: float, unit: float) -> int:
    """`length` rounded to a multiple of `unit` (half to even), never below one `unit`."""
    return int(max(round(length / unit) * unit, unit))


def fit_area(size: tuple[float, float], resolution: int, patch: int, *, upscale: bool = False) -> Size:
    """Resize to about `resolution`² pixels keeping the aspect ratio (only down unless `upscale`),
    then snap each side to the patch grid."""
    width, height = size
    if width * height > resolution * resolution or upscale:
        ratio = width / height
        height = int(resolution / math.sqrt(ratio))
        width = int(height * ratio)
    return snap(width, patch), snap(height, patch)


def best_grid(size: Size, max_slices: int, resolution: int) -> tuple[int, int]:
    """The (columns, rows) grid whose shape is closest to the picture's, for a slice count near its area."""
    width, height = size
    wanted = min(math.ceil(width * height / (resolution * resolution)), max_slices)
    counts = [n for n in (wanted - 1, wanted, wanted + 1) if n != 1 and n <= max_slices]
    grids = [(columns, n // columns) for n in counts for columns in range(1, n + 1) if n % columns == 0]
    log_ratio = math.log(width / height)
    chosen, error = (1, 1), math.inf
    for columns, rows in grids:
        distance = abs(log_ratio - math.log(columns / rows))
        if distance < error:  # strictly less: the first of equally good grids wins
            chosen, error = (columns, rows), distance
    return chosen


def refined_size(size: Size, grid: tuple[int, int], resolution: int, patch: int) -> Size:
    """The size the whole picture is resized to so that every grid cell is patch-aligned and about
    `resolution`² pixels."""
    columns, rows = grid
    cell = (snap(size[0], columns) / columns, snap(size[1], rows) / rows)
    cell_width, cell_height = fit_area(cell, resolution, patch, upscale=True)
    return cell_width * columns, cell_height * rows


def plan(size: Size, *, max_slices: int = 9, resolution: int = 448, patch: int = 14) -> SlicePlan:
    """Decide the overview size and the grid for a picture of `size` (width, height)."""
    width, height = size
    if min(math.ceil(width * height / (resolution * resolution)), max_slices) <= 1:
        return SlicePlan(fit_area(size, resolution, patch, upscale=True))
    grid = best_grid(size, max_slices, resolution)
    return SlicePlan(fit_area(size, resolution, patch), grid, refined_size(size, grid, resolution, patch))


def cut(image: PILImage, slices: SlicePlan) -> list[PILImage]:
    """The overview, then the slices row by row (the order of the placeholders in the prompt)."""
    pictures = [image.resize(slices.source, Resampling.BICUBIC)]
    if slices.grid is None or slices.refined is None:
        return pictures
    refined = image.resize(slices.refined, Resampling.BICUBIC)
    columns, rows = slices.grid
    cell_width, cell_height = slices.refined[0] // columns, slices.refined[1] // rows
    pictures.extend(
        refined.crop((left, top, left + cell_width, top + cell_height))
        for top in range(0, slices.refined[1], cell_height)
        for left in range(0, slices.refined[0], cell_width)
    )
    return pictures


__all__ = ["SlicePlan", "best_grid", "cut", "fit_area", "plan", "refined_size", "snap"]
