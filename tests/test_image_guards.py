"""Decode-cost guards: crafted and damaged images are refused quickly with ImageError, never another error."""

from __future__ import annotations

import io
import random
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

from vlassist import images
from vlassist.errors import ImageError
from vlassist.images import load_image

LIMIT_S = 2.0
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged tags


def _encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 size fields are edited to claim width×height."""
    data = bytearray(_encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    """A small lossless WebP whose VP8L header is edited to claim width×height (up to 16384 a side)."""
    data = bytearray(_encode(Image.new("RGB", (64, 48), (1, 2, 3)), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 8 + 1  # chunk header, then the 0x2f signature byte
    bits = int.from_bytes(data[at:at + 4], "little")
    bits = (bits & ~0xFFFFFFF) | (width - 1) | ((height - 1) << 14)
    data[at:at + 4] = bits.to_bytes(4, "little")
    return bytes(data)


def _animated_webp_claiming(width: int, height: int) -> bytes:
    """A 2-frame animated WebP whose VP8X canvas is edited to width×height (24-bit fields: over 1M px a side)."""
    frames = [Image.new("RGB", (64, 48), (i * 90, 0, 0)) for i in range(2)]
    data = bytearray(_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True))
    at = data.index(b"VP8X") + 8 + 4  # chunk header, then flags and reserved bytes
    data[at:at + 6] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def _tiff(array: np.ndarray, mode: str | None = None, **save) -> bytes:
    return _encode(Image.fromarray(array, mode) if mode else Image.fromarray(array), "TIFF", **save)


def _damaged_tiffs() -> list[bytes]:
    """TIFFs with broken tag values of the kinds that made Pillow raise TypeError/ValueError."""
    base = _tiff(np.zeros((64, 64), np.uint8))
    out = []
    for tag, value in ((258, 3), (273, 0xFFFFFFF0), (259, 7), (262, 99), (256, 0)):
        data = bytearray(base)
        (ifd,) = struct.unpack("<I", data[4:8])
        (count,) = struct.unpack("<H", data[ifd:ifd + 2])
        for i in range(count):
            at = ifd + 2 + 12 * i
            if struct.unpack("<H", data[at:at + 2])[0] == tag:
                data[at + 8:at + 12] = struct.pack("<I", value)
        out.append(bytes(data))
    out.append(base[:40])  # truncated inside the IFD
    return out


CRASHERS = {
    "jpeg-85MP-header": _jpeg_claiming(10624, 8000),
    "jpeg-40MP-header": _jpeg_claiming(8000, 5000),
    "webp-16k-square-header": _webp_claiming(16384, 16384),
    "webp-1048640x48": _animated_webp_claiming(1_048_640, 48),
    "webp-1000000x40": _animated_webp_claiming(1_000_000, 40),
    "tiff-16bit-3MP": _tiff(np.zeros((1000, 3000), np.uint16), compression="tiff_adobe_deflate"),
    "tiff-float-3MP": _tiff(np.zeros((1200, 2500), np.float32), "F", compression="tiff_adobe_deflate"),
    "jpeg-elongated-header": _jpeg_claiming(60000, 100),
    "tiff-int32-3MP": _tiff(np.zeros((1500, 2000), np.int32), "I", compression="tiff_lzw"),
    **{f"tiff-damaged-{i}": data for i, data in enumerate(_damaged_tiffs())},
}


@pytest.mark.parametrize("name", list(CRASHERS))
def test_crafted_or_damaged_image_is_refused_fast(name):
    """Each crasher of issue 11's kinds raises ImageError (one line) within 2 s."""
    started = time.perf_counter()
    with pytest.raises(ImageError) as info:
        load_image(CRASHERS[name], name)
    assert time.perf_counter() - started <= LIMIT_S
    assert "\n" not in str(info.value) and str(info.value).startswith(name)


def test_sixteen_bit_image_under_the_limit_still_loads():
    """A small 16-bit grayscale TIFF is still accepted and converted."""
    loaded = load_image(_tiff(np.arange(200 * 300, dtype=np.uint16).reshape(200, 300) * 7))
    assert loaded.image.mode == "RGB" and loaded.size == (300, 200)


def test_large_real_photo_decodes_within_the_limit():
    """A real 48 MP JPEG (under the pixel limit) is accepted within ~2 s: the limit is not too strict."""
    noise = np.random.default_rng(1).integers(0, 255, (6000, 8000, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "JPEG", quality=30)
    started = time.perf_counter()
    loaded = load_image(data)
    assert loaded.size == (8000, 6000) and time.perf_counter() - started <= 2 * LIMIT_S  # slack for shared CI cores


def test_decoding_is_bounded_to_a_few_at_a_time(monkeypatch):
    """However many threads upload at once, at most DECODE_SLOTS decode simultaneously."""
    active, peak, lock = [0], [0], threading.Lock()
    real = images._decode

    def counting(data, label, *fit):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return real(data, label, *fit)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(images, "_decode", counting)
    data = _encode(Image.new("RGB", (32, 32)), "PNG")
    threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= peak[0] <= images.DECODE_SLOTS


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return [_encode(rgb, "PNG"), _encode(rgb, "JPEG"), _encode(rgb, "WEBP"), _encode(rgb, "BMP"),
            _encode(rgb, "TIFF"), _encode(rgb, "TIFF", compression="tiff_lzw"), _encode(rgb.convert("P"), "GIF"),
            _encode(rgb.convert("L"), "PNG"), _tiff(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32))]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        at = rng.randrange(len(out))
        if kind < 0.5:
            out[at] = rng.randrange(256)
        elif kind < 0.7:
            out[at:at + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x80\x00"])
        elif kind < 0.85:
            del out[at:at + rng.randint(1, 16)]
        else:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(out[:rng.randint(8, len(out))] if rng.random() < 0.1 else out)


def test_byte_mutation_fuzz_only_raises_image_error():
    """6,000 seeded mutations of small valid images: each loads or raises ImageError, each within 2 s."""
    rng, seeds, slowest = random.Random(11), _seeds(), 0.0
    for _ in range(6000):
        data = _mutate(rng, rng.choice(seeds))
        started = time.perf_counter()
        try:
            load_image(data)
        except ImageError:
            pass
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest <= LIMIT_S
