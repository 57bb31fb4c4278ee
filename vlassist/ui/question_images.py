"""A question's images in the conversation: thumbnails with their sizes, each with a link to the full-size image."""

from __future__ import annotations

import streamlit as st
from PIL import Image
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from vlassist.conversation import GenerationOptions
from vlassist.store.history import ImageRef, OwnerStore
from vlassist.ui.verbatim import escape_markdown


def full_size_url(ref: ImageRef, data: bytes) -> str:
    """A page-relative URL serving the stored image as attached, or "" where no Streamlit server runs.

    The file goes through Streamlit's media manager for this session, like the thumbnails, so the per-user
    media scope (media_scope.py) lets only this session's user open it, and it is dropped when no longer shown.
    """
    ctx = get_script_run_ctx()
    if ctx is None or not runtime.exists():
        return ""
    Image.init()  # fills Image.MIME with every format Pillow reads
    mimetype = Image.MIME.get((ref.format or "").upper(), "application/octet-stream")
    url = runtime.get_instance().media_file_mgr.add(data, mimetype, f"vl-question-image-{ref.sha256}")
    # Relative, so the link holds under a proxy's path prefix too (Streamlit answers "/media/…").
    return url.lstrip("/")


def render(refs: list[ImageRef], store: OwnerStore, engine, options: GenerationOptions) -> None:
    """Thumbnails of a question's images with their sizes; a "Full size" link under each opens the stored image."""
    if not refs:
        return
    from vlassist.ui.chat import image_caption, stored_image_caption  # chat draws a question through this module

    columns = st.columns(min(len(refs), 3))
    for i, ref in enumerate(refs):
        with columns[i % len(columns)]:
            thumb = store.thumbnail(ref.sha256)
            caption = stored_image_caption(ref) if ref.sizing else image_caption(ref.name, ref.size, ref.format,
                                                                                  engine, options)
            if thumb:
                st.image(thumb, caption=caption)
            else:
                st.caption(caption)
            data = store.image_data(ref.sha256)
            url = full_size_url(ref, data) if data else ""
            if url:
                st.markdown(f"[:material/open_in_full: Full size]({url})",
                            help=f"{escape_markdown(ref.name)}, as attached")
