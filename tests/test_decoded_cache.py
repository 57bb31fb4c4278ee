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



class _Store:
    """Stands in for the history: the bytes of one stored image, counting reads."""

    def __init__(self, data: bytes):
        self.data, self.reads = data, 0

    def image_data(self, sha256: str) -> bytes:
        self.reads += 1
        return self.data


def test_views_that_need_the_original_never_get_a_copy_kept_at_the_model_input_size(monkeypatch):
    """With a model-input-size copy cached (as the page keeps what it sent), the model's turns may use it, but a
    view asking for the original (boxes, zoom crops) gets the full-resolution pixels."""
    from vlassist.images import decode_for

    monkeypatch.setattr(conversations, "_decoded", conversations.decoded_cache(10 * 2**20))
    data = _png((1000, 800), 7)
    with decode_for(lambda size: (100, 80)):
        small = load_image(data)
    conversations.remember_decoded(small)
    store = _Store(data)
    assert conversations.stored_image(store, small.sha256, "x.png").image.size == (100, 80)
    assert store.reads == 0
    full = conversations.stored_image(store, small.sha256, "x.png", original=True)
    assert full.image.size == (1000, 800) and full.original_size is None and store.reads == 1
