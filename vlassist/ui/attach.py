"""The attach area above the chat box: images and PDF pages, each with its sizes and visual tokens, before Send.

Files dropped on the uploader move at once into a tray kept in the session (the uploader is then replaced by an
empty one), so every attachment gets a preview, a remove control and, for a PDF, a page picker; a file that
cannot be used is refused right there. On Send the tray's images go with the question and the tray empties.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import streamlit as st

from vlassist import pdf
from vlassist.conversation import GenerationOptions
from vlassist.errors import ImageError, VlassistError
from vlassist.images import Fit, LoadedImage, decode_for, load_image
from vlassist.store.records import NewImage, make_thumbnail

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]
FILE_TYPES = [*IMAGE_TYPES, "pdf"]
TRAY_KEY = "attached"  # list[Attachment], in the order they were attached
GENERATION_KEY = "attach_generation"  # part of the uploader's key: a new number is a new, empty uploader
DRAFTS_KEY = "attach_drafts"  # conversation id (None: a new one) → its files left in the attach area
PASTE_NAMES = frozenset({"image.png", "image.jpeg", "image.jpg", "image.gif", "image.webp"})  # browsers' paste names
PROBLEMS_KEY = "attach_problems"  # refusals of the files just dropped, shown once beside the uploader
PREVIEW_SIDE = 140  # px, the longer side of a preview: four in a row, a page no taller than its caption
COLUMNS = 4
MAX_PAGES = pdf.MAX_ATTACHED_PAGES


@dataclass
class Attachment:
    """One attached file: an image, or a PDF whose picked pages are rendered when first shown."""

    key: str  # unique within the session; names the widgets of this attachment
    name: str
    data: bytes
    image: NewImage | None = None  # an image file, decoded
    thumb: bytes = b""  # the image's preview
    pages: int = 0  # a PDF's page count
    rendered: dict[int, tuple[NewImage, bytes]] = field(default_factory=dict)  # page → (image, preview)

    @property
    def is_pdf(self) -> bool:
        """True for a PDF (its images are its picked pages)."""
        return self.image is None


def fitting(engine, options: GenerationOptions) -> Fit:
    """What the current settings make of an image: its model-input size for its original (width, height)."""
    return lambda size: engine.plan(size, options).input_size


def open_file(name: str, data: bytes, fit: Fit | None = None) -> Attachment:
    """An attachment from a file's bytes: the image decoded, or the PDF opened and its pages counted (ImageError).

    With `fit`, the image is kept only at its model-input size (its original size is still reported): a small file
    of a huge, plain image must not hold hundreds of MB in a session until it closes.
    """
    key = hashlib.sha256(data).hexdigest()[:16]
    if not pdf.is_pdf(name, data[:5]):
        with decode_for(fit):
            loaded = load_image(data, name)
        return Attachment(key, name, data, image=NewImage(data, loaded, name), thumb=_preview(loaded))
    try:
        count = pdf.page_count(data)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    if count == 0:
        raise ImageError(f"{name}: the PDF has no pages")
    return Attachment(key, name, data, pages=count)


def page_images(item: Attachment, numbers: list[int]) -> list[NewImage]:
    """The given pages of a PDF attachment as images named like `report.pdf p3.png`, rendered once each."""
    missing = [n for n in numbers if n not in item.rendered]
    if missing:
        for n, (png, loaded) in zip(missing, pdf.render_pngs(item.data, item.name, missing)):
            name = pdf.page_name(item.name, n)
            item.rendered[n] = (NewImage(png, loaded, name), _preview(loaded))
    for n in set(item.rendered) - set(numbers):
        del item.rendered[n]  # at most the picked pages stay decoded in the session
    return [item.rendered[n][0] for n in numbers]


def picked_pages(item: Attachment) -> list[int]:
    """The pages the PDF's page box picks, or VlassistError saying why they cannot be sent."""
    spec = st.session_state.get(_pages_key(item), default_pages(item.pages))
    numbers = pdf.select_pages(item.pages, pdf.parse_pages(spec, "Pages"))
    if not numbers:
        raise VlassistError(f"Pages {spec!r} picks none of its {item.pages} pages")
    if len(numbers) > MAX_PAGES:
        raise VlassistError(
            f"{len(numbers)} pages picked, but at most {MAX_PAGES} pages of a PDF go with one question; type the "
            f"pages you want in Pages, e.g. 1-{MAX_PAGES} or 1,3,5")
    return numbers


