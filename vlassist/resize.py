"""The Qwen resize rule without torch: the pixel budget of a visual-token budget, and the resize itself.

The local engine uses transformers' own smart_resize for ordinary images and `smart_resize` below for thin strips
(vlassist.engine.sizing); a remote backend, on a machine that may have no torch, plans every image with it.
tests/test_remote.py checks the two agree.
"""

from __future__ import annotations

import math

from vlassist.errors import ImageError
from vlassist.images import MAX_ASPECT

LOW_RES_LONG_SIDE = 768  # low-resolution mode keeps the long side near this many pixels
MIN_VISUAL_TOKENS = 4


def max_pixels_for(size: tuple[int, int], factor: int, max_tokens: int, low_res: bool) -> int:
    """The most model-input pixels an image of `size` (width, height) may take under a visual-token budget.

    A visual token covers factor×factor pixels; low-resolution mode also caps the long side near
    LOW_RES_LONG_SIDE pixels.
    """
    width, height = size
    max_pixels = max_tokens * factor * factor
    if not low_res:
        return max_pixels
    scale = min(1.0, LOW_RES_LONG_SIDE / max(width, height))
    # A thin strip's short side is padded to one factor anyway, so its area counts from there: a 12×1200 strip
    # keeps a ~768 px long side instead of being squeezed into a few tokens.
    short = max(min(width, height) * scale, factor) if min(width, height) < factor else min(width, height) * scale
    area = int(short * max(width, height) * scale)
    return min(max_pixels, max(factor * factor * MIN_VISUAL_TOKENS, area))


def check_aspect(height: int, width: int) -> None:
    """Refuse what the Qwen processors refuse: an image more elongated than MAX_ASPECT:1."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageError(f"{width}×{height} px is too elongated (aspect ratio over {MAX_ASPECT}:1)")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept (thin strips too).

    The processors' rule, except for an image with a side under one factor (a one-line text crop): the processor
    rounds that side to 0 and then rescales the whole image up to min_pixels, squashing a 12×1200 strip to
    28×560. qwen-vl-utils instead pads the short side to one factor and keeps the long side (28×1204), as here;
    where its downscale floors the short side to 0 (and it crashes) the side stays one factor, and the long side
    is cut so the single token row fits the budget.
    """
    check_aspect(height, width)
    thin = min(height, width) < factor
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
