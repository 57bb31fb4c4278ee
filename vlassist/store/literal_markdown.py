"""Markdown that a viewer shows exactly as the text was written: code in fences, everything else escaped.

A model's answer is data (OCR text, JSON, an HTML page): written into a Markdown export as is, `2*3*4` would show
in italics and `<div>` would be run as HTML; escaped with HTML entities, fenced code would show `&lt;div`. So code
goes, unescaped, into a backtick fence longer than any backtick run it holds (nothing inside can close it), and
every other line is backslash-escaped, with its leading blanks written as character references, so a viewer shows
it literally and runs no HTML.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character: CommonMark lets each be escaped
_BACKTICKS = re.compile(r"`+")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_LANGUAGE = re.compile(r"[\w+#.-]+")


def fence(code: str, language: str = "") -> str:
    """`code` in a backtick fence longer than any backtick run inside it; `code` itself is not changed."""
    longest = max((len(run) for run in _BACKTICKS.findall(code)), default=0)
    marks = "`" * max(3, longest + 1)
    return f"{marks}{language}\n{code}\n{marks}"


def literal_line(line: str) -> str:
    """One line of text escaped so that a Markdown viewer shows it character for character."""
    stripped = line.lstrip(" \t")
    lead = "".join("&#9;" if c == "\t" else "&#32;" for c in line[: len(line) - len(stripped)])
    return lead + _PUNCTUATION.sub(r"\\\1", stripped)


def literal_text(text: str) -> str:
    """Plain text as Markdown that shows it literally: each line its own line (hard breaks), blank lines kept."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        last = i == len(lines) - 1 or not lines[i + 1].strip()
        if not line.strip():
            out.append("")
        else:
            out.append(literal_line(line) + ("" if last else "\\"))  # a trailing backslash is a hard line break
    return "\n".join(out)


def split_fences(text: str) -> list[tuple[str, str | None, str]]:
    """The text's parts in order: ("text", None, text) and ("code", language, code) for each fenced block.

    A fence left open runs to the end of the text, as Markdown reads it.
    """
    parts: list[tuple[str, str | None, str]] = []
    plain: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            marks, info = opening.group(1), opening.group(2).strip()
            closing = re.compile(rf"^ {{0,3}}{re.escape(marks[0])}{{{len(marks)},}}[ \t]*$")
            end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
            if plain:
                parts.append(("text", None, "\n".join(plain)))
                plain = []
            language = _LANGUAGE.match(info)
            parts.append(("code", language.group(0) if language else "", "\n".join(lines[i + 1:end])))
            i = end + 1
        else:
            plain.append(lines[i])
            i += 1
    if plain:
        parts.append(("text", None, "\n".join(plain)))
    return parts


def literal_markdown(text: str, *, raw: bool = False) -> str:
    """Markdown for a stored text: its fenced code kept as code, the rest shown literally; `raw`: all one fence."""
    if raw:
        return fence(text)
    blocks = []
    for kind, language, part in split_fences(text):
        if kind == "code":
            blocks.append(fence(part, language or ""))
        elif part.strip():
            blocks.append(literal_text(part.strip("\n")))
    return "\n\n".join(blocks)
