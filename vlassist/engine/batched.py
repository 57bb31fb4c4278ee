"""Several one-question answers decoded together: each prompt prefilled alone, then one forward step for all rows.

Decode at batch 1 reads every weight once per token; stepping B answers at once reads them once for all B, so
batch jobs answer several images per weight read. The steps:
- encode and prefill each row on its own, exactly as a single answer would (its own M-RoPE positions and delta),
  into a growing cache of its own; prefill is compute-bound, so batching it would gain little;
- merge the rows' caches into one batched cache, left-padded to the longest prompt (padding masked out);
- decode: one forward per step for the rows still answering, each at its own position (cache index + delta);
  a row ends at an end-of-answer token, at max_new_tokens or when its stop event is set, and leaves the batch
  (its cache rows, its grammar state and the padding no row needs any more are dropped).
Greedy answers are the ones each row gets alone: the same token ids in float32 on the CPU (tests/test_batched.py);
in bf16 on a GPU other batch shapes round differently, so long answers can drift apart after a near tie. Sampled
answers are answered one at a time: one random stream over a batch would not match what a seed gives alone.
Nothing is looked up in or stored to the prefix cache: batch rows are one-off questions about different images.
B is the number of rows still answering, K the batched cache's length, V the vocabulary size.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.nn.attention import sdpa_kernel
from transformers import DynamicCache

from vlassist.conversation import GenerationOptions, Stats, Turn
from vlassist.engine import generate
from vlassist.engine.decode import (
    PREFILL_BACKENDS,
    cache_layers,
    choose,
    decode_step,
    logits_processors,
    new_cache,
    prefill,
    rope_positions,
)
from vlassist.engine.streaming import finish_stats
from vlassist.errors import VlassistError, error_line

if TYPE_CHECKING:
    from vlassist.engine.core import Engine

# Auto batch size on CUDA (see auto_batch_size): the card the defaults are tuned for, memory kept back for one
# row's prefill activations and the logits, and the most rows chosen. On an H100 under a 24 GiB cap, 7B at random
# weights, 1024² images and 200-token answers: 16 rows gave 3.2× the images per minute of one at a time, 32 rows
# 5.1× (peak 19.6 GiB); the eager step is bound by the host, so more rows cost little more per step.
BUDGET_GB = 24.0
RESERVE_GB = 2.0
MAX_AUTO_ROWS = 32

Result = tuple[str, Stats]


def answer_batch(engine: Engine, conversations: Sequence[Sequence[Turn]],
                 options: GenerationOptions = GenerationOptions(),
                 stops: Sequence[threading.Event] | None = None) -> list[Result]:
    """Answer each conversation's last user turn together: (text, stats) per conversation, in order."""
    # Safe from many threads: the device lock is taken below, as stream() takes it. A conversation that cannot be
    # encoded gets stats with stop_reason "error"; the others are still answered.
    stops = list(stops) if stops is not None else [threading.Event() for _ in conversations]
    if not options.precise:
        return [_alone(engine, turns, options, stop) for turns, stop in zip(conversations, stops)]
    results: list[Result | None] = [None] * len(conversations)
    rows: list[tuple[int, generate.Generation]] = []
    for index, (turns, stop) in enumerate(zip(conversations, stops)):
        try:
            rows.append((index, generate.prepare(engine, list(turns), options, stop)))
        except VlassistError as exc:  # one bad question is that row's error, not the batch's
            results[index] = ("", _failed(exc))
    if rows:
        for (index, _), result in zip(rows, answer_rows(engine, [gen for _, gen in rows])):
            results[index] = result
    return results


