"""An Answerer on any OpenAI-compatible server (vlassist serve, vLLM, SGLang, LM Studio, Ollama), torch-free."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import openai

from vlassist.config import Settings
from vlassist.conversation import GenerationOptions, Reply, Stats, TokenLogprob, Turn
from vlassist.errors import ConfigError, VlassistError
from vlassist.families import FAMILIES
from vlassist.families import family as family_of
from vlassist.images import LoadedImage, Sizing, resize_for_model

from .sizing import MIN_PIXELS, plan_size

CONNECT_TIMEOUT_S = 10.0
DEFAULT_IMAGE_TOKENS = GenerationOptions().max_image_tokens


class BackendError(VlassistError):
    """The remote server cannot be reached or refused a request; the message says which and why."""


@dataclass
class RemoteInfo:
    """What the page and CLI show about the model: the fields of the engine's ModelInfo, for a server."""

    model_dir: str  # the server's model name (the page shows its last path part)
    family: str
    server: str
    latency_s: float  # one /v1/models round trip when connecting
    device: str = "remote"
    dtype: str = "server"
    attn: str = "server"
    attn_reason: str = ""
    factor: int = 28
    min_pixels: int = 3136
    load_s: float = 0.0
    parameters: int = 0
    decode: str = "server"
    decode_reason: str = ""
    warmup_s: float = 0.0
    versions: dict = field(default_factory=dict)


def guess_family(model: str) -> str | None:
    """The family a server's model name suggests (qwen3 → qwen3_vl, qwen2.5 → qwen2_5_vl, qwen2 → qwen2_vl)."""
    name = model.lower().replace("-", "_").replace(".", "_")
    for marker, found in (("qwen3", "qwen3_vl"), ("qwen2_5", "qwen2_5_vl"), ("qwen2", "qwen2_vl")):
        if marker in name:
            return found
    return None


def _base_url(url: str) -> str:
    # The openai client wants the API root; a bare http://host:port means its /v1.
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


def _refusal(exc: Exception, server: str) -> BackendError:
    if isinstance(exc, openai.APIStatusError):
        try:
            message = exc.response.json()["error"]["message"]
        except Exception:
            message = exc.message
        return BackendError(f"the server at {server} refused the request ({exc.status_code}): {message}")
    if isinstance(exc, openai.APIConnectionError):
        return BackendError(f"cannot reach the server at {server} ({exc.__cause__ or exc})")
    return BackendError(f"the server at {server} failed: {exc}")


