"""Plain records the history store hands out and takes in (no live database objects leave the store)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image as PILImage

from vlassist.conversation import Stats
from vlassist.images import LoadedImage, Sizing

# "running": an answer still being written (or cut off by a server that stopped; see mark_running_interrupted).
FINAL_STATUSES = ("complete", "interrupted", "error")
STATUSES = ("running", *FINAL_STATUSES)


@dataclass(frozen=True)
class ImageRef:
    """An image attached to a message: content hash, file name, format, original size, and model-input sizing."""

    sha256: str
    name: str
    format: str
    width: int
    height: int
    nbytes: int
    sizing: Sizing | None = None  # None until an answer about the image recorded the size the model saw

    @property
    def size(self) -> tuple[int, int]:
        """Original (width, height)."""
        return (self.width, self.height)


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored: role, text, status, and for answers the preset, options, stats and model."""

    id: int
    role: str
    text: str
    status: str
    created_at: float
    preset: str | None = None
    options: dict | None = None
    stats: Stats | None = None
    images: list[ImageRef] = field(default_factory=list)
    model_family: str | None = None  # the checkpoint's model_type, which box coordinates depend on
    model: str | None = None  # the checkpoint folder
    weights_format: str | None = None  # the weights' format when answered (bf16, awq, fp8…); None before 004
    adapter: str | None = None  # the LoRA adapter folder applied to the model, if any


@dataclass(frozen=True)
class ConversationSummary:
    """One line of the conversation list."""

    id: int
    title: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StoredConversation:
    """A whole conversation with its messages in order."""

    id: int
    owner: str
    title: str
    created_at: float
    updated_at: float
    messages: list[StoredMessage]


@dataclass(frozen=True)
class NewImage:
    """An image about to be stored: the original bytes, the decoded image and the user's file name."""

    data: bytes
    loaded: LoadedImage
    name: str


THUMBNAIL_SIDE = 320
TITLE_LENGTH = 80


def make_title(text_: str, fallback: str = "Image question") -> str:
    """A conversation title from the first question: its first line, shortened."""
    line = next((ln.strip() for ln in text_.splitlines() if ln.strip()), "")
    if not line:
        return fallback
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def make_thumbnail(image: PILImage.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG thumbnail whose longer side is at most `side` pixels."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return buf.getvalue()
