"""Untrusted bytes → an upright RGB image (Pillow only; the model-input size is planned in engine.sizing)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import threading
import warnings
from collections.abc import Callable, Iterator
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
MAX_DECODE_PIXELS = 400_000_000  # pixels being decoded at once in this process (VLASSIST_MAX_DECODE_MEGAPIXELS)
DRAFT_MARGIN = 2  # a JPEG is decoded at a reduced scale only while it stays this many times the model-input size
MIN_SIDE = 8  # pixels
MAX_ASPECT = 200  # the Qwen processors refuse anything more elongated


@dataclass(frozen=True)
class LoadedImage:
    """A decoded, upright RGB image with what we know about the file it came from."""

    image: Image.Image
    format: str
    sha256: str
    nbytes: int
    original_size: tuple[int, int] | None = None  # set when `image` was decoded smaller than the file (model input)

    @property
    def size(self) -> tuple[int, int]:
        """Original (width, height) after EXIF orientation."""
        return self.original_size or self.image.size


@dataclass(frozen=True)
class Sizing:
    """How one image is fed to the model: original size, model-input size, visual tokens."""

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    visual_tokens: int


Fit = Callable[[tuple[int, int]], tuple[int, int]]  # upright original (width, height) -> model-input size
# Set by decode_for(): images decoded meanwhile (on this thread) keep only their model-input size.
_FIT: contextvars.ContextVar[Fit | None] = contextvars.ContextVar("vlassist_image_fit", default=None)


@contextlib.contextmanager
def decode_for(fit: Fit | None) -> Iterator[None]:
    """Within this block, load_image keeps each image only at the size `fit` gives for its original size."""
    token = _FIT.set(fit)
    try:
        yield
    finally:
        _FIT.reset(token)


class PixelBudget:
    """Pixels being decoded at once in this process: a decode waits (then is refused) while others hold the rest."""

    def __init__(self, pixels: int):
        self.limit, self.used = pixels, 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, label: str = "", wait_s: float = DECODE_WAIT_S) -> Iterator[None]:
        """Reserve `pixels` while decoding; ImageError if they can never fit or do not free up within `wait_s`."""
        if pixels > self.limit:
            raise ImageError(f"{label}the image decodes to {pixels / 1e6:.0f} MP, over this server's "
                             f"{self.limit / 1e6:.0f} MP decoding budget; save it at a lower resolution")
        with self._room:
            if not self._room.wait_for(lambda: self.used + pixels <= self.limit, wait_s):
                raise ImageError(f"{label}the server is busy decoding other images; try again in a moment")
            self.used += pixels
        try:
            yield
        finally:
            with self._room:
                self.used -= pixels
                self._room.notify_all()


DECODE_BUDGET = PixelBudget(MAX_DECODE_PIXELS)


def set_decode_budget(pixels: int) -> None:
    """Set the per-process decoding budget (from Settings.max_decode_megapixels) before serving."""
    with DECODE_BUDGET._room:
        DECODE_BUDGET.limit = int(pixels)
        DECODE_BUDGET._room.notify_all()


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself before any pixel is decoded."""

    size: tuple[int, int]  # upright (width, height), EXIF orientation applied
    mode: str
    format: str
    nbytes: int

    @property
    def pixels(self) -> int:
        """Pixels the decoded image holds."""
        return self.size[0] * self.size[1]


def _upright(img: Image.Image) -> tuple[int, int]:
    try:
        turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap width and height
    except Exception:  # a broken EXIF block is ignored when decoding too
        turned = False
    return (img.height, img.width) if turned else img.size


def probe_image(data: bytes, name: str | None = None, nbytes: int | None = None) -> ImageHeader:
    """Read only the header of untrusted bytes: size, mode and format, checked; ImageError if unusable.

    `data` may be just the start of the file, with `nbytes` its whole length.
    """
    nbytes = len(data) if nbytes is None else nbytes
    label = f"{name}: " if name else ""
    if not data:
        raise ImageError(f"{label}the file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged parts it reads past (corrupt EXIF…): the image is judged by what decodes,
            # and a warning printed beside the one-line error (or into a server's log) tells the user nothing.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                fmt = "JPEG" if img.format == "MPO" else img.format or "?"
                check_header(img.size, img.mode, fmt, nbytes, label)
                return ImageHeader(_upright(img), img.mode, fmt, nbytes)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}the image is too large (over the {MAX_PIXELS // 1_000_000} MP limit)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}not a supported image (allowed: PNG, JPEG, WEBP, BMP, TIFF, GIF)") from None
    except Exception as exc:  # noqa: BLE001  Pillow's parsers raise many kinds
        raise ImageError(f"{label}the image is damaged or truncated ({type(exc).__name__}: {exc})"[:300]) from None


def load_image(data: bytes, name: str | None = None) -> LoadedImage:
    """Decode untrusted bytes into an upright RGB image, or raise ImageError with a clear reason.

    Inside decode_for(fit), only the model-input image is kept (and JPEGs are decoded at a reduced scale where
    that stays DRAFT_MARGIN times larger); `size` still reports the original.
    """
    label = f"{name}: " if name else ""
    if not data:
        raise ImageError(f"{label}the file is empty")
    header = probe_image(data, name)
    # Simultaneous uploads must not add up: each decode may take ~1 s and a few hundred MiB.
    with DECODE_BUDGET.hold(header.pixels, label):
        if not _DECODE_SLOTS.acquire(timeout=DECODE_WAIT_S):
            raise ImageError(f"{label}the server is busy decoding other images; try again in a moment")
        try:
            img, fmt, original = _decode(data, label, _FIT.get())
        finally:
            _DECODE_SLOTS.release()
    return LoadedImage(img, fmt, hashlib.sha256(data).hexdigest(), len(data), original)


def _decode(data: bytes, label: str, fit: Fit | None = None) -> tuple[Image.Image, str, tuple[int, int] | None]:
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged parts it reads past (corrupt EXIF…): the image is judged by what decodes,
            # and a warning printed beside the one-line error (or into a server's log) tells the user nothing.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # register every plugin so the allow-list can name them
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            fmt = "JPEG" if img.format == "MPO" else img.format or "?"
            check_header(img.size, img.mode, fmt, len(data), label)  # before any pixel is decoded
            img.seek(0)  # animated GIF/WEBP: the first frame
            upright = _upright(img)
            target = fit(upright) if fit is not None else None
            if target is not None and fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
                # The JPEG decoder can skip detail: 1/2, 1/4 or 1/8 scale, never below DRAFT_MARGIN × the target.
                turned = upright != img.size
                want = (target[1], target[0]) if turned else target
                img.draft("RGB" if img.mode != "L" else "L", (want[0] * DRAFT_MARGIN, want[1] * DRAFT_MARGIN))
            img.load()
            try:
                # In place: otherwise an image with nothing to turn is copied whole (milliseconds per megapixel).
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:  # a broken EXIF block must not cost the user their image
                pass
            if target is None:
                return to_rgb(img), fmt, None
            rgb = to_rgb(img, copy=False)
            if rgb is not img:
                img.close()  # the full-size pixels go now, not when the collector gets to them
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.BICUBIC)  # as resize_for_model does later otherwise
            return rgb, fmt, upright
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


def to_rgb(img: Image.Image, copy: bool = True) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha flattened on white, 16-bit and float scaled, not clipped.

    An RGB image is copied unless `copy` is False (then it may be returned as is).
    """
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _scale_to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img.copy() if copy else img


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
