"""Batch inputs: files, folders and globs → work items, one per image or PDF page; pages rendered with pypdfium2."""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

from vlassist.errors import ImageError, VlassistError
from vlassist.images import LoadedImage, load_image
from vlassist.pdf import (
    DEFAULT_DPI,
    PDF_SUFFIX,
    close_pdf,
    is_pdf,
    open_pdf,
    page_count,
    parse_pages,
    render_page,
    select_pages,
)

__all__ = ["DEFAULT_DPI", "DPI_RANGE", "Item", "Loader", "expand", "parse_pages", "plan_items"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
DPI_RANGE = (36, 600)


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
        if not is_pdf(path.name, data[:5]):
            items.append(Item(source, sha))
            continue
        try:
            count = page_count(data)
        except ImageError as exc:
            items.append(Item(source, sha, error=f"{source}: {exc}"))
            continue
        if count == 0:
            items.append(Item(source, sha, error=f"{source}: the PDF has no pages"))
            continue
        items += [Item(source, sha, page=n, pages=count) for n in select_pages(count, pages)]
    return items


class Loader:
    """Decodes items into model images; keeps the last PDF open so its pages are not parsed again for each one.

    Meant for one thread (the batch's main one): it holds one open document between calls.
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
        return render_page(self._document(item), item.page, self.dpi, label, " (lower --dpi)")

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
                self._pdf = (item.sha256, open_pdf(data))
            except ImageError as exc:
                raise ImageError(f"{item.source}: {exc}") from None
        return self._pdf[1]

    def close(self) -> None:
        """Close the open PDF, if any."""
        if self._pdf is not None:
            close_pdf(self._pdf[1])
            self._pdf = None
