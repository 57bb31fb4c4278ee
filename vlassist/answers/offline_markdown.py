"""Model Markdown made safe to render offline: no image is loaded and no link leads to another host.

An answer (or a title made from one) could otherwise make the browser fetch `![x](http://host/leak?secret)`, so
images are shown as their Markdown text, and links, autolinks and bare URLs to other hosts as plain code text.
Code spans and fenced code blocks are left exactly as written; every other bracket is escaped, so no link of
any kind forms (relative ones would reach this server, and answers have no use for them).
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_SCHEME = r"(?:[A-Za-z][A-Za-z0-9+.\-]*:|//)"
_TITLE = r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?"
_UNSAFE = re.compile(
    r"(?P<image>!\[)"
    r"|(?P<link>\[(?P<label>[^\[\]\n]*)\]\(\s*<?(?P<url>" + _SCHEME + r"[^\s<>()]*)>?" + _TITLE + r"\s*\))"
    r"|(?P<auto><(?P<aurl>" + _SCHEME + r"[^\s<>]*)>)"
    r"|(?P<bare>(?:https?|ftp)://[^\s<>`()\"']+|\bwww\.[^\s<>`()\"']+)"
    r"|(?P<bracket>\[)"
    r"|(?P<html><(?=[A-Za-z/!?]))",
    re.M,
)


def offline_markdown(text: str) -> str:
    """`text` with every Markdown image shown as text and every link to another host shown as its address."""
    out, prose = [], []
    fence = None
    for line in text.splitlines(keepends=True):
        opened = _FENCE.match(line)
        if fence is None and opened:
            out.append(_prose("".join(prose)))
            prose = []
            fence = opened.group(1)
            out.append(line)
        elif fence is not None:
            out.append(line)
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                    and not line.strip()[len(opened.group(1)):].strip():
                fence = None
        else:
            prose.append(line)
    out.append(_prose("".join(prose)))
    return "".join(out)


def _prose(text: str) -> str:
    """Neutralise images and outside links outside code spans."""
    pieces, last = [], 0
    for span in _CODE_SPAN.finditer(text):
        pieces.append(_UNSAFE.sub(_neutral, text[last:span.start()]))
        pieces.append(span.group(0))
        last = span.end()
    pieces.append(_UNSAFE.sub(_neutral, text[last:]))
    return "".join(pieces)


def _code(text: str) -> str:
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _neutral(match: re.Match) -> str:
    if match.group("image"):
        return "!\\["  # the image's Markdown shows as text; its address is then caught as a bare URL
    if match.group("link"):
        label = match.group("label").strip()
        return f"{label} ({_code(match.group('url'))})" if label else _code(match.group("url"))
    if match.group("auto"):
        return _code(match.group("aurl"))
    if match.group("bare"):
        return _code(match.group("bare"))
    if match.group("html"):
        return "\\<"  # raw HTML (an <img> tag) shows as text where a renderer would pass it through
    return "\\["  # no other link, reference or reference definition can form: each shows as its text
