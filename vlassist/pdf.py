"""PDF pages → images with pypdfium2, for batch jobs and the page alike; page lists like `1-3,7,10-` (no torch)."""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading

from vlassist.errors import ImageError, VlassistError
from vlassist.images import LoadedImage, check_header, to_rgb

PDF_SUFFIX = ".pdf"
DEFAULT_DPI = 150  # A4 at 150 dpi is 1240×1754 px: small print stays legible within the default token budget
POINTS_PER_INCH = 72
MAX_ATTACHED_PAGES = 8  # pages of one PDF sent with one question from the page (a batch job has no such limit)
# PDFium is not thread-safe, not even across separate documents: every call into it holds this lock.
_PDFIUM = threading.RLock()


def is_pdf(name: str, head: bytes) -> bool:
    """True for a file named .pdf or whose bytes start like a PDF."""
    return name.lower().endswith(PDF_SUFFIX) or head.startswith(b"%PDF-")


def parse_pages(spec: str | None, what: str = "--pages") -> list[tuple[int, int | None]] | None:
    """`1-3,7,10-` → [(1, 3), (7, 7), (10, None)] (1-based, inclusive; None: to the end); None means all pages.

    `what` names the field in messages (the batch option, or the page's box).
    """
    if spec is None or not spec.strip():
        return None
    ranges = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?", part)
        if not match or int(match.group(1)) < 1:
            raise VlassistError(f"{what} {spec!r}: write page numbers and ranges from 1, e.g. 1-3,7,10-")
        first = int(match.group(1))
        last = None if match.group(2) and not match.group(3) else int(match.group(3) or first)
        if last is not None and last < first:
            raise VlassistError(f"{what} {spec!r}: the range {part.strip()} runs backwards")
        ranges.append((first, last))
    return ranges


def select_pages(count: int, ranges: list[tuple[int, int | None]] | None) -> list[int]:
    """The page numbers (1-based, sorted, each once) that `ranges` picks from a document of `count` pages."""
    if ranges is None:
        return list(range(1, count + 1))
    return sorted({n for first, last in ranges for n in range(first, min(count, last or count) + 1)})


def format_pages(pages: list[int]) -> str:
    """[1, 2, 3, 7] → `1-3,7`: the shortest page list parse_pages reads back as the same pages."""
    parts: list[str] = []
    numbers = sorted(set(pages))
    start = 0
    for i, n in enumerate(numbers):
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            first = numbers[start]
            parts.append(str(first) if first == n else f"{first}-{n}")
            start = i + 1
    return ",".join(parts)


def open_pdf(data: bytes):
    """Open a PDF held in memory, or raise ImageError saying it is encrypted or damaged."""
    import pypdfium2 as pdfium

    with _PDFIUM:
        try:
            return pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise ImageError("the PDF is encrypted (password-protected); save an unprotected copy") from None
            raise ImageError(f"the PDF is damaged or not a PDF ({exc})") from None


def close_pdf(doc) -> None:
    """Close a document open_pdf returned."""
    with _PDFIUM:
        doc.close()


def page_count(data: bytes) -> int:
    """How many pages the PDF has (ImageError when it does not open)."""
    doc = open_pdf(data)
    try:
        with _PDFIUM:
            return len(doc)
    finally:
        close_pdf(doc)


def render_page(doc, number: int, dpi: int, label: str, remedy: str = "") -> LoadedImage:
    """Page `number` (1-based) of an open document as an RGB image at `dpi`; ImageError naming `label` if it fails.

    The hash is of the pixels, not the file: the engine keys cached pixels and KV caches by it, so it must name
    the page. A page too large to render is refused from its size before any pixel is drawn, as images are from
    their header; `remedy` is added to that message (e.g. how to lower the resolution).
    """
    with _PDFIUM:
        try:
            page = doc[number - 1]
            try:
                width, height = page.get_size()
                scale = dpi / POINTS_PER_INCH
                size = (math.ceil(width * scale), math.ceil(height * scale))
                try:
                    check_header(size, "RGB", "PDF", 0, f"{label} at {dpi} dpi: ")
                except ImageError as exc:
                    raise ImageError(f"{exc}{remedy}") from None
                bitmap = page.render(scale=scale)
                try:
                    image = to_rgb(bitmap.to_pil())
                finally:
                    bitmap.close()
            finally:
                page.close()
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001  pdfium's errors on a broken page, whatever their type
            raise ImageError(f"{label}: the page cannot be rendered ({type(exc).__name__}: {exc})"[:300]) from None
    return LoadedImage(image, "PDF", hashlib.sha256(image.tobytes()).hexdigest(), image.width * image.height * 3)


def page_name(name: str, number: int) -> str:
    """The file name a rendered page goes by: `report.pdf p3.png`."""
    return f"{name} p{number}.png"


def render_pngs(data: bytes, name: str, numbers: list[int], dpi: int = DEFAULT_DPI) -> list[tuple[bytes, LoadedImage]]:
    """Pages of a PDF as PNG files and their decoded images (hashed by the PNG, as a stored image is).

    A rendered page becomes an image file of its own, so it can be stored and read back like any other.
    """
    doc = open_pdf(data)
    try:
        out = []
        for number in numbers:
            rendered = render_page(doc, number, dpi, f"{name} page {number}")
            buf = io.BytesIO()
            rendered.image.save(buf, "PNG", compress_level=3)  # fast enough to redo per page, and lossless
            png = buf.getvalue()
            out.append((png, LoadedImage(rendered.image, "PNG", hashlib.sha256(png).hexdigest(), len(png))))
        return out
    finally:
        close_pdf(doc)
