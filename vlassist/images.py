"""Untrusted bytes → an upright RGB image (Pillow only; the model-input size is planned in engine.sizing)."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from vlassist.errors import ImageError

# Decoders we allow, by Pillow format name (the JPEG decoder also opens phones' MPO files).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
MAX_PIXELS = 100_000_000  # larger is treated as a decompression bomb
MIN_SIDE = 8  # pixels
MAX_ASPECT = 200  # the Qwen processors refuse anything more elongated


@dataclass(frozen=True)
class LoadedImage:
    """A decoded, upright RGB image with what we know about the file it came from."""

    image: Image.Image
    format: str
    sha256: str
    nbytes: int

    @property
    def size(self) -> tuple[int, int]:
        """Original (width, height) after EXIF orientation."""
        return self.image.size


@dataclass(frozen=True)
class Sizing:
    """How one image is fed to the model: original size, model-input size, visual tokens."""

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    visual_tokens: int


def load_image(data: bytes, name: str | None = None) -> LoadedImage:
    """Decode untrusted bytes into an upright RGB image, or raise ImageError with a clear reason."""
    label = f"{name}: " if name else ""
    if not data:
        raise ImageError(f"{label}the file is empty")
    buf = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # register every plugin so the allow-list can name them
            img = Image.open(buf, formats=ALLOWED_FORMATS)
            fmt = img.format or "?"
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{label}{width}×{height} px is over the {MAX_PIXELS // 1_000_000} MP limit")
            img.seek(0)  # animated GIF/WEBP: the first frame
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}the image is too large (over the {MAX_PIXELS // 1_000_000} MP limit)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}not a supported image (allowed: PNG, JPEG, WEBP, BMP, TIFF, GIF)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{label}the image is damaged or truncated ({exc})") from None
    fmt = "JPEG" if fmt == "MPO" else fmt
    check_shape(img.size, label)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost the user their image
        pass
    return LoadedImage(to_rgb(img), fmt, hashlib.sha256(data).hexdigest(), len(data))


def check_shape(size: tuple[int, int], label: str = "") -> None:
    """Reject images too small or too elongated for the model's processor."""
    width, height = size
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{label}{width}×{height} px is too small (each side needs at least {MIN_SIDE} px)")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(
            f"{label}{width}×{height} px is too elongated (aspect ratio over {MAX_ASPECT}:1); crop it first"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha flattened on white, 16-bit and float scaled, not clipped."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _scale_to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    # 16-bit and 32-bit grayscale: convert("L") would clip everything above 255 to white.
    import numpy as np

    arr = np.asarray(img.convert("F") if img.mode != "F" else img, dtype=np.float64)
    if img.mode == "F":
        low, high = float(arr.min()), float(arr.max())
        scaled = (arr - low) / (high - low or 1.0) * 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        scaled = np.clip(arr, 0, None) / top * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def resize_for_model(img: Image.Image, sizing: Sizing) -> Image.Image:
    """Resize to exactly the planned model-input size (bicubic, as the processor does)."""
    if img.size == sizing.input_size:
        return img
    return img.resize(sizing.input_size, Image.Resampling.BICUBIC)
