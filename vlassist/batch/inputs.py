"""Batch inputs: files, folders and globs → work items, one per image or PDF page; pages rendered with pypdfium2."""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import stat
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
MAX_FILE_BYTES = 512 * 2**20  # an input file larger than this is refused unread (the image limits are far lower)
HASH_BLOCK = 1 << 20


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


def expand(inputs: list[str], refused: dict[Path, str] | None = None) -> list[Path]:
    """Files named, folders walked (recursive, sorted, supported types, hidden files skipped) and globs, deduplicated.

    A file named explicitly is kept whatever its type, so a wrong one becomes an error row rather than vanishing;
    so is a folder that cannot be listed, and a link that loops or leads out of its folder (plan_items says why).
    Walks never follow links to folders, so a link loop cannot make them endless; a link in a walked folder that
    leads out of it is listed with its reason in `refused` (for plan_items) instead of being read.
    """
    refused = {} if refused is None else refused
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir() and not path.is_symlink():
            found += _walk(path, refused)
        elif path.exists() or path.is_symlink():
            found.append(path)
        else:
            try:
                matches = sorted(glob.glob(str(path), recursive=True))
            except (OSError, RecursionError) as exc:
                raise VlassistError(f"{raw}: the pattern cannot be expanded ({exc})") from None
            if not matches:
                raise VlassistError(f"{raw}: no such file or folder, and no file matches it as a pattern")
            fixed = _fixed_prefix(path)
            for match in map(Path, matches):
                if _through_a_link(match, fixed):
                    continue  # `**` followed a link to a folder: what lies behind it is listed where it really is
                if match.is_symlink() and match.is_dir():
                    found.append(match)  # a link to a folder (perhaps a loop): a row that says it was skipped
                elif match.is_dir():
                    found += _walk(match, refused)
                elif _supported(match):
                    found.append(match)
    unique: dict[Path, Path] = {}
    for path in found:
        try:
            key = path.resolve(strict=False)
        except (OSError, RuntimeError):  # a link loop: resolve() gives up on it
            key = path.absolute()
        if path.is_symlink() or path.is_dir():
            key = path.absolute()  # each link is its own row (it is refused there), not its target's
        unique.setdefault(key, path)
    if not unique:
        raise VlassistError("no images or PDFs found in the inputs")
    return list(unique.values())


def _fixed_prefix(pattern: Path) -> Path:
    """The part of a glob pattern before its first wildcard."""
    parts = pattern.parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:i]) if i else Path()
    return pattern


def _through_a_link(match: Path, fixed: Path) -> bool:
    """Whether a glob match lies under a link to a folder that the wildcards stepped through (a link loop repeats
    everything behind it at every depth, up to the system's path limit)."""
    parent = match.parent
    depth = len(fixed.parts)
    while len(parent.parts) > depth:
        if parent.is_symlink():
            return True
        parent = parent.parent
    return False


def _supported(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == PDF_SUFFIX


def _walk(folder: Path, refused: dict[Path, str]) -> list[Path]:
    """Supported files under `folder` (links to folders not followed), and every subfolder that cannot be listed."""
    found: list[Path] = []
    inside = folder.resolve()
    unreadable: list[Path] = []

    def failed(exc: OSError) -> None:
        unreadable.append(Path(exc.filename))

    for top, dirs, files in os.walk(folder, onerror=failed, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top, name) for name in files if not name.startswith(".") and _supported(Path(name))]
        # A link to a folder is listed with the folders; it is not walked (a loop would never end) but reported.
        found += [Path(top, d) for d in dirs if Path(top, d).is_symlink()]
    for path in found:
        if path.is_symlink():
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):
                continue  # a loop or a dangling link: plan_items says which
            if not target.is_relative_to(inside):
                refused[path] = f"{path}: a link leading out of {folder} (to {target}); skipped"
    return sorted(found + unreadable, key=lambda p: p.relative_to(folder).as_posix())


def _refusal(path: Path) -> str | None:
    """Why `path` is not read as an input (not a regular file, a loop, a folder it cannot list), or None."""
    source = str(path)
    try:
        target = path.resolve(strict=True)
        info = target.stat()
    except RuntimeError:
        return f"{source}: a symbolic link loop; skipped"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{source}: a symbolic link loop; skipped"
        return f"{source}: cannot read ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        if path.is_symlink():
            if path.absolute().is_relative_to(target):
                return f"{source}: a symbolic link loop (it leads back to {target}); skipped"
            return f"{source}: a link to a folder; links to folders are not followed (name the folder itself)"
        try:
            next(os.scandir(path), None)
        except OSError as exc:
            return f"{source}: cannot list this folder ({exc.strerror or exc}); its files were skipped"
        return f"{source}: a folder"
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or \
            stat.S_ISBLK(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file"
        return f"{source}: {kind}, not a regular file; skipped"
    if info.st_size > MAX_FILE_BYTES:
        return f"{source}: {info.st_size / 2**20:,.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit for an input"
    return None


def _hash(path: Path) -> tuple[str, bytes]:
    """The file's sha256, read in blocks, and its first bytes (enough to tell a PDF)."""
    digest = hashlib.sha256()
    head = b""
    with path.open("rb") as file:
        while block := file.read(HASH_BLOCK):
            head = head or block[:8]
            digest.update(block)
    return digest.hexdigest(), head


def plan_items(paths: list[Path], pages: list[tuple[int, int | None]] | None,
               refused: dict[Path, str] | None = None) -> list[Item]:
    """Every row the inputs make: files are hashed and PDFs opened (pages counted), nothing is decoded yet.

    Only regular files are read; `refused` (from expand) and anything else that is not one become error rows.
    """
    items: list[Item] = []
    for path in paths:
        source = str(path)
        refusal = (refused or {}).get(path) or _refusal(path)
        if refusal is not None:
            items.append(Item(source, None, error=refusal))
            continue
        try:
            sha, head = _hash(path)  # streamed: a large file is never held whole to be hashed
        except OSError as exc:
            items.append(Item(source, None, error=f"{source}: cannot read ({exc.strerror or exc})"))
            continue
        if not is_pdf(path.name, head[:5]):
            items.append(Item(source, sha))
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            items.append(Item(source, sha, error=f"{source}: cannot read ({exc.strerror or exc})"))
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
        refusal = _refusal(Path(item.source))  # the file may have been swapped for a FIFO or a link since
        if refusal is not None:
            raise ImageError(refusal)
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
