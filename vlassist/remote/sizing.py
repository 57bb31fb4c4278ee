"""Torch-free model-input sizing for a remote server: the size the page sends an image at, per model family."""

from __future__ import annotations

from vlassist.families import family as family_of
from vlassist.images import Sizing
from vlassist.resize import MIN_VISUAL_TOKENS, max_pixels_for, smart_resize

# The published checkpoints' processor minimum (preprocessor_config.json `shortest_edge`), per family.
MIN_PIXELS = {"qwen2_vl": 56 * 56, "qwen2_5_vl": 56 * 56, "qwen3_vl": 65536}


def plan_size(size: tuple[int, int], family: str, max_tokens: int, low_res: bool = False) -> Sizing:
    """Model-input size and visual tokens for an image of `size` on a `family` model under a token budget."""
    factor = family_of(family).factor
    width, height = size
    max_pixels = max_pixels_for(size, factor, max_tokens, low_res)
    min_pixels = min(MIN_PIXELS.get(family, MIN_VISUAL_TOKENS * factor * factor), max_pixels)
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return Sizing((width, height), (w, h), (w // factor) * (h // factor))
