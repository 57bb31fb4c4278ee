"""The size an image is shown to the model at: the Qwen processors' resize rule under a visual-token budget."""

from __future__ import annotations

import math

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as processor_smart_resize

from vlassist import offline  # noqa: F401  (sets the offline switches before transformers is imported)
from vlassist.errors import ImageError
from vlassist.images import MAX_ASPECT, Sizing

LOW_RES_LONG_SIDE = 768
MIN_VISUAL_TOKENS = 4


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The Qwen resize rule, (height, width): transformers' own, and qwen-vl-utils' aspect keeping for thin strips."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageError(f"{width}×{height} px is too elongated (aspect ratio over {MAX_ASPECT}:1)")
    if min(height, width) >= factor:
        return processor_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return _thin_resize(height, width, factor, min_pixels, max_pixels)


def _thin_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    # A side under one factor (a one-line text crop): the processor rounds it to 0 and then rescales the whole
    # image up to min_pixels, squashing a 12×1200 strip to 28×560. qwen-vl-utils instead pads the short side to
    # one factor and keeps the long side (28×1204), as here; where its downscale floors the short side to 0 (and
    # it crashes) the side stays one factor, and the long side is cut so the single token row fits the budget.
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
        if h_bar * w_bar > max_pixels:
            longest = max(factor, max_pixels // factor // factor * factor)
            h_bar, w_bar = (min(h_bar, longest), w_bar) if height > width else (h_bar, min(w_bar, longest))
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
        # A thin strip's short side is padded to one factor anyway, so its area counts from there: a 12×1200
        # strip keeps a ~768 px long side instead of being squeezed into a few tokens.
        short = max(min(width, height) * scale, factor) if min(width, height) < factor else min(width, height) * scale
        area = int(short * max(width, height) * scale)
        max_pixels = min(max_pixels, max(factor * factor * MIN_VISUAL_TOKENS, area))
    min_pixels = min(min_pixels or MIN_VISUAL_TOKENS * factor * factor, max_pixels)
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return Sizing((width, height), (w, h), (w // factor) * (h // factor))


