"""A request's images admitted from their headers: decoded pixels and visual tokens are checked before any decoding."""

from __future__ import annotations

import base64
import binascii
import re

from vlassist.conversation import Answerer, GenerationOptions
from vlassist.errors import ImageError
from vlassist.images import Fit, ImageHeader, probe_image
from vlassist.service.limits import LimitError, prompt_limit

from .convert import ApiError

HEAD_CHARS = 256 * 1024  # base64 characters read for a header: ~192 KB covers any EXIF block before a JPEG's size
_DATA_URL = re.compile(r"\s*data:[^,]*;base64,", re.I)
_WHITESPACE = re.compile(r"\s+")


def image_parts(body) -> list[tuple[str, str, str]]:
    """(where, url, detail) of every image part of the request's user messages, in order."""
    found = []
    for m, message in enumerate(body.messages):
        if message.role != "user" or isinstance(message.content, str) or not message.content:
            continue
        for p, part in enumerate(message.content):
            if part.type == "image_url" and part.image_url is not None:
                found.append((f"messages[{m}].content[{p}]", part.image_url.url, part.image_url.detail))
    return found


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(_WHITESPACE.sub("", text))
    except (binascii.Error, ValueError):
        return None


def _header(url: str, where: str) -> ImageHeader | None:
    """The image's header from the start of its base64 payload; None for what the converter refuses anyway."""
    head = _DATA_URL.match(url)
    if head is None:
        return None
    payload = url[head.end():]
    total = len(payload) * 3 // 4  # the decoded size, near enough for the bytes-per-pixel plausibility check
    start = _WHITESPACE.sub("", payload[:HEAD_CHARS])
    data = _b64(start[:len(start) // 4 * 4])
    if data is None:
        return None
    try:
        return probe_image(data, where, nbytes=total)
    except ImageError:
        if len(payload) <= HEAD_CHARS:
            raise
    data = _b64(payload)  # the header lies further in (a TIFF's may be at the end)
    return probe_image(data, where, nbytes=total) if data is not None else None


def check_images(body, answerer: Answerer, options: GenerationOptions, max_prompt_tokens: int,
                 max_pixels: int) -> Fit:
    """Refuse (LimitError) a request whose images decode to over `max_pixels` or need more visual tokens than fit.

    Nothing is decoded: sizes come from the headers. Returns the fit (original size → model-input size) to
    decode the images with, so that only the model-input image is kept.
    """
    headers = []
    for where, url, _ in image_parts(body):
        try:
            header = _header(url, where)
        except ImageError as exc:
            raise ApiError(400, str(exc), param=where, code="invalid_image") from None
        if header is not None:
            headers.append(header)
    pixels = sum(h.pixels for h in headers)
    if pixels > max_pixels:
        raise LimitError(f"the {len(headers)} images decode to {pixels / 1e6:,.0f} MP together, over the limit of "
                         f"{max_pixels / 1e6:,.0f} MP for one request; send fewer images or smaller ones")
    tokens = sum(answerer.plan(h.size, options).visual_tokens for h in headers)
    limit = prompt_limit(answerer, options, max_prompt_tokens)
    if tokens > limit:
        raise LimitError(f"the {len(headers)} images need {tokens:,} visual tokens, over the prompt limit of "
                         f"{limit:,}; attach fewer images, or use a lower resolution (detail: low)")
    return lambda size: answerer.plan(size, options).input_size
