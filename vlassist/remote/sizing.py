"""Torch-free model-input sizing for a remote server: the Qwen processors' resize rule, copied small.

vlassist.engine.sizing holds the local engine's version (it calls transformers' own smart_resize); this copy
lets a machine without torch plan the size it sends images at. tests/test_remote.py checks the two agree.
"""

from __future__ import annotations

import math

from vlassist.errors import ImageError
from vlassist.families import family as family_of
from vlassist.images import MAX_ASPECT, Sizing

LOW_RES_LONG_SIDE = 768  # as vlassist.engine.sizing
MIN_VISUAL_TOKENS = 4
# The published checkpoints' processor minimum (preprocessor_config.json `shortest_edge`), per family.
MIN_PIXELS = {"qwen2_vl": 56 * 56, "qwen2_5_vl": 56 * 56, "qwen3_vl": 65536}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept (thin strips too)."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageError(f"{width}×{height} px is too elongated (aspect ratio over {MAX_ASPECT}:1)")
    thin = min(height, width) < factor  # qwen-vl-utils pads a thin strip's short side to one factor
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if thin:
        h_bar, w_bar = max(factor, h_bar), max(factor, w_bar)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
        if thin and h_bar * w_bar > max_pixels:
            longest = max(factor, max_pixels // factor // factor * factor)
            h_bar, w_bar = (min(h_bar, longest), w_bar) if height > width else (h_bar, min(w_bar, longest))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def plan_size(size: tuple[int, int], family: str, max_tokens: int, low_res: bool = False) -> Sizing:
    """Model-input size and visual tokens for an image of `size` on a `family` model under a token budget."""
    factor = family_of(family).factor
    width, height = size
    max_pixels = max_tokens * factor * factor
    if low_res:
        scale = min(1.0, LOW_RES_LONG_SIDE / max(width, height))
        short = max(min(width, height) * scale, factor) if min(width, height) < factor else min(width, height) * scale
        area = int(short * max(width, height) * scale)
        max_pixels = min(max_pixels, max(factor * factor * MIN_VISUAL_TOKENS, area))
    min_pixels = min(MIN_PIXELS.get(family, MIN_VISUAL_TOKENS * factor * factor), max_pixels)
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return Sizing((width, height), (w, h), (w // factor) * (h // factor))
