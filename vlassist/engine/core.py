"""The engine: a loaded Qwen-VL model that streams answers about images, one caller at a time."""

from __future__ import annotations

import dataclasses
import gc
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from vlassist import offline  # noqa: F401  (sets the offline switches before transformers is imported)
from vlassist.config import Settings
from vlassist.conversation import GenerationOptions, Reply, Stats, Turn
from vlassist.engine import batched, compilecache, generate, slots
from vlassist.engine.decode import yield_to_grammar
from vlassist.engine.encode import PixelMemo, check_turns, conversation_images, encode_prompt, prompt_tools
from vlassist.engine.fastdecode import build_decoder
from vlassist.engine.kvcache import PrefixStore
from vlassist.engine.loader import ModelInfo, Progress, load, process_age_s
from vlassist.engine.sizing import plan_size
from vlassist.engine.streaming import finish_stats
from vlassist.engine.template import PromptRenderer
from vlassist.engine.upgrade import compile_in_background
from vlassist.errors import OptionError, VlassistError
from vlassist.images import LoadedImage, Sizing

DECODE_BLOCK = 8  # greedy tokens chosen on the device between two host reads (stop checks, streaming)


class GenerationError(VlassistError):
    """Generation failed for a reason the user can act on (e.g. out of GPU memory)."""


