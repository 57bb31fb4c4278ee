"""The seam between front ends and the engine: turns in, text chunks and then stats out."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, Protocol

from vlassist.images import LoadedImage, Sizing

Role = Literal["user", "assistant", "system", "tool"]


@dataclass
class ToolCall:
    """One function call an assistant turn made: its id, the function's name and its arguments as JSON text."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass
class Turn:
    """One message of a conversation: text and zero or more images (images only on user turns).

    `parts` keeps text and images in the order they were sent (`Turn.of_parts` fills `text` and `images` from
    it); without it the images come first, then the text. A `system` turn holds instructions, an assistant turn
    may carry `tool_calls`, and a `tool` turn is one call's result (`tool_call_id`).
    """

    role: Role
    text: str = ""
    images: list[LoadedImage] = field(default_factory=list)
    parts: list[str | LoadedImage] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None

    @classmethod
    def of_parts(cls, role: Role, parts: Sequence[str | LoadedImage], **extra) -> Turn:
        """A turn whose text and images stand in `parts`' order; `text` joins its text parts with newlines."""
        texts = [part for part in parts if isinstance(part, str)]
        images = [part for part in parts if not isinstance(part, str)]
        return cls(role, "\n".join(t for t in texts if t), images, list(parts), **extra)

    def ordered_parts(self) -> list[str | LoadedImage]:
        """Text and images in the order the model sees them."""
        return list(self.parts) if self.parts is not None else [*self.images, self.text]


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode an answer and at which resolution to show the images to the model."""

    max_new_tokens: int = 1024
    precise: bool = True  # greedy decoding: what OCR and JSON extraction want
    temperature: float = 0.7
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    max_image_tokens: int = 1280
    low_res: bool = False
    min_new_tokens: int = 0  # benchmarks force answer length with this
    seed: int | None = None
    use_cache: bool = True  # reuse prefix KV caches across turns where the engine can
    json_schema: str | None = None  # constrain the answer to JSON valid against this JSON Schema (text)
    stop_strings: tuple[str, ...] = ()  # the answer ends once its text contains one of these (it is kept in)
    frequency_penalty: float = 0.0  # subtracted from a token's logit once per time it is in the answer
    presence_penalty: float = 0.0  # subtracted once from every token already in the answer
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit) pairs
    top_k: int = 0  # sampling keeps the k likeliest tokens; 0: all
    min_p: float = 0.0  # sampling drops tokens below min_p × the likeliest one's probability
    penalize_greedy: bool = False  # apply repetition_penalty when decoding greedily too (the API, as vLLM does)
    logprobs: int | None = None  # report each answer token's log-probability and this many alternatives
    regex: str | None = None  # constrain the answer to match this regular expression
    choice: tuple[str, ...] | None = None  # constrain the answer to exactly one of these strings
    tools: str | None = None  # JSON list of OpenAI-style function tools the chat template shows the model
    tool_choice: Literal["auto", "none", "required"] = "auto"  # "required": the answer is one or more calls
    forced_tool: str | None = None  # the one function the answer must call (OpenAI's named tool_choice)
    parallel_tool_calls: bool = True  # with a required or forced call: may the answer make more than one

    def sampling_kwargs(self) -> dict:
        """Keyword arguments for transformers' generate() that select the decoding strategy."""
        if self.precise:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                    "repetition_penalty": 1.0}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or None,
                "min_p": self.min_p or None, "repetition_penalty": self.repetition_penalty}


StopReason = Literal["eos", "length", "stopped", "error", "stop_string"]


@dataclass
class Stats:
    """What one answer cost: tokens, timings and why it ended."""

    prompt_tokens: int = 0
    visual_tokens: int = 0
    new_tokens: int = 0
    reused_tokens: int = 0
    queued_s: float = 0.0
    ttft_s: float = 0.0
    total_s: float = 0.0
    tokens_per_s: float = 0.0
    stop_reason: StopReason = "eos"
    images: list[Sizing] = field(default_factory=list)
    error: str | None = None
    batch_rows: int = 1  # the most answers that shared one of this answer's decode steps (continuous batching)

    def to_dict(self) -> dict:
        """Plain-JSON form for storage and `--json-stats`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> Stats:
        """Stats from their stored form; unknown keys (older or newer versions wrote them) are ignored."""
        data = data if isinstance(data, Mapping) else {}
        known = {f.name for f in fields(cls)} - {"images"}
        stats = cls(**{key: value for key, value in data.items() if key in known})
        stats.images = [sizing for item in data.get("images") or [] if (sizing := _sizing(item)) is not None]
        return stats


def _sizing(item) -> Sizing | None:
    # A malformed entry (hand-edited or half-written) is skipped rather than making the whole answer unreadable.
    try:
        (ow, oh), (iw, ih) = item["original_size"], item["input_size"]
        return Sizing((int(ow), int(oh)), (int(iw), int(ih)), int(item.get("visual_tokens", 0)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@dataclass
class TokenLogprob:
    """One answer token's log-probability under the model, with its likeliest alternatives (OpenAI's shape)."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TokenLogprob] = field(default_factory=list)


class Reply:
    """An answer being generated: iterate for text chunks; `.text` and `.stats` are complete afterwards."""

    def __init__(self, chunks: Iterator[str], stats: Stats, stop: threading.Event,
                 logprobs: list[TokenLogprob] | None = None):
        self._chunks = chunks
        self.stats = stats
        self.stop_event = stop
        self.text = ""
        self.logprobs = logprobs  # grows as tokens are chosen, when options.logprobs asked for them

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._chunks:
                self.text += chunk
                yield chunk
        finally:
            # A caller that stops reading (closed generator, Streamlit rerun) must free the engine now, not at GC.
            close = getattr(self._chunks, "close", None)
            if close:
                close()

    def stop(self) -> None:
        """Ask the engine to end this answer early; the text so far is kept."""
        self.stop_event.set()

    def consume(self, on_chunk: Callable[[str], None] | None = None) -> str:
        """Run to the end, passing each chunk to `on_chunk`, and return the whole text."""
        for chunk in self:
            if on_chunk:
                on_chunk(chunk)
        return self.text


class Answerer(Protocol):
    """Something that answers conversations (the local engine, later a remote server): what front ends type."""

    def plan(self, image: LoadedImage | tuple[int, int], options: GenerationOptions = ...) -> Sizing:
        """The model-input size and visual tokens an image will get under `options`."""
        ...

    def count_prompt_tokens(self, turns: Sequence[Turn], options: GenerationOptions = ...) -> int:
        """Tokens (text and visual) the prompt for `turns` takes, without running the model."""
        ...

    @property
    def context_tokens(self) -> int:
        """The most tokens (prompt and answer together) the model can attend to."""
        ...

    def stream(self, turns: Sequence[Turn], options: GenerationOptions = ..., stop: threading.Event | None = None,
               on_queued: Callable[[], None] | None = None) -> Reply:
        """Answer the last user turn of `turns`: text chunks, then stats."""
        ...
