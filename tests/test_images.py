"""Image intake from untrusted bytes, and the resolution clamp that matches the processor."""

import io

import numpy as np
import pytest
from conftest import image_bytes
from PIL import Image

from vlassist.engine.sizing import plan_size, smart_resize
from vlassist.errors import ImageError
from vlassist.images import MAX_PIXELS, load_image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_decode_to_rgb(fmt):
    """Every allow-listed format decodes to an RGB image of the original size."""
    loaded = load_image(image_bytes((40, 30), fmt=fmt))
    assert loaded.image.mode == "RGB" and loaded.size == (40, 30)
    assert loaded.format == fmt


def test_sha256_identifies_the_bytes():
    """The same bytes give the same sha256, different bytes a different one."""
    a, b = image_bytes(color=(1, 2, 3)), image_bytes(color=(3, 2, 1))
    assert load_image(a).sha256 == load_image(a).sha256 != load_image(b).sha256


def test_alpha_is_flattened_on_white():
    """A fully transparent pixel becomes white, not black."""
    loaded = load_image(image_bytes((20, 20), color=(255, 0, 0, 0), mode="RGBA"))
    assert loaded.image.getpixel((5, 5)) == (255, 255, 255)


def test_palette_with_transparency_is_flattened_on_white():
    """A palette GIF's transparent index becomes white."""
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0] * 256)
    buf = io.BytesIO()
    img.save(buf, "GIF", transparency=0)
    assert load_image(buf.getvalue()).image.getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_converts_to_rgb():
    """A CMYK JPEG becomes an RGB image with the right hue."""
    loaded = load_image(image_bytes((20, 20), color=(0, 255, 255, 0), fmt="JPEG", mode="CMYK"))
    r, g, b = loaded.image.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    """A mid-grey 16-bit PNG stays mid-grey instead of clipping to white."""
    arr = np.full((16, 16), 32768, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    value = load_image(buf.getvalue()).image.getpixel((8, 8))
    assert 120 <= value[0] <= 136 and value[0] == value[1] == value[2]


def test_exif_orientation_is_applied():
    """An image tagged 'rotate 90' comes out upright (width and height swapped)."""
    img = Image.new("RGB", (60, 20), "blue")
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (20, 60)


def test_animated_gif_gives_first_frame():
    """An animated GIF decodes to its first frame."""
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = load_image(buf.getvalue()).image.getpixel((10, 10))
    assert r > 200 and b < 60


def _truncated(fmt):
    data = image_bytes((200, 200), fmt=fmt, color=(10, 200, 30))
    return data[: len(data) // 2]


def _bomb():
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # 144 MP of one-bit pixels: a few KB on disk
    return buf.getvalue()


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"hello, this is not an image", "not a supported image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not a supported image"),
    (image_bytes(fmt="ICO"), "not a supported image"),
    (_truncated("PNG"), "truncated"),
    (_truncated("JPEG"), "truncated"),
    (image_bytes((1, 5000)), "too small"),
    (image_bytes((10, 2500)), "too elongated"),
    (image_bytes((4, 4)), "too small"),
    (_bomb(), "limit"),
])
def test_bad_input_is_rejected_with_a_clear_message(data, reason):
    """Unusable files raise ImageError naming the reason."""
    with pytest.raises(ImageError, match=reason):
        load_image(data, "upload.png")


def test_pixel_limit_is_50_megapixels():
    """The pixel limit is 50 MP: what decodes within ~2 s on two cores (issue 11)."""
    assert MAX_PIXELS == 50_000_000


SIZES = [(1024, 1024), (1920, 1080), (4032, 3024), (3024, 4032), (640, 480), (800, 30), (33, 77), (2000, 11),
         (1366, 768), (13, 13), (12000, 100), (512, 7000), (999, 997)]


@pytest.mark.parametrize("factor", [28, 32])
@pytest.mark.parametrize("budget", [64, 768, 1280, 4096])
def test_clamp_matches_the_processor_rule(factor, budget):
    """plan_size gives exactly transformers' smart_resize for many sizes, both factors and several budgets."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    for width, height in SIZES:
        if min(width, height) < factor:  # thin strips keep their aspect as qwen-vl-utils does (test_fidelity.py)
            continue
        sizing = plan_size((width, height), factor, budget, min_pixels=56 * 56)
        expected_h, expected_w = reference(height, width, factor=factor, min_pixels=56 * 56,
                                           max_pixels=budget * factor * factor)
        assert sizing.input_size == (expected_w, expected_h)
        assert sizing.visual_tokens == (expected_w // factor) * (expected_h // factor)
        if max(width, height) / min(width, height) < 20:  # extreme strips keep one token row, as the processor does
            assert sizing.visual_tokens <= budget


def test_phone_photo_is_clamped_to_the_budget():
    """A 4032×3024 photo gets at most 1280 visual tokens by default instead of ~15.5k."""
    sizing = plan_size((4032, 3024), 28, 1280)
    assert sizing.visual_tokens <= 1280
    assert smart_resize(3024, 4032, 28, 3136, 10**9) == (3024, 4032)  # unclamped: ~15.5k tokens


def test_low_res_mode_caps_the_long_side():
    """Low-resolution mode keeps the long side near 768 px."""
    w, h = plan_size((1920, 1080), 28, 1280, low_res=True).input_size
    assert 700 <= max(w, h) <= 800


@pytest.mark.parametrize("fixture,factor", [("engine25", 28), ("engine3", 32)])
def test_processor_sees_exactly_the_planned_size(request, fixture, factor):
    """The processor's image grid equals the planned input size for each family."""
    from vlassist.conversation import GenerationOptions, Turn

    engine = request.getfixturevalue(fixture)
    options = GenerationOptions(max_image_tokens=300)
    for size in [(1920, 1080), (333, 517), (64, 48)]:
        loaded = load_image(image_bytes(size))
        inputs, sizings = engine.encode([Turn("user", "hi", [loaded])], options)
        t, gh, gw = inputs["image_grid_thw"][0].tolist()
        patch = factor // 2
        assert (gw * patch, gh * patch) == sizings[0].input_size
        assert sizings[0].visual_tokens == gh * gw // 4
