"""One answer's token loop, read top to bottom: encode → look up prefix → prefill → decode.

`prepare` encodes on the caller's thread (bad input fails there, before any device work); `run` does the rest
on the worker thread. Each phase is a public function so that scripts/bench.py can time them one by one, or
pass `mark` to be called as each phase (and the prefill's steps) ends.

Three decode strategies:
- plain: transformers' generate() on the whole prompt (`use_cache` off): the reference, nothing reused or kept;
- per step: each token chosen on the host, the step run eagerly (a growing cache) or in the static buffers;
- greedy blocks: tokens chosen on the device inside the static buffers' captured step, read back in blocks.
L is the prompt's length in tokens, V the vocabulary size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList

from vlassist.conversation import GenerationOptions, Stats, TokenLogprob, Turn
from vlassist.engine import sampling
from vlassist.engine.decode import (
    cache_layers,
    choose,
    constrained,
    decode_step,
    logits_processors,
    new_cache,
    prefill,
    rope_positions,
    step_positions,
    yield_to_grammar,
)
from vlassist.engine.encode import conversation_images
from vlassist.engine.fastdecode import StaticDecoder
from vlassist.engine.kvcache import Entry, fingerprint, image_key
from vlassist.engine.streaming import StopOnEvent, TimedStreamer

if TYPE_CHECKING:
    from vlassist.engine.core import Engine


def _no_mark(phase: str) -> None:
    pass


@dataclass
class Generation:
    """One answer on its way through the phases: its inputs, what each phase found, and where tokens go."""

    inputs: dict  # input_ids, mm_token_type_ids (1, L); pixel_values (patches, C*T*P*P), image_grid_thw (images, 3)
    image_keys: list[int]  # one per image, in prompt order (see kvcache.image_key)
    options: GenerationOptions
    stop: threading.Event
    sink: TimedStreamer  # takes the prompt's ids, then each answer token as it is chosen
    stats: Stats
    mark: Callable[[str], None] = _no_mark  # called with a phase's name as it ends (benchmark timing)
    tokens: np.ndarray | None = None  # (L,) fingerprint: input_ids with image keys where image tokens stand
    entry: Entry | None = None  # the stored prefix the prompt starts with
    reused: int = 0  # prompt tokens whose K/V come from `entry`
    fast: StaticDecoder | None = None  # the engine's static buffers, if prompt and answer fit them
    cache: DynamicCache | None = None  # the growing cache of an eager prefill
    delta: int = 0  # M-RoPE offset of answer positions
    path: str = ""  # how the prompt was prefilled: "short" (into the static buffers) or "eager"
    output: torch.Tensor | None = None  # prompt and answer ids (1, L + new)
    error: BaseException | None = None  # what the worker raised
    logprobs: list[TokenLogprob] | None = None  # each answer token's log-probability, when options.logprobs asks

    @property
    def length(self) -> int:
        """L, the prompt's length in tokens."""
        return int(self.inputs["input_ids"].shape[1])

    @property
    def total(self) -> int:
        """The most tokens prompt and answer can take together."""
        return self.length + self.options.max_new_tokens


def prepare(engine: Engine, turns: Sequence[Turn], options: GenerationOptions, stop: threading.Event | None = None,
            stats: Stats | None = None, mark: Callable[[str], None] = _no_mark) -> Generation:
    """Phase 1, encode: the prompt's model inputs and image keys, with the prompt's stats filled in."""
    inputs, sizings = engine.encode(turns, options)
    stats = stats if stats is not None else Stats()
    stats.images = sizings
    stats.visual_tokens = sum(s.visual_tokens for s in sizings)
    stats.prompt_tokens = int(inputs["input_ids"].shape[1])
    keys = [image_key(image.sha256, s.input_size) for image, s in zip(conversation_images(turns), sizings)]
    sink = TimedStreamer(engine.processor.tokenizer, timeout=engine.settings.stream_timeout_s)
    mark("encode")
    return Generation(inputs, keys, yield_to_grammar(options), stop or threading.Event(), sink, stats, mark)


def run(engine: Engine, gen: Generation) -> None:
    """Phases 2-4 (the worker's part): answer tokens go to `gen.sink`, the whole sequence to `gen.output`."""
    if gen.options.seed is not None:
        torch.manual_seed(gen.options.seed)
    with torch.inference_mode():
        if not gen.options.use_cache:
            gen.output = plain_generate(engine, gen)
            return
        look_up_prefix(engine, gen)
        scores = prefill_prompt(engine, gen)  # (1, V)
        token, processors = choose_first(engine, gen, scores)  # (1,)
        if greedy_blocks_fit(engine, gen):
            gen.output = decode_greedy_blocks(engine, gen, token)
        else:
            gen.output = decode_per_step(engine, gen, token, processors)


