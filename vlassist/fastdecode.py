"""A fixed-size KV cache whose decode step is compiled and captured as one CUDA graph, warmed up at load."""

from __future__ import annotations

import logging
import time

import torch
from transformers import StaticCache

from .decode import decode_step, new_cache, prefill, rope_positions

log = logging.getLogger(__name__)

MODES = ("compile", "graph", "static")  # fastest first: each falls back to the next if it fails


class StaticDecoder:
    """Decodes one token at a time into preallocated K/V buffers, so every step has the same shapes."""

    def __init__(self, model, max_tokens: int, mode: str):
        text = model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.model, self.max_tokens, self.mode = model, max_tokens, mode
        self.cache = StaticCache(config=model.config, max_cache_len=max_tokens)
        self.cache.early_initialization(1, text.num_key_value_heads, head_dim, model.dtype, model.device)
        device = model.device
        self.mask = torch.zeros(1, 1, 1, max_tokens, dtype=torch.bool, device=device)  # keys the new token sees
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)  # (1, 1) token being fed
        self.positions = torch.zeros(4, 1, 1, dtype=torch.long, device=device)  # (4, 1, 1) its positions
        self.logits: torch.Tensor | None = None  # (1, V) output of the captured graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self._fn = self._step
        if mode == "compile":
            # Only the hot step is compiled; the graph below removes the launch overhead of what is left.
            self._fn = torch.compile(self._step, dynamic=False)

    def _step(self) -> torch.Tensor:
        return decode_step(self.model, self.token, self.positions, self.cache, self.mask)

    def fits(self, tokens: int) -> bool:
        """True if a prompt plus answer of `tokens` fits the buffers."""
        return tokens <= self.max_tokens

    def start(self, cache, length: int) -> None:
        """Copy the first `length` tokens of a prefilled cache into the buffers."""
        for mine, theirs in zip(self.cache.layers, cache.layers if length else []):
            mine.keys[:, :, :length].copy_(theirs.keys[:, :, :length])  # (1, kv_heads, length, head_dim)
            mine.values[:, :, :length].copy_(theirs.values[:, :, :length])
        for mine in self.cache.layers:
            mine.cumulative_length.fill_(length)
        self.mask.zero_()
        self.mask[..., :length] = True

    def step(self, token: torch.Tensor, index: int, delta: int) -> torch.Tensor:
        """Feed `token` (1,) at cache slot `index`; logits of the next token (1, V), valid until the next step."""
        self.token.copy_(token.view(1, 1))
        self.positions[0].fill_(index)
        self.positions[1:].fill_(index + delta)
        self.mask[..., index] = True
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        return self._fn()

    def layers(self, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the first `length` cached tokens' K/V per layer, (1, kv_heads, length, head_dim) each."""
        return [(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone())
                for layer in self.cache.layers]

    def capture(self) -> None:
        """Run the step a few times (compiling it if asked), then record it as a CUDA graph."""
        self.start(new_cache(self.model), 0)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for index in range(3):
                self.step(self.token[0], index, 0)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._fn()
        self.graph = graph
        torch.cuda.synchronize()


def warm_up_prefill(model) -> None:
    """One small prefill with an image, so kernel selection and allocator growth happen at load, not on a question."""
    vision = model.config.vision_config
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    grid = torch.tensor([[1, 4, 4]], device=model.device)  # 16 patches -> 4 image tokens after merging 2x2
    ids = [model.config.vision_start_token_id] + [model.config.image_token_id] * 4 + [
        model.config.vision_end_token_id] * 2
    input_ids = torch.tensor([ids], device=model.device)  # (1, 7)
    types = (input_ids == model.config.image_token_id).long()
    positions, _ = rope_positions(model, input_ids, types, grid)
    pixels = torch.randn(16, patch, device=model.device)
    prefill(model, input_ids, positions, new_cache(model), pixels, grid)


def build_decoder(model, requested: str, max_tokens: int) -> tuple[StaticDecoder | None, str, str, float]:
    """The fastest decoder that works here: (decoder or None, mode, why, warm-up seconds).

    requested: auto|compile|graph|static|off. On CUDA, auto tries a compiled graph, then a plain graph, then
    the static cache without a graph; anything that fails is logged and the next one is tried.
    """
    started = time.perf_counter()
    cuda = model.device.type == "cuda"
    if requested == "off":
        return None, "eager", "set by VLASSIST_COMPILE=off", 0.0
    if requested in ("auto", "compile", "graph") and not cuda:
        why = "CPU" if requested == "auto" else f"VLASSIST_COMPILE={requested} needs a CUDA GPU"
        return None, "eager", f"{why}; decoding eagerly with a growing cache", 0.0
    modes = MODES if requested in ("auto", "compile") else MODES[MODES.index(requested):]
    failures = []
    with torch.inference_mode():
        if cuda:
            warm_up_prefill(model)
        for mode in modes:
            try:
                decoder = StaticDecoder(model, max_tokens, mode)
                if mode != "static":
                    decoder.capture()
                reason = "; ".join(failures + [f"{mode} decode step warmed up"])
                return decoder, mode, reason, time.perf_counter() - started
            except Exception as exc:  # fall back to the next mode, and say why
                failures.append(f"{mode} failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]})"
                                if str(exc).strip() else f"{mode} failed ({type(exc).__name__})")
                log.warning("decode mode %s failed, falling back: %s", mode, failures[-1])
    return None, "eager", "; ".join(failures), time.perf_counter() - started
