"""Chat-completions bodies → turns and options, stop strings, and the vlassist extension (boxes, stats)."""

from __future__ import annotations

import base64
import binascii
import json
import re

from vlassist.answers.parsing import parse_boxes
from vlassist.config import Settings
from vlassist.conversation import GenerationOptions, Stats, Turn
from vlassist.errors import VlassistError
from vlassist.images import LoadedImage, load_image

from .models import ChatRequest, ContentPart, Message

HIGH_DETAIL_TOKENS = 4096  # `detail: high` budget per image (or the server default, if that is larger)
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.I)
_WHITESPACE = re.compile(r"\s+")


class ApiError(Exception):
    """An error the client caused or must be told about, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        """The OpenAI-shaped error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def decode_image(url: str, where: str) -> LoadedImage:
    """A `data:` URL's bytes as an image; anything else is refused, because the server never fetches anything."""
    text = url.strip()
    if not text.lower().startswith("data:"):
        kind = "an http(s) URL" if text.lower().startswith(("http://", "https://")) else "a URL or file path"
        raise ApiError(400, f"{where}: {kind} was given, but this server never fetches anything (no network, no "
                            "files); send the image inline as a data: URL with base64 bytes", param=where,
                       code="image_url_not_allowed")
    head = _DATA_URL.match(text)
    if head is None or not head.group("b64"):
        raise ApiError(400, f"{where}: the data: URL must be base64 (data:image/png;base64,…)", param=where,
                       code="invalid_image")
    payload = text[head.end():]
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        # Some clients wrap base64 in lines; stripping whitespace costs a pass over the whole image (milliseconds
        # for a screenshot), so only a payload that failed as sent pays for it.
        try:
            data = base64.b64decode(_WHITESPACE.sub("", payload), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: the data: URL is not valid base64", param=where,
                           code="invalid_image") from None
    try:
        return load_image(data, where)
    except VlassistError as exc:
        raise ApiError(400, str(exc), param=where, code="invalid_image") from None


def _parts(message: Message) -> list[ContentPart]:
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [ContentPart(type="text", text=message.content)]
    return message.content


def to_turns(body: ChatRequest) -> tuple[list[Turn], list[str]]:
    """The conversation as turns (system text leads the first user turn) and each image's `detail`."""
    system: list[str] = []
    turns: list[Turn] = []
    details: list[str] = []
    for m, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        texts, images = [], []
        for p, part in enumerate(_parts(message)):
            where = f"messages[{m}].content[{p}]"
            if part.type == "text":
                texts.append(part.text or "")
            elif role != "user":
                raise ApiError(400, f"{where}: images are accepted in user messages only", param=where)
            elif part.image_url is None:
                raise ApiError(400, f"{where}: an image_url part needs an image_url object", param=where)
            else:
                images.append(decode_image(part.image_url.url, where))
                details.append(part.image_url.detail)
        text = "\n".join(t for t in texts if t)
        if role == "system":
            system.append(text)
        elif turns and turns[-1].role == role:  # two user messages in a row are one turn to the model
            turns[-1].text = "\n".join(t for t in (turns[-1].text, text) if t)
            turns[-1].images.extend(images)
        else:
            turns.append(Turn(role, text, images))
    # The engine's chat template has no system slot of its own here, so the instructions lead the first question.
    first_user = next((t for t in turns if t.role == "user"), None)
    if first_user is not None and any(system):
        first_user.text = "\n\n".join([*filter(None, system), first_user.text]).strip()
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must be a user message", param="messages")
    if not turns[-1].text.strip() and not turns[-1].images:
        raise ApiError(400, "the last user message is empty: ask a question or attach an image", param="messages")
    return turns, details


def _schema_text(body: ChatRequest) -> str | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return '{"type": "object"}'
    if fmt.json_schema is None:
        raise ApiError(400, "response_format json_schema needs a json_schema object", param="response_format")
    return json.dumps(fmt.json_schema.schema_)


def to_options(body: ChatRequest, details: list[str], settings: Settings) -> GenerationOptions:
    """Decoding and resolution options: greedy unless a temperature above 0 or a top_p asks for sampling."""
    from .params import option_fields  # params imports this module

    defaults = GenerationOptions()
    length = body.max_completion_tokens or body.max_tokens or defaults.max_new_tokens
    precise = body.temperature == 0 or (body.temperature is None and body.top_p is None)
    # One budget per request: `high` on any image raises it, `low` on all the detailed ones lowers it.
    chosen = {d for d in details if d != "auto"}
    budget, low_res = settings.max_image_tokens, False
    if "high" in chosen:
        budget = max(budget, HIGH_DETAIL_TOKENS)
    elif chosen == {"low"}:
        low_res = True
    return GenerationOptions(
        max_new_tokens=length, precise=precise,
        temperature=body.temperature if body.temperature is not None else defaults.temperature,
        top_p=body.top_p if body.top_p is not None else defaults.top_p,
        max_image_tokens=budget, low_res=low_res, min_new_tokens=min(body.min_tokens or 0, length),
        seed=body.seed, **option_fields(body, _schema_text(body)),
    )


def stop_strings(body: ChatRequest) -> list[str]:
    """The non-empty stop strings of a request (at most 4, as OpenAI allows)."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise ApiError(400, "stop takes at most 4 strings", param="stop")
    return [s for s in stops if s]


class StopCutter:
    """Passes text through until a stop string appears; holds back a tail that could be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""
        self.hit = False

    def feed(self, chunk: str) -> str:
        """The text that is safe to send now; sets `hit` (and drops the rest) once a stop string is seen."""
        if self.hit:
            return ""
        self.pending += chunk
        found = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if found:
            out, self.pending, self.hit = self.pending[:min(found)], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out

    def flush(self) -> str:
        """What was held back, once the answer has ended without a stop string."""
        out, self.pending = self.pending, ""
        return out


def boxes(text: str, family: str, stats: Stats) -> list[dict] | None:
    """Grounding boxes of the answer in each image's original pixels; None when there are none."""
    found = []
    for i, sizing in enumerate(stats.images):
        try:
            mapped = parse_boxes(text, family, sizing.input_size, sizing.original_size)
        except ValueError:  # an unknown family: no boxes rather than a failed answer
            return None
        if mapped:
            found.append({"image": i, "original_size": list(sizing.original_size),
                          "boxes": [b._asdict() for b in mapped]})
    return found or None


def finish_reason(stats: Stats, cut: bool) -> str:
    """OpenAI's finish_reason: `length` when the token limit ended it, else `stop`."""
    return "length" if stats.stop_reason == "length" and not cut else "stop"