def default_pages(count: int) -> str:
    """The page box's starting value: the first pages, up to the limit."""
    return pdf.format_pages(list(range(1, min(count, MAX_PAGES) + 1)))


def images(fit: Fit | None = None) -> list[NewImage]:
    """Every attached image in the order shown (images, then PDF pages); VlassistError if a PDF cannot be sent.

    An image kept at a smaller size than `fit` now asks for (the detail was raised after it was attached) is
    decoded again from its file, so the model never gets an enlarged copy.
    """
    tray = _tray()
    for item in tray:
        if item.image is not None and fit is not None and _smaller_than(item.image.loaded, fit):
            with decode_for(fit):
                item.image = NewImage(item.data, load_image(item.data, item.name), item.name)
    out = [item.image for item in tray if not item.is_pdf]
    for item in (i for i in tray if i.is_pdf):
        try:
            out += page_images(item, picked_pages(item))
        except VlassistError as exc:
            raise VlassistError(f"{item.name}: {exc}") from None
    return out


def hold(kept: list[NewImage]) -> None:
    """Put images back in the tray (a question that could not be sent); those already there are not repeated."""
    tray = _tray()
    there = {item.image.loaded.sha256 for item in tray if item.image}
    there |= {new.loaded.sha256 for item in tray for new, _ in item.rendered.values()}
    for new in kept:
        if new.loaded.sha256 not in there:
            there.add(new.loaded.sha256)
            tray.append(Attachment(new.loaded.sha256[:16], new.name, new.data, image=new,
                                   thumb=_preview(new.loaded)))


def add(item: Attachment) -> None:
    """Put an opened file in the tray (unless the same file is there already)."""
    tray = _tray()
    if all(other.key != item.key for other in tray):
        tray.append(item)


def switch_conversation(leaving: int | None, opening: int | None) -> None:
    """Keep the attach area's files with the conversation they were added in; bring back the opened one's."""
    drafts = st.session_state.setdefault(DRAFTS_KEY, {})
    if leaving != opening:
        drafts[leaving] = _tray()
        st.session_state[TRAY_KEY] = drafts.pop(opening, [])
        st.session_state.pop(PROBLEMS_KEY, None)
        st.session_state[GENERATION_KEY] = st.session_state.get(GENERATION_KEY, 0) + 1


def pasted_name(name: str, when: datetime | None = None) -> str:
    """A pasted screenshot's name: browsers call every paste "image.png", so it is named by the time it came."""
    if name.lower() not in PASTE_NAMES:
        return name
    return f"Pasted {(when or datetime.now()):%Y-%m-%d %H.%M.%S}{Path(name).suffix.lower()}"


def clear() -> None:
    """Empty the tray and the uploader (after a send)."""
    for item in _tray():
        st.session_state.pop(_pages_key(item), None)
    st.session_state[TRAY_KEY] = []
    st.session_state.pop(PROBLEMS_KEY, None)
    st.session_state[GENERATION_KEY] = st.session_state.get(GENERATION_KEY, 0) + 1


def render(engine, options: GenerationOptions) -> None:
    """The attach area: previews with sizes and visual tokens, PDF page pickers, the uploader, refusals."""
    with st.container(key="attach_area"):
        # A hairline round previews: a white page or screenshot would not show against the page otherwise.
        st.html("<style>.st-key-attach_area img {border: 1px solid rgba(128, 128, 128, 0.4);}</style>")
        tray = _tray()
        pictures = [item for item in tray if not item.is_pdf]
        if pictures:
            _grid([(item.thumb, item.image, item.image.loaded.format, f"remove_{item.key}", (_remove, (item.key,)))
                   for item in pictures], engine, options)
        for item in (i for i in tray if i.is_pdf):
            _render_pdf(item, engine, options)
        key = f"attach_{st.session_state.get(GENERATION_KEY, 0)}"
        st.file_uploader("Attach images or PDFs", type=FILE_TYPES, accept_multiple_files=True, key=key,
                         on_change=_take_uploads, args=(key, fitting(engine, options)),
                         help="Each file is shown here with the size the model sees it at; all go with your next "
                              f"question. A PDF is sent as its pages (at most {MAX_PAGES}).")
        for problem in st.session_state.pop(PROBLEMS_KEY, []):
            st.error(f"Not attached — {problem}", icon=":material/error:")


# ---- drawing ----