class RemoteAnswerer:
    """Answers through a server's /v1/chat/completions; images go as PNG data URLs at the planned size."""

    busy = False  # the server has its own queue; this process never holds a device
    context_tokens: int | None = None  # the server's context length, when its model list says (max_model_len)

    def __init__(self, settings: Settings):
        server = _base_url(settings.backend_url or "")
        self.client = openai.OpenAI(base_url=server, api_key=settings.backend_key or "none", max_retries=0,
                                    timeout=openai.Timeout(settings.stream_timeout_s, connect=CONNECT_TIMEOUT_S))
        started = time.perf_counter()
        try:
            cards = list(self.client.models.list())
        except Exception as exc:
            raise _refusal(exc, server) from None
        latency = time.perf_counter() - started
        listed = [m.id for m in cards]
        model = settings.backend_model or (listed[0] if listed else None)
        if model is None:
            raise BackendError(f"the server at {server} lists no models; set VLASSIST_BACKEND_MODEL")
        # Another vlassist serve lists each model's family and context length (vLLM the context length only).
        card = next(((m.model_extra or {}) for m in cards if m.id == model), {})
        listed_family = card.get("family") if card.get("family") in FAMILIES else None
        if isinstance(card.get("max_model_len"), int):
            self.context_tokens = card["max_model_len"]
        name = settings.backend_family or listed_family or guess_family(model)
        if name is None:
            raise ConfigError(f"cannot tell the model family from the name {model!r}; set VLASSIST_BACKEND_FAMILY "
                              "to qwen2_vl, qwen2_5_vl or qwen3_vl")
        fam = family_of(name)
        self.model = model
        self.info = RemoteInfo(model_dir=model, family=name, server=server, latency_s=latency, factor=fam.factor,
                               min_pixels=MIN_PIXELS[name], attn_reason=f"decided by the server at {server}",
                               load_s=latency, versions={"openai": openai.__version__})

    def memory(self) -> dict:
        """No local device memory is used."""
        return {}

    def plan(self, image: LoadedImage | tuple[int, int], options: GenerationOptions = GenerationOptions()) -> Sizing:
        """The size this image is sent at (and so the model sees it at) under `options`."""
        size = image.size if isinstance(image, LoadedImage) else image
        return plan_size(size, self.info.family, options.max_image_tokens, options.low_res)

    def stream(self, turns: Sequence[Turn], options: GenerationOptions = GenerationOptions(),
               stop: threading.Event | None = None, on_queued: Callable[[], None] | None = None) -> Reply:
        """Answer the last user turn on the server: text chunks as they arrive, stats at the end."""
        stop = stop or threading.Event()
        stats = Stats()
        logprobs = [] if options.logprobs is not None else None
        return Reply(self._run(list(turns), options, stop, stats, logprobs), stats, stop, logprobs)

    def _messages(self, turns: list[Turn], options: GenerationOptions) -> tuple[list[dict], list[Sizing]]:
        detail = "low" if options.low_res else "high" if options.max_image_tokens > DEFAULT_IMAGE_TOKENS else "auto"
        messages, sizings = [], []
        for turn in turns:
            if turn.role == "assistant":
                messages.append({"role": "assistant", "content": turn.text})
                continue
            parts = []
            for image in turn.images:
                sizing = self.plan(image, options)
                sizings.append(sizing)
                # Resized here, so the server's processor keeps the size: boxes map back exactly.
                buf = io.BytesIO()
                resize_for_model(image.image, sizing).save(buf, "PNG")
                url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                parts.append({"type": "image_url", "image_url": {"url": url, "detail": detail}})
            parts.append({"type": "text", "text": turn.text})
            messages.append({"role": "user", "content": parts})
        return messages, sizings

    def _request(self, turns: list[Turn], options: GenerationOptions) -> tuple[dict, list[Sizing]]:
        messages, sizings = self._messages(turns, options)
        kwargs: dict = {"model": self.model, "messages": messages, "stream": True, "max_tokens": options.max_new_tokens,
                        "stream_options": {"include_usage": True}}
        extra: dict = {}
        if options.precise:
            kwargs["temperature"] = 0.0
        else:
            kwargs.update(temperature=options.temperature, top_p=options.top_p)
            extra["repetition_penalty"] = options.repetition_penalty  # vLLM, SGLang and vlassist accept it
        if options.seed is not None:
            kwargs["seed"] = options.seed
        if options.min_new_tokens:
            extra["min_tokens"] = options.min_new_tokens
        if options.json_schema is not None:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": json.loads(options.json_schema), "strict": True}}
        _forward_sampling(options, kwargs, extra)
        if extra:
            kwargs["extra_body"] = extra
        return kwargs, sizings

    def _run(self, turns: list[Turn], options: GenerationOptions, stop: threading.Event, stats: Stats,
             logprobs: list[TokenLogprob] | None = None) -> Iterator[str]:
        started = time.perf_counter()
        kwargs, stats.images = self._request(turns, options)
        stats.visual_tokens = sum(s.visual_tokens for s in stats.images)
        try:
            response = self.client.chat.completions.create(**kwargs)
        except Exception as exc:
            raise _refusal(exc, self.info.server) from None
        ended = threading.Event()

        def close_on_stop() -> None:  # Stop closes the stream even while no chunk arrives (a long prefill)
            while not ended.is_set():
                if stop.wait(0.05):
                    response.close()
                    return

        threading.Thread(target=close_on_stop, name="vlassist-remote-stop", daemon=True).start()
        chunks, finish = 0, None
        try:
            for chunk in response:
                if stop.is_set():
                    break
                if chunk.usage is not None:
                    stats.prompt_tokens = chunk.usage.prompt_tokens
                    stats.new_tokens = chunk.usage.completion_tokens
                server_stats = (getattr(chunk, "model_extra", None) or {}).get("vlassist") or {}
                stats.reused_tokens = server_stats.get("stats", {}).get("reused_tokens", stats.reused_tokens)
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    if logprobs is not None and choice.logprobs is not None:
                        logprobs.extend(_logprobs(choice.logprobs.content or []))
                    if choice.delta and choice.delta.content:
                        if not chunks:
                            stats.ttft_s = time.perf_counter() - started
                        chunks += 1
                        yield choice.delta.content
        except Exception as exc:
            if not stop.is_set():
                raise _refusal(exc, self.info.server) from None
        finally:
            ended.set()
            response.close()
            stats.total_s = time.perf_counter() - started
            stats.new_tokens = stats.new_tokens or chunks
            decode_s = stats.total_s - stats.ttft_s
            stats.tokens_per_s = (stats.new_tokens - 1) / decode_s if stats.new_tokens > 1 and decode_s > 0 else 0.0
            stats.stop_reason = "stopped" if stop.is_set() else "length" if finish == "length" else "eos"


def _forward_sampling(options: GenerationOptions, kwargs: dict, extra: dict) -> None:
    """Penalties, bias, logprobs and regex/choice grammars as the server's request fields (OpenAI's, then vLLM's)."""
    if options.frequency_penalty:
        kwargs["frequency_penalty"] = options.frequency_penalty
    if options.presence_penalty:
        kwargs["presence_penalty"] = options.presence_penalty
    if options.logit_bias:
        kwargs["logit_bias"] = {str(token): amount for token, amount in options.logit_bias}
    if options.logprobs is not None:
        kwargs.update(logprobs=True, top_logprobs=options.logprobs)
    if options.top_k:
        extra["top_k"] = options.top_k
    if options.min_p:
        extra["min_p"] = options.min_p
    if options.penalize_greedy:
        extra["repetition_penalty"] = options.repetition_penalty
    if options.regex is not None:
        extra["structured_outputs"] = {"regex": options.regex}
    if options.choice is not None:
        extra["structured_outputs"] = {"choice": list(options.choice)}


def _logprobs(entries) -> list[TokenLogprob]:
    """The server's streamed logprobs entries as TokenLogprob."""
    return [TokenLogprob(token=e.token, logprob=e.logprob, bytes=list(e.bytes or e.token.encode()),
                         top=[TokenLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes or t.token.encode()))
                              for t in e.top_logprobs or []])
            for e in entries]
