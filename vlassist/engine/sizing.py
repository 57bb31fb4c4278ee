"""The size an image is shown to the model at: the Qwen processors' resize rule under a visual-token budget."""

from __future__ import annotations

import math

from vlassist.errors import ImageError
from vlassist.images import MAX_ASPECT, Sizing

LOW_RES_LONG_SIDE = 768
MIN_VISUAL_TOKENS = 4


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The Qwen processors' resize rule: sides multiples of `factor`, area within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageError(f"{width}×{height} px is too elongated (aspect ratio over {MAX_ASPECT}:1)")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def plan_size(
    size: tuple[int, int],
    factor: int,
    max_tokens: int,
    min_pixels: int | None = None,
    low_res: bool = False,
) -> Sizing:
    """Model-input size and visual-token count for an image of `size` under a visual-token budget.

    A visual token covers factor×factor pixels (patch 14 or 16, merged 2×2). Low-resolution mode also caps
    the long side near LOW_RES_LONG_SIDE pixels.
    """
    width, height = size
    max_pixels = max_tokens * factor * factor
    if low_res:
        scale = min(1.0, LOW_RES_LONG_SIDE / max(width, height))
        max_pixels = min(max_pixels, max(factor * factor * MIN_VISUAL_TOKENS, int(width * height * scale * scale)))
    min_pixels = min(min_pixels or MIN_VISUAL_TOKENS * factor * factor, max_pixels)
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return Sizing((width, height), (w, h), (w // factor) * (h // factor))