def look_up_prefix(engine: Engine, gen: Generation) -> None:
    """Phase 2: the prompt's fingerprint, the stored prefix it starts with, and whether the static buffers fit."""
    ids, grid = gen.inputs["input_ids"], gen.inputs.get("image_grid_thw")  # (1, L), (images, 3) or None
    counts = [] if grid is None else (grid.prod(-1) // engine.merge_size**2).tolist()  # tokens per image
    gen.tokens = fingerprint(ids[0].tolist(), engine.image_token_id, gen.image_keys, counts)  # (L,)
    gen.entry, gen.reused = engine.prefixes.lookup(gen.tokens)
    gen.stats.reused_tokens = gen.reused
    fast = engine.fast
    gen.fast = fast if fast is not None and fast.fits(gen.total) else None
    gen.mark("lookup")


def short_prefill_fits(engine: Engine, gen: Generation) -> bool:
    """True if the new tokens are few, all text, and can be prefilled straight into the static buffers."""
    fast, reused = gen.fast, gen.reused
    return (fast is not None and engine.short_prefill and gen.entry is not None and reused > 0
            and bool((gen.tokens[reused:] >= 0).all()) and fast.takes(gen.length - reused, reused, gen.total))


def prefill_prompt(engine: Engine, gen: Generation) -> torch.Tensor:
    """Phase 3: run the prompt tokens no stored prefix covers; logits of the last prompt token, (1, V)."""
    model, inputs, entry, reused = engine.model, gen.inputs, gen.entry, gen.reused
    ids, grid = inputs["input_ids"], inputs.get("image_grid_thw")  # (1, L), (images, 3) or None
    if short_prefill_fits(engine, gen):
        gen.path = "short"
        # Only text follows the reused prefix: positions continue it, so the whole-prompt M-RoPE pass is
        # needed only when the stored entry did not record its delta or has images past the cut.
        if entry.delta is not None and (entry.tokens[reused:] >= 0).all():
            gen.delta = entry.delta
        else:
            gen.delta = rope_positions(model, ids, inputs.get("mm_token_type_ids"), grid)[1]
        scores = gen.fast.prefill_short(ids[:, reused:], gen.tokens, reused, gen.delta, entry.layers, gen.total)
        gen.mark("prefill")
        return scores
    gen.path = "eager"
    positions, gen.delta = rope_positions(model, ids, inputs.get("mm_token_type_ids"), grid)  # (4, 1, L)
    pixels, new_grid = uncached_images(inputs.get("pixel_values"), grid, gen.tokens, reused)
    gen.mark("rope_positions")
    gen.cache = new_cache(model, entry.layers if entry else None, reused)
    gen.mark("prefix_copy")
    scores = prefill(model, ids[:, reused:], positions[:, :, reused:], gen.cache, pixels, new_grid)  # (1, V)
    gen.mark("prefill")
    if gen.fast is not None:
        gen.fast.start(gen.cache, gen.length, gen.total)
    gen.mark("static_copy")
    return scores


def uncached_images(pixel_values, grid, tokens: np.ndarray, reused: int):
    """pixel_values rows and image_grid_thw of the images whose tokens start at or after `reused`."""
    if grid is None:
        return None, None
    starts = np.flatnonzero((tokens < 0) & (np.r_[0, tokens[:-1]] != tokens))  # first token of each image
    first_new = int((starts < reused).sum())
    if first_new == len(grid):
        return None, None
    rows = int(grid[:first_new].prod(-1).sum())
    return pixel_values[rows:], grid[first_new:]


def choose_first(engine: Engine, gen: Generation, scores: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Phase 4 begins: the first answer token (1,) on the device, and the logits processors for the rest."""
    ids = gen.inputs["input_ids"]  # (1, L)
    gen.sink.put(ids.cpu())  # the prompt: the streamer skips it
    processors = logits_processors(gen.options, gen.length, engine.eos_ids, engine.processor.tokenizer,
                                   engine.model.config)
    token = choose_noting(engine, gen, scores, ids, processors)
    gen.mark("choose")
    return token, processors


def choose_noting(engine: Engine, gen: Generation, scores: torch.Tensor, sequence: torch.Tensor, processors: list
                  ) -> torch.Tensor:
    """The next token (1,), its log-probability noted in `gen.logprobs` (from the raw scores) when asked for."""
    if gen.logprobs is None:
        return choose(scores, sequence, processors, greedy=gen.options.precise)
    raw = scores[0].float().clone()  # processors may mask the scores in place
    token = choose(scores, sequence, processors, greedy=gen.options.precise)
    chosen = int(token[0])
    if chosen not in engine.eos_ids:  # the end-of-answer token is no part of the text, so none of its logprobs
        gen.logprobs.append(sampling.token_logprob(engine.processor.tokenizer, raw, chosen, gen.options.logprobs))
    return token


def greedy_blocks_fit(engine: Engine, gen: Generation) -> bool:
    """True if this answer can be chosen on the device: greedy, no grammar, penalty, bias or logprobs, and a greedy
    step for the bucket."""
    options = gen.options
    return (gen.fast is not None and engine.decode_block > 0 and options.precise and not constrained(options)
            and not sampling.needs_rows(options) and options.logprobs is None and gen.fast.greedy_ready())


def decode_per_step(engine: Engine, gen: Generation, token: torch.Tensor, processors: list) -> torch.Tensor:
    """Phase 4, per step: each token chosen on the host; the prompt and answer ids (1, L + new) on the device."""
    options, fast, length, eos_ids = gen.options, gen.fast, gen.length, engine.eos_ids
    ids = gen.inputs["input_ids"]
    sequence = ids  # (1, L + tokens chosen so far)
    for step in range(options.max_new_tokens):
        sequence = torch.cat([sequence, token.view(1, 1)], dim=1)
        last = step == options.max_new_tokens - 1
        if not last:
            # Queue the next step before the host waits for this token: the GPU works while the host streams
            # text. If this token ends the answer, that one step is wasted; nothing reads its K/V.
            index = length + step  # cache slot of the token just chosen
            scores = (fast.step(token, index, gen.delta) if fast is not None else
                      decode_step(engine.model, token.view(1, 1), step_positions(index, gen.delta, ids.device),
                                  gen.cache))  # (1, V)
        chosen = token.cpu()  # waits for the choice only; reading `token` again would wait for the step too
        gen.sink.put(chosen)
        if int(chosen) in eos_ids or gen.stop.is_set() or last:
            break
        token = choose_noting(engine, gen, scores, sequence, processors)
    fed = sequence.shape[1] - 1  # the last chosen token never ran through the model
    answer = sequence[0, length:fed].cpu().numpy()
    layers = fast.layers(fed) if fast is not None else cache_layers(gen.cache, fed)
    keep(engine, gen, np.concatenate([gen.tokens, answer]), layers)
    return sequence


def decode_greedy_blocks(engine: Engine, gen: Generation, token: torch.Tensor) -> torch.Tensor:
    """Phase 4, greedy blocks: tokens chosen on the device, read back every `engine.decode_block` steps.

    Each block is queued before the host waits for the previous one's tokens, so the GPU never idles on the
    host. Steps past an end-of-answer token inside a block are wasted work; their tokens are dropped and
    their K/V lies beyond what is kept. Returns the prompt and answer ids (1, L + new) on the host.
    """
    fast, options, length, eos_ids = gen.fast, gen.options, gen.length, engine.eos_ids
    until = length + options.min_new_tokens if options.min_new_tokens else 0
    fast.begin(token, length, gen.delta, until, sorted(eos_ids))
    pending = fast.read(length, length + 1)  # the first token: streamed before any block is waited for
    queued, left, answer = length + 1, options.max_new_tokens - 1, []
    while True:
        steps = min(engine.decode_block, left)
        fast.advance(steps)
        left -= steps
        chosen = fast.tokens(pending)
        ends = next((i for i, t in enumerate(chosen) if t in eos_ids), None)
        if ends is not None:
            chosen = chosen[:ends + 1]
        answer += chosen
        gen.sink.put(torch.tensor(chosen))
        if ends is not None or gen.stop.is_set() or not steps:
            break
        pending = fast.read(queued, queued + steps)
        queued += steps
    fed = length + len(answer) - 1  # the last chosen token's K/V is not kept (as on the per-step path)
    keep(engine, gen, np.concatenate([gen.tokens, np.asarray(answer[:-1], dtype=np.int64)]), fast.layers(fed))
    ids = gen.inputs["input_ids"].cpu()
    return torch.cat([ids, torch.tensor([answer], dtype=ids.dtype)], dim=1)


def keep(engine: Engine, gen: Generation, tokens: np.ndarray, layers) -> None:
    """Store the K/V of `tokens`; the static buffers still hold them, so a follow-up need not copy them back."""
    engine.prefixes.put(tokens, layers, gen.delta)
    if gen.fast is not None:
        gen.fast.held = tokens


def plain_generate(engine: Engine, gen: Generation) -> torch.Tensor:
    """The plain strategy: transformers' generate() on the whole prompt, nothing reused or kept."""
    options = gen.options
    kwargs = dict(
        **gen.inputs, streamer=gen.sink, max_new_tokens=options.max_new_tokens,
        min_new_tokens=options.min_new_tokens or None, stopping_criteria=StoppingCriteriaList([StopOnEvent(gen.stop)]),
        pad_token_id=engine.processor.tokenizer.pad_token_id, **options.sampling_kwargs(),
    )
    # generate() applies the length floor and the sampling filters itself; penalties, bias and grammar come from here.
    own = replace(options, min_new_tokens=0, precise=True, penalize_greedy=options.penalize_greedy and options.precise)
    chain = logits_processors(own, gen.length, engine.eos_ids, engine.processor.tokenizer, engine.model.config)
    if chain:
        kwargs["logits_processor"] = LogitsProcessorList(chain)
    return engine.model.generate(**kwargs)
