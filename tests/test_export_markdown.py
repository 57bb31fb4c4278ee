"""The Markdown export, read by a real Markdown library (markdown-it-py, CommonMark with HTML on, as viewers do):
code stays code, every other text shows exactly as stored and runs no HTML."""

from __future__ import annotations

import dataclasses
import re
import time

from markdown_it import MarkdownIt

from vlassist.conversation import Stats
from vlassist.store import export
from vlassist.store.literal_markdown import fence, literal_markdown
from vlassist.store.records import StoredConversation, StoredMessage

TRICKY = ["2*3*4 and _under_ and **bold**", "1) first", "- x", "+ y", "# not a heading", "> not a quote",
          ":red[x] $x$ [link](http://example.com) <https://example.com>", "<b>x</b> <script>alert(1)</script>",
          "back\\slash \\* \\\\ &amp; &copy;", "    four spaces (not code)", "\ttab first\tand inside",
          "中文：表格｜数据", "| a | b |", "***", "x\\", "1. one", "`code` and ``two``", "<!-- comment -->"]
PLAIN = "\n".join(TRICKY)
MARKUP = ("html_block", "html_inline", "em_open", "strong_open", "bullet_list_open", "ordered_list_open",
          "blockquote_open", "link_open", "hr", "table_open", "code_block", "image")


def _tokens(markdown: str):
    for token in MarkdownIt("commonmark").parse(markdown):
        yield token
        yield from token.children or ()


def _markup(markdown: str) -> list[str]:
    """Markup a viewer would render beyond paragraphs, line breaks and fences (HTML, emphasis, lists, links…)."""
    return [t.type for t in _tokens(markdown) if t.type in MARKUP]


def _visible(markdown: str) -> list[tuple[str, str]]:
    """What a viewer shows: ("text", lines of a paragraph) and ("code", a fence's content), in order."""
    blocks: list[tuple[str, str]] = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type == "fence":
            blocks.append(("code", token.content))
        elif token.type == "inline":
            text = "".join(c.content if c.type in ("text", "code_inline") else "\n"
                           for c in token.children if c.type in ("text", "code_inline", "softbreak", "hardbreak"))
            blocks.append(("text", text))
    return blocks


def _conversation(*messages: StoredMessage, title: str = "t") -> StoredConversation:
    return StoredConversation(id=1, owner="local", title=title, created_at=time.time(), updated_at=time.time(),
                              messages=list(messages))


def _message(role: str, text: str, preset: str | None = None) -> StoredMessage:
    return StoredMessage(id=1, role=role, text=text, status="complete", created_at=time.time(), images=[],
                         preset=preset, stats=Stats(stop_reason="eos") if role == "assistant" else None)


def test_text_outside_fences_shows_literally_and_runs_nothing():
    """Plain text with Markdown and HTML in it renders as exactly its own lines, with no markup at all."""
    markdown = literal_markdown(PLAIN)
    assert _markup(markdown) == []
    assert _visible(markdown) == [("text", PLAIN)]


def test_fenced_html_in_an_answer_is_exported_unescaped_as_code():
    """A free answer's fenced HTML stays code, unescaped, with its language; the text around it stays literal."""
    page = '<!DOCTYPE html>\n<div class="login">\n  <button>Log in</button>\n</div>'
    answer = f"Here is the page *as asked*:\n```html\n{page}\n```\n1) done"
    markdown = export.to_markdown(_conversation(_message("assistant", answer, preset="describe")))
    assert "&lt;" not in markdown and _markup(markdown) == ["em_open"]  # the export's own *Started …*
    visible = _visible(markdown)
    assert ("code", page + "\n") in visible
    assert visible[-2:] == [("text", "Here is the page *as asked*:"), ("code", page + "\n")] or \
        visible[-3:] == [("text", "Here is the page *as asked*:"), ("code", page + "\n"), ("text", "1) done")]
    assert [t.info for t in _tokens(markdown) if t.type == "fence"] == ["html"]


def test_raw_answers_are_one_fence_longer_than_any_backtick_run_inside():
    """A data answer (OCR, JSON, HTML…) is exported whole, byte for byte, in a fence nothing inside can close."""
    answer = "```json\n{\"a\": \"````\"}\n```\n~~~\n" + PLAIN + "\n"
    for preset in ("ocr", "json", "html", "table"):
        markdown = export.to_markdown(_conversation(_message("assistant", answer, preset=preset)))
        assert [b for b in _visible(markdown) if b[0] == "code"] == [("code", answer + "\n")]
    assert fence("a ````` b").startswith("``````\n")


def test_questions_titles_and_file_names_show_literally():
    """The title, a question and the export's own lines show as stored, with no markup and no HTML run."""
    question = PLAIN
    markdown = export.to_markdown(_conversation(_message("user", question), title="<b>2*3*4</b> # :red[x]"))
    assert _markup(markdown) == ["em_open"]  # the export's own *Started …*
    assert [t.type for t in _tokens(markdown)].count("heading_open") == 2  # the title and "You"
    visible = [text for kind, text in _visible(markdown) if kind == "text"]
    assert visible[0] == "<b>2*3*4</b> # :red[x]"
    assert question in visible


def test_export_gives_local_time_with_its_offset():
    """The export's start time is local time with its UTC offset written out (e.g. "+01:00")."""
    markdown = export.to_markdown(_conversation(_message("user", "q")))
    assert re.search(r"Started \d{4}-\d\d-\d\d \d\d:\d\d [+-]\d\d:\d\d", markdown)


def test_export_time_is_the_machines_local_time_not_utc(monkeypatch):
    """In a time zone east of UTC, the export's start time is that zone's wall-clock time and its offset."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30 all year: no daylight-saving edge
    time.tzset()
    try:
        conversation = dataclasses.replace(_conversation(_message("user", "q")),
                                           created_at=1_764_889_500.0)  # 2025-12-04 23:05 UTC
        assert "*Started 2025-12-05 04:35 +05:30*" in export.to_markdown(conversation)
    finally:
        monkeypatch.undo()
        time.tzset()