def auto_batch_size(engine: Engine, tokens_per_row: int) -> int:
    """Rows whose KV cache fits the device's free memory within the 24 GB budget; 1 on the CPU."""
    # Each row holds kv_bytes_per_token × tokens_per_row (prompt and answer) of K/V. The room is the smaller of the
    # device's free memory and the budget (VLASSIST_GPU_MEMORY_GB, else 24 GB) less what is allocated now (weights,
    # static buffers, stored prefixes), with RESERVE_GB kept for one prefill's activations and the logits.
    if engine.info.device != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info()
    budget = (engine.settings.gpu_memory_gb or BUDGET_GB) * 2**30 - torch.cuda.memory_allocated()
    room = min(free, budget) - RESERVE_GB * 2**30
    per_row = kv_bytes_per_token(engine.model) * max(tokens_per_row, 1)
    return int(max(1, min(MAX_AUTO_ROWS, room // per_row)))


def kv_bytes_per_token(model) -> int:
    """Bytes of K and V one token takes in every layer of the text model's cache."""
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


def _alone(engine: Engine, turns: Sequence[Turn], options: GenerationOptions, stop: threading.Event) -> Result:
    """One conversation on the single-answer path (sampling), its errors kept to its row."""
    try:
        reply = engine.stream(turns, options, stop)
        return reply.consume(), reply.stats
    except VlassistError as exc:
        return "", _failed(exc)


def _failed(exc: BaseException) -> Stats:
    """Stats of a row that failed before it was answered."""
    stats = Stats(stop_reason="error")
    stats.error = error_line(exc)
    return stats


def answer_rows(engine: Engine, gens: list[generate.Generation]) -> list[Result]:
    """Answer rows made by generate.prepare (one options) together; each row's prompt and answer ids go to `output`."""
    # Waits for the device first, giving up if every row is stopped while it waits.
    from vlassist.engine.core import GenerationError  # core imports this module

    requested = time.perf_counter()
    lock = engine._lock  # the same lock single answers take: one generation on the device at a time
    while not lock.acquire(timeout=0.05):
        if all(gen.stop.is_set() for gen in gens):
            for gen in gens:
                gen.stats.stop_reason = "stopped"
            return [("", gen.stats) for gen in gens]
    started = time.perf_counter()
    try:
        for gen in gens:
            gen.stats.queued_s = started - requested
        # The batched cache grows every step, and cuDNN's SDPA would build a plan for each new shape: a 7B step
        # took about 95 ms on an H100 with it and 26 ms without. The kernels prefill uses have no such step.
        cuda = gens[0].inputs["input_ids"].is_cuda
        backends = sdpa_kernel(PREFILL_BACKENDS) if PREFILL_BACKENDS and cuda else contextlib.nullcontext()
        with torch.inference_mode(), backends:
            try:
                _decode(engine, gens)
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise GenerationError("out of GPU memory: lower --batch-size, the resolution or the answer "
                                      "length") from exc
    finally:
        lock.release()
    results = []
    for gen in gens:
        gen.sink.end()
        finish_stats(gen.stats, gen.sink, started, gen.stop.is_set(), engine.eos_ids, gen.output)
        results.append(("".join(gen.sink), gen.stats))
    return results


def _prefill_row(engine: Engine, gen: generate.Generation) -> torch.Tensor:
    """One row's whole prompt through the model into a cache of its own, as a single answer's prefill: (1, V)."""
    model, inputs = engine.model, gen.inputs
    ids, grid = inputs["input_ids"], inputs.get("image_grid_thw")  # (1, L), (images, 3) or None
    positions, gen.delta = rope_positions(model, ids, inputs.get("mm_token_type_ids"), grid)  # (4, 1, L)
    gen.cache = new_cache(model)
    scores = prefill(model, ids, positions, gen.cache, inputs.get("pixel_values"), grid)
    gen.sink.put(ids.cpu())  # the prompt: the streamer skips it
    return scores


def _merge(engine: Engine, gens: list[generate.Generation], width: int) -> DynamicCache:
    """The rows' caches as one, each row right-aligned in `width` slots; freed layer by layer as they are copied."""
    rows = [cache_layers(gen.cache, gen.length) for gen in gens]  # per row, per layer (1, kv_heads, L, head_dim)
    for gen in gens:
        gen.cache = None
    merged = new_cache(engine.model)
    for layer in range(len(rows[0])):
        keys0, _ = rows[0][layer]
        shape = (len(gens), keys0.shape[1], width, keys0.shape[3])
        keys = keys0.new_zeros(shape)
        values = keys0.new_zeros(shape)
        for row, gen in enumerate(gens):
            k, v = rows[row][layer]
            keys[row, :, width - gen.length:] = k[0]
            values[row, :, width - gen.length:] = v[0]
            rows[row][layer] = None  # the row's copy can go: only the merged one is read from now on
        merged.update(keys, values, layer)
    return merged


def _decode(engine: Engine, gens: list[generate.Generation]) -> None:
    """Prefill every row, then step all unfinished rows together; each row's ids end up in its `output`."""
    model, options, eos_ids = engine.model, gens[0].options, engine.eos_ids
    device = gens[0].inputs["input_ids"].device
    scores = torch.cat([_prefill_row(engine, gen) for gen in gens])  # (B, V)
    width = max(gen.length for gen in gens)
    cache = _merge(engine, gens, width)
    lengths = torch.tensor([gen.length for gen in gens], device=device)  # (B,) each row's own cache index
    deltas = torch.tensor([gen.delta for gen in gens], device=device)  # (B,)
    slots = torch.arange(width, device=device)
    mask = slots.view(1, -1) >= (width - lengths).view(-1, 1)  # (B, K): False on the left padding
    # The processors read only the sequence's length and last tokens: left-padded ids are enough for them.
    sequence = torch.zeros(len(gens), width, dtype=torch.long, device=device)  # (B, K + chosen)
    processors = logits_processors(options, width, eos_ids, engine.processor.tokenizer, model.config,
                                   prompt_known=False)
    live = list(gens)
    answers: dict[int, list[int]] = {id(gen): [] for gen in gens}
    token = choose(scores, sequence, processors, greedy=True)  # (B,)
    for step in range(options.max_new_tokens):
        sequence = torch.cat([sequence, token.view(-1, 1)], dim=1)
        keep = []
        for row, (gen, chosen) in enumerate(zip(live, token.tolist())):
            answers[id(gen)].append(chosen)
            gen.sink.put(torch.tensor([chosen]))
            if not (chosen in eos_ids or gen.stop.is_set() or step == options.max_new_tokens - 1):
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(live):
            live = [live[row] for row in keep]
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            token, sequence, mask = token[index], sequence[index], mask[index]
            lengths, deltas = lengths[index], deltas[index]
            for processor in processors:
                if hasattr(processor, "select_rows"):
                    processor.select_rows(keep)
            mask = _drop_padding(cache, mask)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)  # (B, K + 1): the token fed now
        at = lengths + step  # (B,) cache index of the token fed now, as if alone
        positions = torch.stack([at, at + deltas, at + deltas, at + deltas]).view(4, len(live), 1)
        scores = decode_step(model, token.view(-1, 1), positions, cache, mask)  # (B, V)
        token = choose(scores, sequence, processors, greedy=True)
    for gen in gens:
        ids = gen.inputs["input_ids"].cpu()
        gen.output = torch.cat([ids, torch.tensor([answers[id(gen)]], dtype=ids.dtype)], dim=1)


def _drop_padding(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Cut the left slots that no remaining row uses from the cache and the mask; the mask (B, K') is returned."""
    first = int(mask.any(dim=0).nonzero()[0])
    if first:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return mask[:, first:]
