"""The engine: a loaded Qwen-VL model that streams answers about images, one caller at a time."""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)

from vlassist import offline  # noqa: F401
from vlassist.config import Settings
from vlassist.conversation import GenerationOptions, Reply, Stats, Turn
from vlassist.engine import pixels as pixel_prep
from vlassist.engine.decode import (  # noqa
    MinNewTokens,
    cache_layers,
    choose,
    decode_step,
    new_cache,
    prefill,
    rope_positions,
    step_positions,
)
from vlassist.engine.fastdecode import build_decoder  # noqa: E402
from vlassist.engine.kvcache import PrefixStore, fingerprint, image_key  # noqa: E402
from vlassist.engine.loader import ModelInfo, load
from vlassist.engine.sizing import plan_size
from vlassist.errors import VlassistError
from vlassist.images import LoadedImage, Sizing, resize_for_model

PIXEL_MEMO_IMAGES = 4  # processed images kept for follow-ups (~50 MB each at 1920x1080)
DECODE_BLOCK = 8  # greedy tokens chosen on the device between two host reads (stop checks, streaming)


class GenerationError(VlassistError):
    """Generation failed for a reason the user can act on (e.g. out of GPU memory)."""


class _StopOnEvent(StoppingCriteria):
    """Ends generation as soon as the caller sets a threading.Event."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TimedStreamer(TextIteratorStreamer):
    """A text streamer that also records when each generated token arrived."""

    def __init__(self, tokenizer, timeout: float):
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.token_times: list[float] = []

    def put(self, value):
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            now = time.perf_counter()
            self.token_times.extend([now] * int(value.numel()))
        super().put(value)


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
        self._image_token = model.config.image_token_id
        self._merge = model.config.vision_config.spatial_merge_size
        self._pixel_memo: OrderedDict = OrderedDict()  # (sha256, input size) -> (pixel rows, grid) on the device
        self.decode_block = DECODE_BLOCK  # 0: choose every token on the host, one step at a time
        self.short_prefill = True  # few new text tokens after a reused prefix: prefill them in the static buffers

    @property
    def busy(self) -> bool:
        """True while some caller is generating."""
        return self._lock.locked()

    def plan(self, image: LoadedImage | tuple[int, int], options: GenerationOptions = GenerationOptions()) -> Sizing:
        """The model-input size and visual tokens this image will get under `options`."""
        size = image.size if isinstance(image, LoadedImage) else image
        return plan_size(size, self.info.factor, options.max_image_tokens, self.info.min_pixels, options.low_res)

    def memory(self) -> dict:
        """Device memory in use, in GiB."""
        if self.info.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            return {"allocated_gb": torch.cuda.memory_allocated() / 2**30,
                    "reserved_gb": torch.cuda.memory_reserved() / 2**30,
                    "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
                    "device_used_gb": (total - free) / 2**30, "device_total_gb": total / 2**30}
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return {"weights_gb": weights / 2**30}

    def encode(self, turns: Sequence[Turn], options: GenerationOptions):
        """Render the chat template and run the processor: (model inputs, per-image sizings)."""
        if not turns or turns[-1].role != "user":
            raise VlassistError("a conversation must end with a user turn")
        if not turns[-1].text.strip() and not turns[-1].images:
            raise VlassistError("ask a question or attach an image")
        messages, sizings = [], []
        for turn in turns:
            if turn.role == "assistant":
                messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.text}]})
                continue
            sizings += [self.plan(image, options) for image in turn.images]
            parts = [{"type": "image"} for _ in turn.images]
            messages.append({"role": "user", "content": parts + [{"type": "text", "text": turn.text}]})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pad = self.processor.image_token
        pieces = text.split(pad)
        if len(pieces) != len(sizings) + 1:
            raise VlassistError("the chat template placed a different number of images than were given")
        pixel_rows, grids = [], []
        for image, sizing in zip(_images(turns), sizings):
            rows, grid = self._pixels(image, sizing)
            pixel_rows.append(rows)
            grids.append(grid)
        # The processor's own expansion: each placeholder becomes one token per merged patch.
        expanded = pieces[0] + "".join(pad * int(g.prod() // self._merge**2) + piece
                                       for g, piece in zip(grids, pieces[1:]))
        inputs = self.processor.tokenizer([expanded], return_tensors="pt").to(self.model.device)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self._image_token).long()
        if pixel_rows:
            inputs["pixel_values"] = torch.cat(pixel_rows)  # (patches, C*T*P*P), already on the device
            inputs["image_grid_thw"] = torch.cat(grids)  # (images, 3)
        return inputs, sizings

    def _pixels(self, image: LoadedImage, sizing: Sizing):
        """One image's pixel_values rows and grid (1, 3), on the device; the last few images are kept.

        A follow-up question about the same picture then skips resizing and normalising it again.
        """
        key = (image.sha256, sizing.input_size)
        if key in self._pixel_memo:
            self._pixel_memo.move_to_end(key)
            return self._pixel_memo[key]
        resized = resize_for_model(image.image, sizing)
        if pixel_prep.supports(self.processor.image_processor, resized.size):  # normalise + patchify on the device
            self._pixel_memo[key] = pixel_prep.patchify(resized, self.processor.image_processor, self.model.device)
        else:
            area = sizing.input_size[0] * sizing.input_size[1]
            # The image arrives at its planned size; this range makes the processor keep it exactly.
            out = self.processor.image_processor(
                images=[resized], return_tensors="pt",
                size={"shortest_edge": min(self.info.min_pixels, area), "longest_edge": area})
            self._pixel_memo[key] = (out["pixel_values"].to(self.model.device),
                                     out["image_grid_thw"].to(self.model.device))
        while len(self._pixel_memo) > PIXEL_MEMO_IMAGES:
            self._pixel_memo.popitem(last=False)
        return self._pixel_memo[key]

    def stream(
        self,
        turns: Sequence[Turn],
        options: GenerationOptions = GenerationOptions(),
        stop: threading.Event | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> Reply:
        """Answer the last user turn: a Reply that yields text chunks, with stats filled in at the end."""
        stop = stop or threading.Event()
        stats = Stats()
        return Reply(self._run(list(turns), options, stop, stats, on_queued), stats, stop)

    def _run(self, turns, options, stop, stats: Stats, on_queued) -> Iterator[str]:
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
            yield from self._generate(turns, options, stop, stats, started)
        finally:
            self._lock.release()

    def _generate(self, turns, options, stop, stats: Stats, started: float) -> Iterator[str]:
        inputs, sizings = self.encode(turns, options)
        stats.images = sizings
        stats.visual_tokens = sum(s.visual_tokens for s in sizings)
        prompt_len = int(inputs["input_ids"].shape[1])
        stats.prompt_tokens = prompt_len
        streamer = _TimedStreamer(self.processor.tokenizer, timeout=self.settings.stream_timeout_s)
        result: dict = {}
        if options.seed is not None:
            torch.manual_seed(options.seed)
        keys = [image_key(image.sha256, s.input_size) for image, s in zip(_images(turns), sizings)]

        def work():
            try:
                with torch.inference_mode():
                    if options.use_cache:
                        result["ids"] = self._decode(inputs, keys, options, stop, streamer, stats)
                    else:
                        result["ids"] = self._plain_generate(inputs, options, stop, streamer)
            except BaseException as exc:  # reported to the caller's thread below
                result["error"] = exc
            finally:
                streamer.end()

        worker = threading.Thread(target=work, name="vlassist-generate", daemon=True)
        worker.start()
        drained = False
        try:
            for chunk in streamer:
                if chunk:
                    yield chunk
            drained = True
        except queue.Empty:
            stop.set()
            raise GenerationError(f"the model produced nothing for {self.settings.stream_timeout_s:g} s") from None
        finally:
            # When the caller abandons the stream, stop the worker before the device lock is released.
            if not drained:
                stop.set()
            worker.join()
            self._finish_stats(stats, streamer, result, prompt_len, started, stop)
        if "error" in result:
            exc = result["error"]
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                self.prefixes.clear()
                torch.cuda.empty_cache()
                raise GenerationError("out of GPU memory: lower the resolution or the answer length") from exc
            raise exc

    def _processors(self, options: GenerationOptions, prompt_len: int) -> list:
        """Logits processors in generate()'s order: answer-length floor, sampling, then the JSON grammar."""
        eos = sorted(self.eos_ids)
        chain: list = []
        if options.min_new_tokens:
            chain.append(MinNewTokens(prompt_len, options.min_new_tokens, eos))
        if not options.precise:
            if options.repetition_penalty != 1.0:
                chain.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
            chain += [TemperatureLogitsWarper(options.temperature), TopPLogitsWarper(options.top_p)]
        if options.json_schema:
            chain.append(self._schema_processor(options))
        return chain

    def _schema_processor(self, options: GenerationOptions):
        # Engine-side only: the grammar library works on token ids and logits.
        from vlassist.engine.constrained import schema_logits_processor

        return schema_logits_processor(self.processor.tokenizer, options.json_schema, self.model.config,
                                       max_new_tokens=options.max_new_tokens)

    def _decode(self, inputs, image_keys, options, stop, streamer, stats: Stats) -> torch.Tensor:
        """Prefill what no stored cache covers, then decode token by token; keep the K/V for the next turn."""
        model, ids = self.model, inputs["input_ids"]  # ids: (1, L)
        grid = inputs.get("image_grid_thw")  # (images, 3) or None
        length = ids.shape[1]
        counts = [] if grid is None else (grid.prod(-1) // self._merge**2).tolist()
        tokens = fingerprint(ids[0].tolist(), self._image_token, image_keys, counts)
        entry, reused = self.prefixes.lookup(tokens)
        stats.reused_tokens = reused
        total = length + options.max_new_tokens
        fast = self.fast if self.fast is not None and self.fast.fits(total) else None
        if self._short_prefill_fits(fast, entry, tokens, reused, total):
            # Only text follows the reused prefix: positions continue it, so the whole-prompt M-RoPE pass is
            # needed only when the stored entry did not record its delta or has images past the cut.
            delta = entry.delta if entry.delta is not None and (entry.tokens[reused:] >= 0).all() else rope_positions(
                model, ids, inputs.get("mm_token_type_ids"), grid)[1]
            scores = fast.prefill_short(ids[:, reused:], tokens, reused, delta, entry.layers, total)  # (1, V)
            cache = None
        else:
            positions, delta = rope_positions(model, ids, inputs.get("mm_token_type_ids"), grid)  # (4, 1, L)
            pixels, new_grid = _uncached_images(inputs.get("pixel_values"), grid, tokens, reused)
            cache = new_cache(model, entry.layers if entry else None, reused)
            scores = prefill(model, ids[:, reused:], positions[:, :, reused:], cache, pixels, new_grid)  # (1, V)
            if fast is not None:
                fast.start(cache, length, total)
        streamer.put(ids.cpu())
        processors, sequence = self._processors(options, length), ids
        token = choose(scores, sequence, processors, greedy=options.precise)  # (1,) on the device
        if (fast is not None and self.decode_block > 0 and options.precise and not options.json_schema
                and fast.greedy_ready()):
            answer = self._greedy_blocks(fast, token, length, delta, options, stop, streamer)
            fed = length + len(answer) - 1  # the last chosen token's K/V is not kept (as on the per-step path)
            self._keep(np.concatenate([tokens, np.asarray(answer[:-1], dtype=np.int64)]), fast.layers(fed), delta, fast)
            return torch.cat([ids.cpu(), torch.tensor([answer], dtype=ids.dtype)], dim=1)
        for step in range(options.max_new_tokens):
            sequence = torch.cat([sequence, token.view(1, 1)], dim=1)
            last = step == options.max_new_tokens - 1
            if not last:
                # Queue the next step before the host waits for this token: the GPU works while the host streams
                # text. If this token ends the answer, that one step is wasted; nothing reads its K/V.
                index = length + step  # cache slot of the token just chosen
                scores = (fast.step(token, index, delta) if fast is not None else
                          decode_step(model, token.view(1, 1), step_positions(index, delta, ids.device), cache))
            chosen = token.cpu()  # waits for the choice only; reading `token` again would wait for the step too
            streamer.put(chosen)
            if int(chosen) in self.eos_ids or stop.is_set() or last:
                break
            token = choose(scores, sequence, processors, greedy=options.precise)
        fed = sequence.shape[1] - 1  # the last chosen token never ran through the model
        answer = sequence[0, length:fed].cpu().numpy()
        layers = fast.layers(fed) if fast is not None else cache_layers(cache, fed)
        self._keep(np.concatenate([tokens, answer]), layers, delta, fast)
        return sequence

    def _short_prefill_fits(self, fast, entry, tokens, reused: int, total: int) -> bool:
        """True if the new tokens are few, all text, and can be prefilled straight into the static buffers."""
        return (fast is not None and self.short_prefill and entry is not None and reused > 0
                and bool((tokens[reused:] >= 0).all()) and fast.takes(len(tokens) - reused, reused, total))

    def _keep(self, tokens: np.ndarray, layers, delta: int, fast) -> None:
        """Store the K/V of `tokens`; the static buffers still hold them, so a follow-up need not copy them back."""
        self.prefixes.put(tokens, layers, delta)
        if fast is not None:
            fast.held = tokens

    def _greedy_blocks(self, fast, token, length, delta, options, stop, streamer) -> list[int]:
        """Greedy answer tokens chosen on the device, read back every `decode_block` steps.

        Each block is queued before the host waits for the previous one's tokens, so the GPU never idles on the
        host. Steps past an end-of-answer token inside a block are wasted work; their tokens are dropped and
        their K/V lies beyond what is kept.
        """
        until = length + options.min_new_tokens if options.min_new_tokens else 0
        fast.begin(token, length, delta, until, sorted(self.eos_ids))
        pending = fast.read(length, length + 1)  # the first token: streamed before any block is waited for
        queued, left, answer = length + 1, options.max_new_tokens - 1, []
        while True:
            steps = min(self.decode_block, left)
            fast.advance(steps)
            left -= steps
            chosen = fast.tokens(pending)
            ends = next((i for i, t in enumerate(chosen) if t in self.eos_ids), None)
            if ends is not None:
                chosen = chosen[:ends + 1]
            answer += chosen
            streamer.put(torch.tensor(chosen))
            if ends is not None or stop.is_set() or not steps:
                return answer
            pending = fast.read(queued, queued + steps)
            queued += steps

    def _plain_generate(self, inputs, options, stop, streamer) -> torch.Tensor:
        """The reference path: transformers generate() on the whole prompt, nothing reused or kept."""
        kwargs = dict(
            **inputs, streamer=streamer, max_new_tokens=options.max_new_tokens,
            min_new_tokens=options.min_new_tokens or None, stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
            pad_token_id=self.processor.tokenizer.pad_token_id, **options.sampling_kwargs(),
        )
        if options.json_schema:
            kwargs["logits_processor"] = LogitsProcessorList([self._schema_processor(options)])
        return self.model.generate(**kwargs)

    def _finish_stats(self, stats: Stats, streamer: _TimedStreamer, result: dict, prompt_len: int, started, stop):
        times = streamer.token_times
        stats.total_s = time.perf_counter() - started
        stats.new_tokens = len(times)
        if times:
            stats.ttft_s = times[0] - started
            if len(times) > 1:
                stats.tokens_per_s = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
        if "error" in result:
            stats.stop_reason, stats.error = "error", str(result["error"]).splitlines()[0][:300] if str(
                result["error"]) else type(result["error"]).__name__
        elif "ids" in result and result["ids"].shape[1] > prompt_len and int(result["ids"][0, -1]) in self.eos_ids:
            stats.stop_reason = "eos"
        elif stop.is_set():
            stats.stop_reason = "stopped"
        else:
            stats.stop_reason = "length"


def _images(turns) -> list[LoadedImage]:
    """Every image of the conversation, in prompt order."""
    return [image for turn in turns if turn.role == "user" for image in turn.images]


def _uncached_images(pixel_values, grid, tokens: np.ndarray, reused: int):
    """pixel_values rows and image_grid_thw of the images whose tokens start at or after `reused`."""
    if grid is None:
        return None, None
    starts = np.flatnonzero((tokens < 0) & (np.r_[0, tokens[:-1]] != tokens))  # first token of each image
    first_new = int((starts < reused).sum())
    if first_new == len(grid):
        return None, None
    rows = int(grid[:first_new].prod(-1).sum())
    return pixel_values[rows:], grid[first_new:]


def load_engine(settings: Settings) -> Engine:
    """Load the checkpoint named by settings and return a ready engine."""
    model, processor, _family, info = load(settings)
    engine = Engine(model, processor, info, settings)
    engine.fast, info.decode, info.decode_reason, info.warmup_s = build_decoder(
        model, settings.compile, settings.decode_context)
    return engine
