"""Batch inputs: files, folders and globs → work items, one per image or PDF page; pages rendered with pypdfium2."""

from __future__ import annotations

import glob
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from vlassist.errors import ImageError, VlassistError
from vlassist.images import LoadedImage, check_header, load_image, to_rgb

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
PDF_SUFFIX = ".pdf"
DEFAULT_DPI = 150  # A4 at 150 dpi is 1240×1754 px: small print stays legible within the default token budget
DPI_RANGE = (36, 600)
POINTS_PER_INCH = 72


@dataclass(frozen=True)
class Item:
    """One row to produce: an image file, or one page of a PDF; `error` when the file failed before answering."""

    source: str
    sha256: str | None  # of the file's bytes; None when it could not be read
    page: int | None = None  # 1-based; None for an image file (or a PDF that would not open)
    pages: int | None = None  # the page count of its PDF
    error: str | None = None

    @property
    def is_pdf_page(self) -> bool:
        """True for a page of a PDF (an image file has no page)."""
        return self.page is not None


def expand(inputs: list[str]) -> list[Path]:
    """Files named, folders walked (recursive, sorted, supported types, hidden files skipped) and globs, deduplicated.

    A file named explicitly is kept whatever its type, so a wrong one becomes an error row rather than vanishing.
    """
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += _walk(path)
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise VlassistError(f"{raw}: no such file or folder, and no file matches it as a pattern")
            for match in map(Path, matches):
                found += _walk(match) if match.is_dir() else [match] if _supported(match) else []
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    if not unique:
        raise VlassistError("no images or PDFs found in the inputs")
    return list(unique.values())


def _supported(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == PDF_SUFFIX


def _walk(folder: Path) -> list[Path]:
    def visible(path: Path) -> bool:
        return not any(part.startswith(".") for part in path.relative_to(folder).parts)

    return sorted((p for p in folder.rglob("*") if p.is_file() and _supported(p) and visible(p)),
                  key=lambda p: p.relative_to(folder).as_posix())


def parse_pages(spec: str | None) -> list[tuple[int, int | None]] | None:
    """`1-3,7,10-` → [(1, 3), (7, 7), (10, None)] (1-based, inclusive; None: to the end); None means all pages."""
    if spec is None or not spec.strip():
        return None
    ranges = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?", part)
        if not match or int(match.group(1)) < 1:
            raise VlassistError(f"--pages {spec!r}: write page numbers and ranges from 1, e.g. 1-3,7,10-")
        first = int(match.group(1))
        last = None if match.group(2) and not match.group(3) else int(match.group(3) or first)
        if last is not None and last < first:
            raise VlassistError(f"--pages {spec!r}: the range {part.strip()} runs backwards")
        ranges.append((first, last))
    return ranges


def _selected(count: int, ranges: list[tuple[int, int | None]] | None) -> list[int]:
    if ranges is None:
        return list(range(1, count + 1))
    return sorted({n for first, last in ranges for n in range(first, min(count, last or count) + 1)})


def _is_pdf(path: Path, head: bytes) -> bool:
    return path.suffix.lower() == PDF_SUFFIX or head.startswith(b"%PDF-")


def plan_items(paths: list[Path], pages: list[tuple[int, int | None]] | None) -> list[Item]:
    """Every row the inputs make: files are hashed and PDFs opened (pages counted), nothing is decoded yet."""
    items: list[Item] = []
    for path in paths:
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            items.append(Item(source, None, error=f"{source}: cannot read ({exc.strerror or exc})"))
            continue
        sha = hashlib.sha256(data).hexdigest()
        if not _is_pdf(path, data[:5]):
            items.append(Item(source, sha))
            continue
        try:
            count = _page_count(data)
        except ImageError as exc:
            items.append(Item(source, sha, error=f"{source}: {exc}"))
            continue
        if count == 0:
            items.append(Item(source, sha, error=f"{source}: the PDF has no pages"))
            continue
        items += [Item(source, sha, page=n, pages=count) for n in _selected(count, pages)]
    return items


def _open_pdf(data: bytes):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise ImageError("the PDF is encrypted (password-protected); save an unprotected copy") from None
        raise ImageError(f"the PDF is damaged or not a PDF ({exc})") from None


def _page_count(data: bytes) -> int:
    doc = _open_pdf(data)
    try:
        return len(doc)
    finally:
        doc.close()


class Loader:
    """Decodes items into model images; keeps the last PDF open so its pages are not parsed again for each one.

    PDFium is not thread-safe: only the batch's main thread calls this.
    """

    def __init__(self, dpi: int = DEFAULT_DPI):
        self.dpi = dpi
        self._pdf: tuple[str, object] | None = None  # (sha256, open document)

    def load(self, item: Item) -> LoadedImage:
        """The item's image (an image file decoded, a PDF page rendered), or ImageError naming the file and page."""
        if item.error:
            raise ImageError(item.error)
        label = f"{item.source} page {item.page}" if item.is_pdf_page else item.source
        if not item.is_pdf_page:
            return load_image(self._read(item), item.source)
        doc = self._document(item)
        try:
            return self._render(doc, item.page, label)
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001  pdfium's errors on a broken page, whatever their type
            raise ImageError(f"{label}: the page cannot be rendered ({type(exc).__name__}: {exc})"[:300]) from None

    def _read(self, item: Item) -> bytes:
        try:
            data = Path(item.source).read_bytes()
        except OSError as exc:
            raise ImageError(f"{item.source}: cannot read ({exc.strerror or exc})") from None
        if hashlib.sha256(data).hexdigest() != item.sha256:  # the row would carry another file's hash
            raise ImageError(f"{item.source}: the file changed during the batch; run the batch again")
        return data

    def _document(self, item: Item):
        if self._pdf is None or self._pdf[0] != item.sha256:
            self.close()
            data = self._read(item)
            try:
                self._pdf = (item.sha256, _open_pdf(data))
            except ImageError as exc:
                raise ImageError(f"{item.source}: {exc}") from None
        return self._pdf[1]

    def _render(self, doc, number: int, label: str) -> LoadedImage:
        page = doc[number - 1]
        try:
            width, height = page.get_size()
            scale = self.dpi / POINTS_PER_INCH
            # Refused from the page size before rendering, as images are from their header.
            size = (math.ceil(width * scale), math.ceil(height * scale))
            try:
                check_header(size, "RGB", "PDF", 0, f"{label} at {self.dpi} dpi: ")
            except ImageError as exc:
                raise ImageError(f"{exc} (lower --dpi)") from None
            bitmap = page.render(scale=scale)
            try:
                image = to_rgb(bitmap.to_pil())
            finally:
                bitmap.close()
        finally:
            page.close()
        # The engine keys cached pixels and KV caches by this hash, so it must name the page's pixels, not the file.
        return LoadedImage(image, "PDF", hashlib.sha256(image.tobytes()).hexdigest(), image.width * image.height * 3)

    def close(self) -> None:
        """Close the open PDF, if any."""
        if self._pdf is not None:
            self._pdf[1].close()
            self._pdf = None
