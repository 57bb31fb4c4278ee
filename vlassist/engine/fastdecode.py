"""A fixed-size KV cache whose decode step is compiled and captured as one CUDA graph, warmed up at load."""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch
from torch.nn.attention import sdpa_kernel
from transformers import StaticCache

from vlassist.engine import decode
from vlassist.engine.decode import decode_step, new_cache, prefill, rope_positions

log = logging.getLogger(__name__)

MODES = ("compile", "graph", "static")  # fastest first: each falls back to the next if it fails


BUCKETS = (2048, 4096)  # decode contexts captured besides VLASSIST_DECODE_CONTEXT itself, each a CUDA graph
# New-token counts of a follow-up that is prefilled straight into the static buffers (padded up to the bucket);
# eager prefill of a few dozen tokens is launch-bound, so each (bucket, decode context) is one CUDA graph.
PREFILL_BUCKETS = (16, 32, 64, 128)


class StaticDecoder:
    """Decodes one token at a time into preallocated K/V buffers, so every step has the same shapes.

    Attention in a static step reads every slot of its buffer, filled or not, so a request is decoded in the
    smallest of a few context sizes ("buckets") that holds its prompt and answer. All buckets are views of the
    first slots of one buffer, so no K/V is copied between them; each has its own captured graph.
    """

    def __init__(self, model, max_tokens: int, mode: str, buckets=BUCKETS, prefill_buckets=PREFILL_BUCKETS):
        text = model.config.get_text_config()
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.model, self.max_tokens, self.mode = model, max_tokens, mode
        self.cache = StaticCache(config=model.config, max_cache_len=max_tokens)
        self.cache.early_initialization(1, text.num_key_value_heads, self.head_dim, model.dtype, model.device)
        self.sizes = sorted({n for n in buckets if n < max_tokens} | {max_tokens})
        self.caches = {n: self.cache if n == max_tokens else self._window(n) for n in self.sizes}
        device = model.device
        self.mask = torch.zeros(1, 1, 1, max_tokens, dtype=torch.bool, device=device)  # keys the new token sees
        self.masks = {n: self.mask[..., :n] for n in self.sizes}  # (1, 1, 1, n) views
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)  # (1, 1) token being fed
        self.positions = torch.zeros(4, 1, 1, dtype=torch.long, device=device)  # (4, 1, 1) its positions
        self.size = max_tokens  # the bucket the current request decodes in
        self.logits: dict[int, torch.Tensor] = {}  # bucket -> (1, V) output of its captured graph
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # Greedy decoding chooses each token on the device: out[i] is the token fed at cache slot i, written by
        # the step before it, so consecutive steps need no host round trip and the host reads tokens in blocks.
        vocab = model.config.get_text_config().vocab_size
        self.out = torch.zeros(max_tokens + 1, dtype=torch.long, device=device)  # (max_tokens + 1,)
        self.host = torch.zeros(max_tokens + 1, dtype=torch.long, pin_memory=device.type == "cuda")
        self.ban = torch.zeros(vocab, dtype=torch.bool, device=device)  # (V,) end-of-answer tokens
        self.until = torch.zeros((), dtype=torch.long, device=device)  # ban them while the sequence is shorter
        self.greedy_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.greedy_note = ""  # why in-graph greedy is off, if it is
        # Short prefill: new tokens padded to a bucket; meta = (start slot, M-RoPE delta, end slot) on the device.
        self.prefill_sizes = tuple(n for n in sorted(prefill_buckets) if n < max_tokens)
        self.pf_ids = torch.zeros(1, max(self.prefill_sizes, default=1), dtype=torch.long, device=device)  # (1, P)
        self.pf_meta = torch.zeros(3, dtype=torch.long, device=device)  # (3,)
        self.pf_logits: dict[tuple[int, int], torch.Tensor] = {}  # (P, bucket) -> (1, V)
        self.pf_graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.prefill_note = ""  # why captured short prefill is off, if it is
        self.prefill_s = 0.0  # seconds spent capturing the short-prefill graphs
        self.held: np.ndarray | None = None  # fingerprint tokens whose K/V fill slots [0, len) of the buffers
        self._fn = self._step
        if mode == "compile":
            # Only the hot step is compiled (once per bucket); the graphs remove the launch overhead of the rest.
            self._fn = torch.compile(self._step, dynamic=False)

    def _window(self, n: int) -> StaticCache:
        """A StaticCache whose layers are the first n slots of the full buffers, sharing their write position."""
        window = StaticCache(config=self.model.config, max_cache_len=n)
        for mine, full in zip(window.layers, self.cache.layers):
            for name in ("dtype", "device", "batch_size", "num_heads", "k_head_dim", "v_head_dim"):
                setattr(mine, name, getattr(full, name))
            mine.keys, mine.values = full.keys[:, :, :n], full.values[:, :, :n]  # (1, kv_heads, n, head_dim)
            mine.cumulative_length = full.cumulative_length  # one write position for every bucket
            mine.is_initialized = True
        return window

    def _step(self, cache, mask) -> torch.Tensor:
        return decode_step(self.model, self.token, self.positions, cache, mask)

    def _greedy(self, size: int) -> None:
        """One greedy step on device state alone: feed self.token at slot positions[0], write the next one.

        The same ops as the host path (MinNewTokens' -inf, then argmax over the step's logits), so tokens match.
        """
        index = self.positions[0].view(1)  # (1,) cache slot of the token being fed
        self.mask.index_fill_(3, index, True)
        logits = self._fn(self.caches[size], self.masks[size])  # (1, V) float32
        logits = logits.masked_fill(self.ban & (index + 1 < self.until), float("-inf"))
        chosen = logits.argmax(dim=-1)  # (1,)
        self.out.index_copy_(0, index + 1, chosen)
        self.token.copy_(chosen.view(1, 1))
        self.positions.add_(1)

    def fits(self, tokens: int) -> bool:
        """True if a prompt plus answer of `tokens` fits the buffers."""
        return tokens <= self.max_tokens

    def start(self, cache, length: int, total: int | None = None) -> None:
        """Copy the first `length` tokens of a prefilled cache into the buffers; decode in the bucket for `total`."""
        self.size = next(n for n in self.sizes if n >= (total or self.max_tokens))
        self.held = None
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
        graph = self.graphs.get(self.size)
        if graph is not None:
            graph.replay()
            return self.logits[self.size]
        return self._fn(self.caches[self.size], self.masks[self.size])

    def takes(self, count: int, start: int, total: int) -> bool:
        """True if `count` new tokens after `start` cached ones can be prefilled here (a graph, or uncaptured)."""
        p = next((n for n in self.prefill_sizes if n >= count), None)
        if p is None or start < 1 or count < 1 or max(total, start + p) > self.max_tokens:
            return False
        size = next(n for n in self.sizes if n >= max(total, start + p))
        return (p, size) in self.pf_graphs or (not self.graphs and not self.prefill_note)

    def prefill_short(self, new_ids: torch.Tensor, tokens: np.ndarray, start: int, delta: int, prefix, total: int):
        """Prefill new_ids (1, S) at slots start.. straight into the buffers; logits of the last one, (1, V).

        `prefix` holds the stored per-layer K/V of the first `start` fingerprint `tokens`; it is copied in only
        when the buffers do not already hold them (a follow-up usually finds its own conversation still there).
        Decoding then continues in the bucket for `total`.
        """
        count = new_ids.shape[1]
        p = next(n for n in self.prefill_sizes if n >= count)
        self.size = next(n for n in self.sizes if n >= max(total, start + p))
        held, self.held = self.held, None
        if held is None or len(held) < start or not np.array_equal(held[:start], tokens[:start]):
            for mine, (keys, values) in zip(self.cache.layers, prefix):
                mine.keys[:, :, :start].copy_(keys[:, :, :start])  # (1, kv_heads, start, head_dim)
                mine.values[:, :, :start].copy_(values[:, :, :start])
        self.pf_ids[:, :count].copy_(new_ids)
        self.pf_meta.copy_(torch.tensor([start, delta, start + count]))
        graph = self.pf_graphs.get((p, self.size))
        if graph is not None:
            graph.replay()
            return self.pf_logits[(p, self.size)]
        return self._prefill(p, self.size)

    def _prefill(self, p: int, size: int) -> torch.Tensor:
        """P tokens of pf_ids at slots start..start+P-1 of bucket `size`: logits (1, V) of the last real one.

        Slots past the real tokens get padding K/V; the decode mask (set here to slots < end) hides them until
        decode steps overwrite them, and real queries never see them (causal), so answers do not depend on P.
        """
        start, delta, end = self.pf_meta[0], self.pf_meta[1], self.pf_meta[2]  # () each, on the device
        device = self.pf_ids.device
        slots = torch.arange(p, device=device) + start  # (P,)
        text = slots.view(1, 1, p)
        positions = torch.cat([text, (text + delta).expand(3, 1, p)])  # (4, 1, P): text tokens after the prefix
        keys = torch.arange(size, device=device)  # (size,)
        mask = (keys.view(1, size) <= slots.view(p, 1)).view(1, 1, p, size)  # prefix and earlier new tokens
        for layer in self.cache.layers:
            layer.cumulative_length.copy_(start)  # where this prefill writes; shared with every bucket's view
        embeds = self.model.model.get_input_embeddings()(self.pf_ids[:, :p])  # (1, P, H)
        backends = (sdpa_kernel(decode.PREFILL_BACKENDS) if decode.PREFILL_BACKENDS and device.type == "cuda"
                    else contextlib.nullcontext())
        with backends:
            out = self.model.model.language_model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                                                  past_key_values=self.caches[size], use_cache=True)
        last = out.last_hidden_state.index_select(1, (end - start - 1).view(1))  # (1, 1, H)
        for layer in self.cache.layers:
            layer.cumulative_length.copy_(end)  # the first answer token goes right after the real tokens
        self.mask.copy_((torch.arange(self.max_tokens, device=device) < end).view(1, 1, 1, -1))
        return self.model.lm_head(last).float()[:, -1]  # (1, V)

    def greedy_ready(self) -> bool:
        """True if greedy steps can run here: a captured greedy graph for the bucket, or the uncaptured step."""
        return self.size in self.greedy_graphs or (not self.graphs and not self.greedy_note)

    def begin(self, token: torch.Tensor, index: int, delta: int, until: int, eos) -> None:
        """Greedy decoding from `token` (1,) at cache slot `index`; end-of-answer tokens banned below `until`."""
        self.out[index:index + 1].copy_(token.view(1))
        self.token.copy_(token.view(1, 1))
        self.positions[0].fill_(index)
        self.positions[1:].fill_(index + delta)
        self.until.fill_(until)
        self.ban.zero_()
        self.ban[list(eos)] = True

    def advance(self, steps: int) -> None:
        """Queue `steps` greedy steps; nothing waits for them."""
        graph = self.greedy_graphs.get(self.size)
        for _ in range(steps):
            graph.replay() if graph is not None else self._greedy(self.size)

    def read(self, start: int, stop: int):
        """Queue a copy of the tokens for slots [start, stop) to the host; `tokens()` waits for it."""
        self.host[start:stop].copy_(self.out[start:stop], non_blocking=True)
        if self.out.is_cuda:
            event = torch.cuda.Event()
            event.record()
            return event, start, stop
        return None, start, stop

    def tokens(self, pending) -> list[int]:
        """The tokens of a queued `read`, once they are on the host."""
        event, start, stop = pending
        if event is not None:
            event.synchronize()  # waits for that copy only, not for the steps queued after it
        return self.host[start:stop].tolist()

    def layers(self, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the first `length` cached tokens' K/V per layer, (1, kv_heads, length, head_dim) each."""
        return [(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone())
                for layer in self.cache.layers]

    def run_steps(self, size: int) -> None:
        """Run bucket `size`'s step a few times on a side stream: compiles it (if asked) and warms its kernels."""
        self.start(new_cache(self.model), 0, size)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for index in range(3):
                self.step(self.token[0], index, 0)
        torch.cuda.current_stream().wait_stream(side)

    def capture(self) -> None:
        """For each bucket: run the step a few times (compiling it if asked), then record it as a CUDA graph."""
        for size in self.sizes:
            self.run_steps(size)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.logits[size] = self._fn(self.caches[size], self.masks[size])
            self.graphs[size] = graph
        torch.cuda.synchronize()
        try:
            self._capture_greedy()
        except Exception as exc:  # the per-step graphs still work: decode greedy answers through them
            self.greedy_graphs.clear()
            self.greedy_note = f"in-graph greedy off ({type(exc).__name__}: {str(exc).strip()[:120]})"
            log.warning("%s", self.greedy_note)
        started = time.perf_counter()
        try:
            self._capture_prefill()
        except Exception as exc:  # follow-ups still work: they prefill eagerly and copy into the buffers
            self.pf_graphs.clear()
            self.pf_logits.clear()
            self.prefill_note = f"short prefill graphs off ({type(exc).__name__}: {str(exc).strip()[:120]})"
            log.warning("%s", self.prefill_note)
        self.prefill_s = time.perf_counter() - started
        self.start(new_cache(self.model), 0)  # the buffers hold nothing a follow-up could reuse

    def _capture_prefill(self) -> None:
        """Capture the short prefill per (new-token bucket, decode bucket), then check one against uncaptured."""
        pool = torch.cuda.graph_pool_handle()  # replayed one at a time, their logits read before the next
        for size in self.sizes:
            for p in self.prefill_sizes:
                if p >= size:
                    continue
                self.start(new_cache(self.model), 0, size)
                self.pf_meta.copy_(torch.tensor([1, 0, 1 + p]))
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._prefill(p, size)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.pf_logits[(p, size)] = self._prefill(p, size)
                self.pf_graphs[(p, size)] = graph
        # Same state twice (a 5-token follow-up after 3 cached slots): the replay must equal the uncaptured run.
        p, size = min(self.pf_graphs)
        self.pf_ids.copy_(torch.arange(self.pf_ids.shape[1], device=self.pf_ids.device).view(1, -1) % 7 + 1)
        self.pf_meta.copy_(torch.tensor([3, 2, 8]))
        self.pf_graphs[(p, size)].replay()
        captured = self.pf_logits[(p, size)].clone()
        reference = self._prefill(p, size)
        scale = float(reference.abs().max())
        if not (torch.equal(captured.argmax(-1), reference.argmax(-1))
                and torch.allclose(captured, reference, rtol=1e-3, atol=1e-3 * scale)):
            raise RuntimeError("captured short prefill differs from the uncaptured one")
        torch.cuda.synchronize()

    def _capture_greedy(self, check_steps: int = 4) -> None:
        """Capture the greedy step per bucket, then check it chooses what the per-step graph plus argmax does."""
        for size in self.sizes:
            self.start(new_cache(self.model), 0, size)
            self.begin(self.token[0], 0, 0, 0, [])
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._greedy(size)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._greedy(size)
            self.greedy_graphs[size] = graph
            # The same steps twice from the same state: in-graph choice against the host-side choice.
            first = torch.zeros(1, dtype=torch.long, device=self.model.device)
            self.start(new_cache(self.model), 0, size)
            self.begin(first, 0, 0, 0, [])
            self.advance(check_steps)
            in_graph = self.out[1:check_steps + 1].tolist()
            self.start(new_cache(self.model), 0, size)
            token, on_host = first, []
            for index in range(check_steps):
                token = self.step(token, index, 0).argmax(dim=-1)
                on_host.append(int(token))
            if in_graph != on_host:
                raise RuntimeError(f"greedy graph chose {in_graph}, the step graph {on_host}")
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
                notes = [f"{mode} decode step warmed up"]
                notes += [n for n in (decoder.greedy_note, decoder.prefill_note) if n]
                if decoder.pf_graphs:
                    notes.append(f"follow-ups of up to {max(decoder.prefill_sizes)} new tokens prefill in captured"
                                 f" graphs ({len(decoder.pf_graphs)}, {decoder.prefill_s:.1f} s)")
                reason = "; ".join(failures + notes)
                return decoder, mode, reason, time.perf_counter() - started
            except Exception as exc:  # fall back to the next mode, and say why
                failures.append(f"{mode} failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]})"
                                if str(exc).strip() else f"{mode} failed ({type(exc).__name__})")
                log.warning("decode mode %s failed, falling back: %s", mode, failures[-1])
    return None, "eager", "; ".join(failures), time.perf_counter() - started