class Engine:
    """A loaded checkpoint. `stream()` is the one call front ends use; it is safe from many threads."""

    def __init__(self, model, processor, info: ModelInfo, settings: Settings):
        self.model = model
        self.processor = processor
        self.info = info
        self.settings = settings
        self._lock = threading.Lock()  # one generation on the device at a time
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(processor.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.prefixes = PrefixStore(int(settings.kv_cache_gb * 2**30))
        self.fast = None  # a StaticDecoder once load_engine has warmed one up; None decodes eagerly
        self.image_token_id = model.config.image_token_id
        self.merge_size = model.config.vision_config.spatial_merge_size
        self.pixels = PixelMemo(processor.image_processor, model.device, info.min_pixels)
        self.prompts = PromptRenderer(processor)
        self.decode_block = DECODE_BLOCK  # 0: choose every token on the host, one step at a time
        self.short_prefill = True  # few new text tokens after a reused prefix: prefill them in the static buffers
        self.upgrade = None  # a DecoderUpgrade while a faster decoder is built beside the serving one
        self.scheduler = None  # a continuous decode batch (scheduler.py) when several answers may decode together
        self._encoding = threading.Lock()  # answers are encoded on their callers' threads; the pixel memo is shared

    def close(self) -> None:
        """Unload: wait for the running answer (and a background compile), drop the model, its caches and decoders."""
        if self.upgrade is not None:
            self.upgrade.wait()  # it builds on the model and swaps its decoder in under the device lock
        if self.scheduler is not None:
            self.scheduler.close()
        with self._lock:
            self.model = self.processor = self.fast = self.upgrade = self.pixels = None
            self.prefixes.clear()
        gc.collect()  # the model's modules refer to each other: free the weights now, not at some later collection
        if self.info.device == "cuda":
            torch.cuda.empty_cache()

    def device_lock(self) -> threading.Lock:
        """The lock every generation holds: whoever holds it (as a context manager) has the device alone."""
        return self._lock

    @property
    def busy(self) -> bool:
        """True while some caller is generating."""
        return self._lock.locked() or (self.scheduler is not None and self.scheduler.busy)

    @property
    def slots(self) -> int:
        """How many answers decode together (the answer service runs this many at once)."""
        return self.scheduler.slots if self.scheduler is not None else 1

    @property
    def row_tokens(self) -> int | None:
        """The most tokens (prompt and answer) one answer's K/V may take in the decode batch; None: no cap."""
        return self.scheduler.room_tokens if self.scheduler is not None else None

    def plan(self, image: LoadedImage | tuple[int, int], options: GenerationOptions = GenerationOptions()) -> Sizing:
        """The model-input size and visual tokens this image will get under `options`."""
        size = image.size if isinstance(image, LoadedImage) else image
        return plan_size(size, self.info.factor, options.max_image_tokens, self.info.min_pixels, options.low_res)

    @property
    def context_tokens(self) -> int:
        """The most tokens (prompt and answer together) the model can attend to: max_position_embeddings."""
        return int(self.model.config.get_text_config().max_position_embeddings)

    def count_prompt_tokens(self, turns: Sequence[Turn], options: GenerationOptions = GenerationOptions()) -> int:
        """Tokens the prompt for `turns` takes: the rendered template's text plus each image's visual tokens.

        Nothing is resized or run through the vision tower: an image's tokens come from its planned size.
        """
        check_turns(turns)
        visual = [self.plan(image, options).visual_tokens for image in conversation_images(turns)]
        # Each image stands as one placeholder token in the text; the processor expands it to its visual tokens.
        count = len(self.prompts.token_ids(turns, prompt_tools(options)))  # as encode_prompt tokenizes
        return count - len(visual) + sum(visual)

    @property
    def vocab_size(self) -> int:
        """The width of the model's logits: token ids a logit bias may name are below it."""
        return int(self.model.config.get_text_config().vocab_size)

    def check_options(self, options: GenerationOptions) -> None:
        """Refuse options this model cannot answer with (VlassistError): a grammar over its limits or too slow to
        compile, a logit bias for a token it does not have. Grammars compiled here are cached for the answer."""
        for token, _ in options.logit_bias:
            if not 0 <= token < self.vocab_size:
                raise OptionError(f"logit_bias: token id {token} is not in this model's vocabulary "
                                  f"(0–{self.vocab_size - 1})", param="logit_bias")
        if options.json_schema or options.regex or options.choice:
            from vlassist.engine.constrained import compile_within  # the grammar library loads on first use

            compile_within(self.processor.tokenizer, options, self.model.config)

    def tokenize(self, turns: Sequence[Turn] | str, options: GenerationOptions = GenerationOptions(),
                 add_special_tokens: bool = True) -> list[int]:
        """The prompt's token ids for `turns` (each image's placeholder expanded to its visual tokens), or a text's."""
        tokenizer = self.processor.tokenizer
        if isinstance(turns, str):
            return list(tokenizer(turns, add_special_tokens=add_special_tokens)["input_ids"])
        check_turns(turns)
        visual = [self.plan(image, options).visual_tokens for image in conversation_images(turns)]
        # The same ids encode_prompt builds: each image placeholder expanded to that image's visual tokens.
        counts = iter(visual)
        ids = self.prompts.token_ids(turns, prompt_tools(options))
        return [t for i in ids for t in ([i] * next(counts) if i == self.image_token_id else [i])]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids, special tokens included (vLLM's /detokenize); unknown ids raise OptionError."""
        size = len(self.processor.tokenizer)
        if bad := [t for t in tokens if not 0 <= t < size]:
            raise OptionError(f"token id {bad[0]} is not in this model's vocabulary (0–{size - 1})", param="tokens")
        return self.processor.tokenizer.decode(list(tokens))

    def token_strs(self, tokens: Sequence[int]) -> list[str]:
        """Each token id's vocabulary entry (byte-level pieces, as the tokenizer stores them)."""
        return list(self.processor.tokenizer.convert_ids_to_tokens(list(tokens)))

    def memory(self) -> dict:
        """Device memory in use, in GiB."""
        if self.info.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            return {"allocated_gb": torch.cuda.memory_allocated() / 2**30,
                    "reserved_gb": torch.cuda.memory_reserved() / 2**30,
                    "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
                    "device_used_gb": (total - free) / 2**30, "device_total_gb": total / 2**30}
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        weights += sum(b.numel() * b.element_size() for b in self.model.buffers())  # quantized layers' weights
        return {"weights_gb": weights / 2**30}

    def encode(self, turns: Sequence[Turn], options: GenerationOptions):
        """Render the chat template and run the processor: (model inputs, per-image sizings)."""
        check_turns(turns)
        sizings = [self.plan(image, options) for image in conversation_images(turns)]
        inputs = encode_prompt(self.prompts, self.pixels, turns, sizings, self.image_token_id, self.merge_size,
                               self.model.device, prompt_tools(options))
        return inputs, sizings

    def stream(
        self,
        turns: Sequence[Turn],
        options: GenerationOptions = GenerationOptions(),
        stop: threading.Event | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> Reply:
        """Answer the last user turn: a Reply that yields text chunks, with stats filled in at the end."""
        if self.model is None:
            raise GenerationError("this model was unloaded: another one was loaded in its place")
        stop = stop or threading.Event()
        stats = Stats()
        logprobs = [] if options.logprobs is not None else None
        if self.scheduler is not None:
            chunks = self._run_batched(list(turns), options, [stop], [stats], on_queued, [logprobs])[0]
            return Reply(chunks, stats, stop, logprobs)
        return Reply(self._run(list(turns), options, stop, stats, on_queued, logprobs), stats, stop, logprobs)

    def stream_choices(self, turns: Sequence[Turn], options: GenerationOptions, count: int,
                       stops: Sequence[threading.Event] | None = None) -> list[Reply]:
        """`count` answers to the same turns from one prefill (the API's `n`); each seeded seed + i when seeded."""
        if self.model is None:
            raise GenerationError("this model was unloaded: another one was loaded in its place")
        stops = list(stops) if stops is not None else [threading.Event() for _ in range(count)]
        stats = [Stats() for _ in range(count)]
        logprobs = [[] if options.logprobs is not None else None for _ in range(count)]
        if self.scheduler is None:  # one at a time: each choice is its own answer (its prefix is reused)
            return [Reply(self._run(list(turns), _nth(options, i), stop, stat, None, lp), stat, stop, lp)
                    for i, (stop, stat, lp) in enumerate(zip(stops, stats, logprobs))]
        chunks = self._run_batched(list(turns), options, stops, stats, None, logprobs)
        return [Reply(c, stat, stop, lp) for c, stat, stop, lp in zip(chunks, stats, stops, logprobs)]

    def _run_batched(self, turns, options, stops, stats, on_queued, logprobs) -> list[Iterator[str]]:
        """Encode once, queue the answer (and its copies) in the decode batch; one chunk iterator per answer."""
        requested = time.perf_counter()
        with self._encoding:
            first = generate.prepare(self, turns, options, stops[0], stats[0])
        gens = [first] + [generate.Generation(first.inputs, first.image_keys, yield_to_grammar(_nth(options, i)),
                                              stop, _sink(self),
                                              _copy_stats(first.stats, stat))
                          for i, (stop, stat) in enumerate(zip(stops[1:], stats[1:]), start=1)]
        for gen, noted in zip(gens, logprobs):
            gen.logprobs = noted  # each answer token's log-probability, when asked for
        if not self.scheduler.fits(first.total):
            raise GenerationError(f"this answer needs {first.total:,} tokens of K/V (prompt and answer), over the "
                                  f"{self.scheduler.room_tokens:,} one answer may take here; shorten the "
                                  "conversation, lower the resolution or the answer length")
        if on_queued is not None and self.scheduler.must_wait():
            on_queued()
        rows = self.scheduler.submit(first, gens[1:])
        return [self._follow(row, requested) for row in rows]

    def _drain(self, gen) -> Iterator[str]:
        """The answer's text chunks as they come; a silent model raises GenerationError, and a caller that stops
        reading (or any error) stops the answer."""
        drained = False
        try:
            for chunk in gen.sink:
                if chunk:
                    yield chunk
            drained = True
        except queue.Empty:
            gen.stop.set()
            raise GenerationError(f"the model produced nothing for {self.settings.stream_timeout_s:g} s") from None
        finally:
            if not drained:
                gen.stop.set()

    def _follow(self, row, requested: float) -> Iterator[str]:
        """Yield one batch row's text as it is chosen; stats filled in when it ends."""
        gen = row.gen
        try:
            yield from self._drain(gen)  # the caller leaving stops the row: it leaves the batch at the next step
        finally:
            row.done.wait()
            started = row.started or time.perf_counter()
            gen.stats.queued_s = max(0.0, started - requested)
            finish_stats(gen.stats, gen.sink, started, gen.stop.is_set(), self.eos_ids, gen.output, gen.error)
            gen.stats.batch_rows = row.shared
            if row.ended == "stop_string" and gen.error is None:
                gen.stats.stop_reason = "stop_string"
        if gen.error is not None:
            if isinstance(gen.error, torch.cuda.OutOfMemoryError):
                raise GenerationError("out of GPU memory: lower the resolution or the answer length") from gen.error
            raise gen.error

    def answer_batch(self, conversations: Sequence[Sequence[Turn]], options: GenerationOptions = GenerationOptions(),
                     stops: Sequence[threading.Event] | None = None) -> list[tuple[str, Stats]]:
        """Answer several one-question conversations in one batched decode: (text, stats) each (batched.py)."""
        if self.scheduler is not None:  # the rows join the continuous batch beside the interactive answers
            return slots.answer_through(self, conversations, options, stops)
        return batched.answer_batch(self, conversations, options, stops)

    def batch_size_for(self, tokens_per_row: int) -> int:
        """Rows of `tokens_per_row` (prompt and answer) a batched decode can hold in free memory; 1 on the CPU."""
        return batched.auto_batch_size(self, tokens_per_row)

    def _run(self, turns, options, stop, stats: Stats, on_queued, logprobs=None) -> Iterator[str]:
        requested = time.perf_counter()
        if not self._lock.acquire(blocking=False):
            if on_queued:
                on_queued()
            while not self._lock.acquire(timeout=0.05):
                if stop.is_set():
                    stats.stop_reason = "stopped"
                    return
        try:
            started = time.perf_counter()
            stats.queued_s = started - requested
            gen = generate.prepare(self, turns, options, stop, stats)
            gen.logprobs = logprobs
            yield from self._generate(gen, started)
        finally:
            self._lock.release()

    def _generate(self, gen: generate.Generation, started: float) -> Iterator[str]:
        """Run the token loop on a worker thread and yield its text; its exception is raised here."""

        def work():
            try:
                generate.run(self, gen)
            except BaseException as exc:  # reported to the caller's thread below
                gen.error = exc
            finally:
                gen.sink.end()

        worker = threading.Thread(target=work, name="vlassist-generate", daemon=True)
        worker.start()
        try:
            # When the caller abandons the stream, _drain stops the worker before the device lock is released.
            yield from self._drain(gen)
        finally:
            worker.join()
            finish_stats(gen.stats, gen.sink, started, gen.stop.is_set(), self.eos_ids, gen.output, gen.error)
        if gen.error is not None:
            exc = gen.error
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                self.prefixes.clear()
                torch.cuda.empty_cache()
                raise GenerationError("out of GPU memory: lower the resolution or the answer length") from exc
            raise exc


def _nth(options: GenerationOptions, index: int) -> GenerationOptions:
    """The options of the index-th of several choices: its own seed (seed + index) when seeded."""
    if index == 0 or options.seed is None:
        return options
    return dataclasses.replace(options, seed=options.seed + index)


def _sink(engine: Engine):
    from vlassist.engine.streaming import TimedStreamer

    return TimedStreamer(engine.processor.tokenizer, timeout=engine.settings.stream_timeout_s)


def _copy_stats(source: Stats, target: Stats) -> Stats:
    """The prompt's stats (tokens, images) copied into another choice's stats."""
    target.prompt_tokens, target.visual_tokens = source.prompt_tokens, source.visual_tokens
    target.images = list(source.images)
    return target


def load_engine(settings: Settings, progress: Progress | None = None) -> Engine:
    """Load the checkpoint named by settings and return a ready engine; `progress` hears each stage (loader.py)."""
    model, processor, _family, info = load(settings, progress)
    engine = Engine(model, processor, info, settings)
    if progress is not None:
        progress("warmup", 0.85, "Warming up: building the decode step (a compile can take a minute or two)")
    warm_up(engine)
    engine.scheduler = slots.make_scheduler(engine)
    if progress is not None:
        progress("ready", 1.0, "Ready")
    return engine


def warm_up(engine: Engine) -> None:
    """Build a fast decoder and record the time to ready; under `auto` the compiled one follows in the background.

    `auto` on CUDA captures the plain graph step first (seconds) and answers with it while the compiled step is
    built beside it (into the kept cache folder) and swapped in between answers; `compile` waits for it.
    """
    info, settings = engine.info, engine.settings
    cuda = info.device == "cuda"
    if cuda and settings.compile in ("auto", "compile"):
        cache = compilecache.prepare(settings.cache_root, engine.model)
        info.compile_cache = cache.describe() if cache else "not kept: the cache folder is not writable (see log)"
    first = "graph" if cuda and settings.compile == "auto" else settings.compile
    engine.fast, info.decode, info.decode_reason, info.warmup_s = build_decoder(
        engine.model, first, settings.decode_context)
    info.ready_s = process_age_s()
    if first != settings.compile and info.decode == "graph":
        engine.upgrade = compile_in_background(engine)
