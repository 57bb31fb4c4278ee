"""The size an image is shown to the model at: the Qwen processors' resize rule under a visual-token budget."""

from __future__ import annotations

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as processor_smart_resize

from vlassist import offline  # noqa: F401  (sets the offline switches before transformers is imported)
from vlassist.images import Sizing
from vlassist.resize import MIN_VISUAL_TOKENS, check_aspect, max_pixels_for
from vlassist.resize import smart_resize as thin_aware_resize


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The Qwen resize rule, (height, width): transformers' own, and qwen-vl-utils' aspect keeping for thin strips."""
    check_aspect(height, width)
    if min(height, width) >= factor:
        return processor_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return thin_aware_resize(height, width, factor, min_pixels, max_pixels)  # a strip: qwen-vl-utils' sizing


def plan_size(
    size: tuple[int, int],
    factor: int,
    max_tokens: int,
    min_pixels: int | None = None,
    low_res: bool = False,
) -> Sizing:
    """Model-input size and visual-token count for an image of `size` under a visual-token budget.

    A visual token covers factor×factor pixels (patch 14 or 16, merged 2×2). Low-resolution mode also caps
    the long side near vlassist.resize.LOW_RES_LONG_SIDE pixels.
    """
    width, height = size
    max_pixels = max_pixels_for(size, factor, max_tokens, low_res)
    min_pixels = min(min_pixels or MIN_VISUAL_TOKENS * factor * factor, max_pixels)
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return Sizing((width, height), (w, h), (w // factor) * (h // factor))
