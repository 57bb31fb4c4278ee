"""Text exactly as stored: answers as plain text with a copy button, questions and titles never interpreted.

OCR, tables, JSON and HTML are the product's main output: a Markdown renderer turns `2*3*4` into italics and
`1) first` into a list, and Streamlit's Markdown also runs `:red[…]` colour directives and `$…$` maths. So those
answers (and, by default, every other) are shown as stored; Markdown is an opt-in view ("Rendered").
"""

from __future__ import annotations

import html
import re

import streamlit as st

from vlassist.ui.markdown_view import render_markdown

RAW, RENDERED = "Raw", "Rendered"
MODES = (RAW, RENDERED)
CODE_LANGUAGES = {"json": "json", "html": "html"}
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&=\"'^])")


def default_mode(preset: str | None) -> str:
    """How an answer is shown before the user picks: raw, exactly as written (Rendered is one click away)."""
    return RAW  # even prose: what the model wrote is what the user reads and copies


def escape_markdown(text: str) -> str:
    """Backslash-escape every Markdown (and Streamlit directive) character so a label shows `text` literally."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def show_raw(text: str, language: str | None = None, where=None) -> None:
    """The text in a plain code block whose copy button copies it byte for byte."""
    # st.code drops one leading and one trailing newline of its body: pad by one so nothing of the text is lost.
    (where or st).code(f"\n{text}\n", language=language, wrap_lines=True)


def show_plain(text: str, tag: str = "div", css_class: str = "vl-verbatim") -> None:
    """Text as an HTML element holding only the escaped text, line breaks and tabs kept (questions, titles)."""
    st.html(f'<{tag} class="{css_class}" style="white-space: pre-wrap; margin: 0">'
            f"{html.escape(text, quote=False)}</{tag}>")


def render_answer_text(text: str, preset: str | None, key: str) -> None:
    """An answer's text with a Raw/Rendered switch; raw is the stored text with a copy button."""
    mode = st.segmented_control("Show", MODES, default=default_mode(preset), key=f"{key}-mode",
                                label_visibility="collapsed", help="Raw: exactly as the model wrote it. "
                                "Rendered: read as Markdown.") or default_mode(preset)
    if mode == RAW:
        show_raw(text, CODE_LANGUAGES.get(preset or ""))
        return
    render_markdown(text)
    with st.expander("Copy text", icon=":material/content_copy:"):
        show_raw(text)
