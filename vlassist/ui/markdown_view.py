"""The one place the page renders model text as Markdown (an answer's "Rendered" view)."""

from __future__ import annotations

import re

import streamlit as st

from vlassist.answers.offline_markdown import offline_markdown

# Streamlit's Markdown adds colour/badge directives (`:red[…]`), icons and emoji shortcodes (`:material/x:`)
# and maths (`$…$`): none of them is Markdown a model means, so their markers are shown as typed.
_STREAMLIT_EXTRAS = re.compile(r"(:(?=[A-Za-z/_-]+[\[:])|\$)")
_CODE = re.compile(r"(`{3,}[\s\S]*?`{3,}|~{3,}[\s\S]*?~{3,}|`[^`\n]+`)")  # code shows as written: no escapes


def neutralise_streamlit_extras(text: str) -> str:
    """Escape the characters that start Streamlit-only Markdown extensions, leaving plain Markdown as it is."""
    parts = _CODE.split(text)
    return "".join(part if i % 2 else _STREAMLIT_EXTRAS.sub(r"\\\1", part) for i, part in enumerate(parts))


def render_markdown(text: str) -> None:
    """Draw `text` as Markdown (CommonMark + tables), with Streamlit's own extensions shown literally and no image
    or link that could make the browser reach another host."""
    st.markdown(neutralise_streamlit_extras(offline_markdown(text)))
