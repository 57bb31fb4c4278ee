"""Export a stored conversation as Markdown, JSON, or a zip of both with the original images."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Callable
from datetime import datetime

from vlassist.store.literal_markdown import literal_markdown, literal_text
from vlassist.store.records import ImageRef, StoredConversation

FetchImage = Callable[[str], "bytes | None"]
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "GIF": "gif"}
# Answers whose whole text is data (read text, JSON, tables, a page, boxes): exported as one fence, as stored.
RAW_PRESETS = frozenset({"ocr", "json", "table", "chart", "html", "grounding"})
FORMAT_VERSION = 2  # 2: the model beside the stats, not inside them; each image's model-input size


def image_filename(ref: ImageRef) -> str:
    """The name an image gets inside an export: its hash, so the same image is written once."""
    return f"{ref.sha256[:16]}.{EXTENSIONS.get(ref.format, 'bin')}"


def slug(title: str) -> str:
    """A file-name-safe version of a conversation title."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()
    return cleaned[:60] or "conversation"


def _when(ts: float) -> str:
    """Local time with its offset from UTC, e.g. 2026-12-04 23:05 +01:00."""
    moment = datetime.fromtimestamp(ts).astimezone()
    offset = moment.strftime("%z")
    return f"{moment:%Y-%m-%d %H:%M} {offset[:3]}:{offset[3:]}"


def _safe(text: str) -> str:
    # Markdown viewers render inline HTML and emphasis: titles and file names must show as typed, never run.
    return literal_text(" ".join(text.split("\n")))


def to_markdown(conversation: StoredConversation, image_link: Callable[[ImageRef], str] | None = None) -> str:
    """The conversation as Markdown; each image is linked through `image_link` (default: images/<file>)."""
    link = image_link or (lambda ref: f"images/{image_filename(ref)}")
    lines = [f"# {_safe(conversation.title)}", "", f"*Started {_when(conversation.created_at)}*", ""]
    for message in conversation.messages:
        heading = "You" if message.role == "user" else "Assistant"
        if message.role == "assistant" and message.status != "complete":
            heading += f" ({message.status})"
        lines += [f"## {heading}", ""]
        for ref in message.images:
            lines.append(f"![{_safe(ref.name)}]({link(ref)})  ")
            lines.append(f"*{_safe(ref.name)}: {ref.width}×{ref.height} {ref.format}*")
            lines.append("")
        if message.text:
            raw = message.role == "assistant" and message.preset in RAW_PRESETS
            lines += [literal_markdown(message.text, raw=raw), ""]
        if message.status == "error" and message.stats and message.stats.error:
            lines += [f"> Error: {_safe(message.stats.error)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_dict(conversation: StoredConversation, fetch: FetchImage | None = None) -> dict:
    """A JSON-ready dict of the conversation; with `fetch`, each image's bytes are embedded as base64."""
    messages = []
    for message in conversation.messages:
        images = []
        for ref in message.images:
            item = {"sha256": ref.sha256, "name": ref.name, "format": ref.format, "width": ref.width,
                    "height": ref.height, "bytes": ref.nbytes, "file": f"images/{image_filename(ref)}",
                    "input_size": list(ref.sizing.input_size) if ref.sizing else None,
                    "visual_tokens": ref.sizing.visual_tokens if ref.sizing else None}
            if fetch is not None:
                data = fetch(ref.sha256)
                item["data_base64"] = base64.b64encode(data).decode("ascii") if data is not None else None
            images.append(item)
        messages.append({"role": message.role, "text": message.text, "status": message.status,
                         "created_at": message.created_at, "preset": message.preset, "options": message.options,
                         "stats": message.stats.to_dict() if message.stats else None,
                         "model_family": message.model_family, "model": message.model,
                         "weights_format": message.weights_format, "adapter": message.adapter, "images": images})
    return {"format": "vlassist-conversation", "version": FORMAT_VERSION, "id": conversation.id,
            "title": conversation.title, "created_at": conversation.created_at,
            "updated_at": conversation.updated_at, "messages": messages}


def to_json(conversation: StoredConversation, fetch: FetchImage | None = None) -> str:
    """The conversation as indented JSON; with `fetch`, images embedded as base64."""
    return json.dumps(to_dict(conversation, fetch), indent=2, ensure_ascii=False)


def to_zip(conversation: StoredConversation, fetch: FetchImage) -> bytes:
    """A zip with conversation.md, conversation.json and each original image once under images/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conversation.md", to_markdown(conversation))
        archive.writestr("conversation.json", to_json(conversation))
        written: set[str] = set()
        for message in conversation.messages:
            for ref in message.images:
                name = image_filename(ref)
                data = fetch(ref.sha256) if name not in written else None
                if data is not None:
                    # Images are already compressed; storing them avoids wasted CPU.
                    archive.writestr(f"images/{name}", data, compress_type=zipfile.ZIP_STORED)
                    written.add(name)
    return buf.getvalue()
