"""Untrusted bytes → an upright RGB image (Pillow only; the model-input size is planned in engine.sizing)."""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from vlassist.errors import ImageError

# Decoders we allow, by Pillow format name (the JPEG decoder also opens phones' MPO files).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
MAX_PIXELS = 50_000_000  # a 50 MP JPEG decodes in about a second; larger is refused before decoding
MAX_HIGH_DEPTH_PIXELS = 2_000_000  # 16-bit/float images are decoded and rescaled in float64 (~30 bytes/px)
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# A real JPEG of any content spends some bits on every 8×8 block (a flat one ~60 px/byte); a header claiming far
# more pixels than that is edited or damaged, and decoding it runs the slow error-recovery path.
MAX_PIXELS_PER_BYTE = {"JPEG": 1000}
DECODE_SLOTS = 2  # images decoded at once per process
DECODE_WAIT_S = 60.0
_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_SLOTS)
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
    # Simultaneous uploads must not add up: each decode may take ~1 s and a few hundred MiB.
    if not _DECODE_SLOTS.acquire(timeout=DECODE_WAIT_S):
        raise ImageError(f"{label}the server is busy decoding other images; try again in a moment")
    try:
        img, fmt = _decode(data, label)
    finally:
        _DECODE_SLOTS.release()
    return LoadedImage(img, fmt, hashlib.sha256(data).hexdigest(), len(data))


def _decode(data: bytes, label: str) -> tuple[Image.Image, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # register every plugin so the allow-list can name them
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            fmt = "JPEG" if img.format == "MPO" else img.format or "?"
            check_header(img.size, img.mode, fmt, len(data), label)  # before any pixel is decoded
            img.seek(0)  # animated GIF/WEBP: the first frame
            img.load()
            try:
                # In place: otherwise an image with nothing to turn is copied whole (milliseconds per megapixel).
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:  # a broken EXIF block must not cost the user their image
                pass
            return to_rgb(img), fmt
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}the image is too large (over the {MAX_PIXELS // 1_000_000} MP limit)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}not a supported image (allowed: PNG, JPEG, WEBP, BMP, TIFF, GIF)") from None
    except MemoryError:
        raise ImageError(f"{label}the image needs more memory to decode than is available") from None
    except Exception as exc:  # noqa: BLE001  Pillow's decoders raise TypeError, struct.error, zlib.error, ...
        raise ImageError(f"{label}the image is damaged or truncated ({type(exc).__name__}: {exc})"[:300]) from None


def check_header(size: tuple[int, int], mode: str, fmt: str, nbytes: int, label: str = "") -> None:
    """Refuse, from the header alone, what would take more than ~2 s or ~1 GiB to decode on two cores."""
    width, height = size
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise ImageError(f"{label}{width}×{height} px is over the {MAX_PIXELS // 1_000_000} MP limit; "
                         "save it at a lower resolution")
    check_shape(size, label)
    if mode in HIGH_DEPTH_MODES and pixels > MAX_HIGH_DEPTH_PIXELS:
        raise ImageError(f"{label}{width}×{height} px at 16 or 32 bits per sample ({mode}) is over the "
                         f"{MAX_HIGH_DEPTH_PIXELS // 1_000_000} MP limit for such images; save it as 8-bit")
    limit = MAX_PIXELS_PER_BYTE.get(fmt)
    if limit and pixels > 1_000_000 and pixels > limit * nbytes:
        raise ImageError(f"{label}the header claims {width}×{height} px for a {nbytes:,}-byte file: "
                         "the file is damaged or not a real photo")


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
