"""The process-wide cache of decoded images is bounded by pixels, so cheap large uploads do not pile up."""

from __future__ import annotations

import io

from PIL import Image

from vlassist.images import load_image
from vlassist.service import conversations


def _png(size, shade) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (shade, shade, shade)).save(buf, "PNG")
    return buf.getvalue()


def test_the_cache_holds_at_most_its_byte_budget():
    """Six 3 MB images in a 10 MB cache: the oldest leave, the pixels kept stay under the budget."""
    cache = conversations.decoded_cache(10 * 2**20)
    for shade in range(6):
        conversations.remember_decoded(load_image(_png((1000, 1000), shade)), cache)
    assert cache.currsize <= 10 * 2**20 and len(cache) == 3


def test_the_default_budget_is_far_below_sixteen_large_images():
    """The page's cache cannot keep sixteen 49 MP images (2.4 GB): its default holds at most about 1.7 of them."""
    assert conversations._decoded.maxsize < 2 * 16383 * 3000 * 3


def test_an_image_larger_than_the_cache_is_not_kept():
    """An image over the whole budget is simply not remembered (it would empty the cache and still not fit)."""
    cache = conversations.decoded_cache(1 * 2**20)
    conversations.remember_decoded(load_image(_png((1000, 1000), 9)), cache)
    assert len(cache) == 0


def test_an_image_decoded_at_its_model_input_size_is_not_kept_as_the_original():
    """An image kept only at its model-input size is not remembered: the stored image's later views (boxes drawn
    in original pixels, zoom crops) decode the original instead of enlarging the small copy."""
    from vlassist.images import decode_for

    cache = conversations.decoded_cache(10 * 2**20)
    with decode_for(lambda size: (100, 100)):
        small = load_image(_png((1000, 1000), 7))
    assert small.original_size == (1000, 1000)
    conversations.remember_decoded(small, cache)
    assert len(cache) == 0
