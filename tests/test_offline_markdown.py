"""offline_markdown: model Markdown that renders with no image and no link to another host (markdown-it-py checks)."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from vlassist.answers.offline_markdown import offline_markdown

RENDER = MarkdownIt("commonmark").enable("table").render


@pytest.mark.parametrize("text", [
    "It says ![x](http://127.0.0.1:9/leak?secret)",
    "![x](//evil.example/a.png) and ![y](/media/local.png)",
    "![a][r]\n\n[r]: http://evil.example/x.png",
    "[![i](http://a.example/i.png)](http://b.example/)",
    '<img src="http://evil.example/x.png">',
    "| a | b |\n|---|---|\n| ![x](http://evil.example/t.png) | 1 |",
])
def test_no_image_is_rendered(text):
    """Whatever form an image takes (inline, reference, nested in a link, HTML, in a table), none is rendered."""
    assert "<img" not in RENDER(offline_markdown(text))


@pytest.mark.parametrize("text", [
    "[docs](https://evil.example/a?b=1 \"title\")",
    "<https://evil.example/z> and www.evil.example and http://evil.example/c",
    "[rel](/somewhere) [anchor](#top)",
    "[r]\n\n[r]: https://evil.example/",
])
def test_no_link_is_rendered_and_addresses_stay_readable(text):
    """Links of any kind come out as text, and every address is still shown."""
    html = RENDER(offline_markdown(text))
    assert "<a " not in html
    assert all(host in html for host in ("evil.example",) if host in text)


def test_code_is_left_exactly_as_written():
    """Code spans and fenced blocks keep their text byte for byte (an image inside code is just code)."""
    text = "Use `![x](http://y/z.png)` or:\n\n```md\n![x](http://y/z.png) [a](http://b)\n```\n"
    assert offline_markdown(text).split("\n", 1)[0] == "Use `![x](http://y/z.png)` or:"
    assert "```md\n![x](http://y/z.png) [a](http://b)\n```\n" in offline_markdown(text)


def test_plain_prose_is_unchanged():
    """Text with no image, link, bracket or tag is returned as it was."""
    text = "The total is **12.50** — paid *in cash*.\n\n- one\n- two\n"
    assert offline_markdown(text) == text