def _render_pdf(item: Attachment, engine, options: GenerationOptions) -> None:
    with st.container(border=True, key=f"pdf_{item.key}"):
        head, picker, remove = st.columns([5, 3, 2], vertical_alignment="bottom")
        noun = "page" if item.pages == 1 else "pages"
        head.markdown(f":material/picture_as_pdf: {_escape(item.name)} · {item.pages} {noun}")
        pages_key = _pages_key(item)
        if pages_key not in st.session_state:
            st.session_state[pages_key] = default_pages(item.pages)
        picker.text_input("Pages", key=pages_key,
                          help=f"Which pages go with the question, e.g. 1-3,7 (at most {MAX_PAGES})")
        remove.button("Remove", key=f"remove_{item.key}", icon=":material/close:", on_click=_remove,
                      args=(item.key,))
        try:
            numbers = picked_pages(item)
            shown = page_images(item, numbers)
        except (VlassistError, ImageError) as exc:
            st.error(f"{item.name}: {exc}", icon=":material/error:")
            return
        if len(numbers) < item.pages:
            st.caption(f"{len(numbers)} of {item.pages} pages go with the question; change Pages to pick others "
                       f"(at most {MAX_PAGES}).")
        _grid([(item.rendered[n][1], new, "PDF page", f"drop_{item.key}_{n}", (_drop_page, (item.key, n)))
               for n, new in zip(numbers, shown)], engine, options)


def _grid(tiles: list[tuple[bytes, NewImage, str, str, tuple]], engine, options: GenerationOptions) -> None:
    """Previews four to a row: (preview, image, format shown, remove button key, (callback, args)) each."""
    for start in range(0, len(tiles), COLUMNS):
        columns = st.columns(COLUMNS)
        for column, (thumb, new, fmt, key, (callback, args)) in zip(columns, tiles[start:start + COLUMNS]):
            with column:
                st.image(thumb)
                st.caption(_caption(new, fmt, engine, options))
                st.button("Remove", key=key, icon=":material/close:", on_click=callback, args=args)


def _caption(new: NewImage, fmt: str, engine, options: GenerationOptions) -> str:
    """Name, original size and format, and what the model sees of it under the current settings."""
    sizing = engine.plan(new.loaded.size, options)
    (w, h), (iw, ih) = new.loaded.size, sizing.input_size
    return (f"{_escape(new.name)}  \n{w}×{h} {fmt}  \nmodel sees {iw}×{ih} · "
            f"{sizing.visual_tokens} visual tokens")


def _smaller_than(loaded: LoadedImage, fit: Fit) -> bool:
    want = fit(loaded.size)
    return loaded.image.width < want[0] or loaded.image.height < want[1]


def _preview(loaded: LoadedImage) -> bytes:
    return make_thumbnail(loaded.image, PREVIEW_SIDE)


def _escape(text: str) -> str:
    """Markdown-escape a file name, so `*`, `_` or `:icon:` in it are shown as typed, not taken as Markdown."""
    text = re.sub(r"([\\`*_\[\]<>|~$:])", r"\\\1", text)
    return re.sub(r"^(\d+)([.)])|^([#+\-=])", lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", text)


# ---- state and callbacks (run before the page is drawn) ----

def _tray() -> list[Attachment]:
    return st.session_state.setdefault(TRAY_KEY, [])


def _pages_key(item: Attachment) -> str:
    return f"pages_{item.key}"


def _take_uploads(key: str, fit: Fit) -> None:
    """Move the uploader's files into the tray, refusing bad ones, and replace the uploader by an empty one."""
    problems = []
    for upload in st.session_state.get(key) or []:
        try:
            add(open_file(upload.name, upload.getvalue(), fit))
        except ImageError as exc:
            problems.append(str(exc))
    st.session_state[PROBLEMS_KEY] = problems
    st.session_state[GENERATION_KEY] = st.session_state.get(GENERATION_KEY, 0) + 1


def _remove(key: str) -> None:
    st.session_state[TRAY_KEY] = [item for item in _tray() if item.key != key]
    st.session_state.pop(f"pages_{key}", None)


def _drop_page(key: str, number: int) -> None:
    """Take one page out of a PDF's pick (the whole PDF when it was the last one)."""
    [item] = [i for i in _tray() if i.key == key]
    rest = [n for n in picked_pages(item) if n != number]
    if rest:
        st.session_state[_pages_key(item)] = pdf.format_pages(rest)
    else:
        _remove(key)
