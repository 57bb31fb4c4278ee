"""Checks on a chat request that pydantic's types do not express: seed range, stop strings, text encoding."""

from __future__ import annotations

import re

from pydantic import BaseModel

from .convert import ApiError
from .stops import MAX_STOP_CHARS, MAX_STOPS

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a 64-bit signed integer, as the random generators take
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.@+\-]+){2,}[/\\]?")  # /usr/lib/…/x.py, C:\…\x.py


def check_request(body: BaseModel) -> None:
    """Raise ApiError(400) naming the field for a seed out of range, too many or too long stops, or a lone surrogate."""
    seed = getattr(body, "seed", None)
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise ApiError(400, f"seed: {seed} is out of range; use a whole number from {SEED_MIN} to {SEED_MAX}",
                       param="seed", code="invalid_value")
    stop = getattr(body, "stop", None)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop: {len(stops)} strings given; at most {MAX_STOPS} are allowed", param="stop",
                       code="invalid_value")
    for i, text in enumerate(stops):
        if len(text) > MAX_STOP_CHARS:
            raise ApiError(400, f"stop[{i}] is {len(text):,} characters long; a stop string may have at most "
                                f"{MAX_STOP_CHARS:,}", param=f"stop[{i}]", code="invalid_value")
    check_encoding(body.model_dump(exclude_none=True))


def check_encoding(value, where: str = "") -> None:
    """Raise ApiError(400) naming the field if any string holds a lone surrogate (it cannot be UTF-8 text)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = f"\\u{ord(value[exc.start]):04x}"
            raise ApiError(400, f"{where or 'body'}: the text holds an unpaired surrogate ({code} at character "
                                f"{exc.start}), which is not valid Unicode; send UTF-8 text",
                           param=where or None, code="invalid_encoding") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_encoding(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_encoding(item, f"{where}[{i}]")


def public_message(text: str) -> str:
    """An error message fit for a client: file system paths (the server's layout) become `<path>`."""
    return _PATH.sub("<path>", text)
