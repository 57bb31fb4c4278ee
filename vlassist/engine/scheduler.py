"""Continuous batching: answers join the decode batch between two steps and leave it the step they end.

A decode step reads every weight once whether it serves 1 row or 8, so concurrent answers share steps. One loop
thread owns the batch; each turn of the loop, under the engine's device lock:
- admit: the oldest waiting answer takes a free slot if its prompt + answer fits the K/V room left (FIFO: a
  newcomer that does not fit waits, and so does everyone behind it);
- prefill one chunk of the answer being admitted (its own prefix reuse, its own M-RoPE positions), so a long
  prompt is interleaved with the others' decode steps instead of freezing their streams; after its last chunk its
  first token is chosen and it joins the batch, its cache right-aligned beside the others' (left padding masked);
- one decode step for every row in the batch, each at its own position; each row's token is chosen by
  rows.choose_row with its own options; a row that ends (end token, length, stop string, cancel) leaves at once,
  its K/V kept in the prefix store for a follow-up, and the padding no remaining row needs is cut.
Greedy rows get the token ids each answer gets alone (float32 on the CPU: tests/test_continuous.py).
B is the number of rows in the batch, K the batched cache's length, V the vocabulary size.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.attention import sdpa_kernel

from vlassist.engine import generate
from vlassist.engine.decode import PREFILL_BACKENDS, decode_step, logits_processors, new_cache, prefill, rope_positions
from vlassist.engine.rows import Row, choose_row, chunk_images, prefill_chunks, row_generator

if TYPE_CHECKING:
    from vlassist.engine.core import Engine

log = logging.getLogger(__name__)


class Scheduler:
    """The continuous decode batch of one engine: up to `slots` rows, within `room_tokens` of K/V (None: no cap)."""

    def __init__(self, engine: Engine, slots: int, room_tokens: int | None, chunk_tokens: int, start: bool = True):
        self.engine, self.slots, self.room_tokens, self.chunk_tokens = engine, slots, room_tokens, chunk_tokens
        self._waiting: deque[Row] = deque()
        self._filling: Row | None = None  # the row being prefilled, chunk by chunk
        self._twins: dict[int, list[Row]] = {}  # id(row) → rows that share its prefill (n choices)
        self._live: list[Row] = []
        self.cache = None  # the batched DynamicCache: per layer (B, kv_heads, K, head_dim)
        self.mask: torch.Tensor | None = None  # (B, K): False on each row's left padding
        self.steps = 0  # decode steps run, for benchmarks
        # A lone row decodes in the engine's static buffers (the captured graph step on CUDA) until a second row
        # joins; then its K/V move into the batched cache. The decoder is kept here: an upgrade may swap the engine's.
        self.solo = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="vlassist-batch", daemon=True)
        if start:
            self._thread.start()

    # ---- what the engine calls ----

    def submit(self, gen: generate.Generation, copies: list[generate.Generation] = ()) -> list[Row]:
        """Queue an answer (and `copies` that share its prefill: n choices); its rows, which end with `done` set."""
        rows = [Row(gen, queued_at=time.perf_counter())]
        rows += [Row(copy, queued_at=rows[0].queued_at) for copy in copies]
        with self._wake:
            if self._closed:
                raise RuntimeError("the decode batch is closed")
            if copies:
                self._twins[id(rows[0])] = rows[1:]
            self._waiting.append(rows[0])
            self._wake.notify_all()
        return rows

    def must_wait(self) -> bool:
        """True if an answer submitted now would wait for a slot (every slot taken, or others already wait)."""
        with self._wake:
            return bool(self._waiting) or self._taken() >= self.slots

    @property
    def busy(self) -> bool:
        """True while any answer is waiting, being prefilled or decoding."""
        with self._wake:
            return bool(self._waiting or self._filling or self._live)

    def fits(self, total_tokens: int) -> bool:
        """True if one row of `total_tokens` (prompt and answer) fits the K/V room at all."""
        return self.room_tokens is None or total_tokens <= self.room_tokens

    def close(self, timeout: float | None = None) -> None:
        """Let the rows in hand end, then stop the loop thread."""
        with self._wake:
            self._wake.wait_for(lambda: not (self._waiting or self._filling or self._live), timeout)
            self._closed = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the loop thread ----

    def _taken(self) -> int:
        filling = 1 + len(self._twins.get(id(self._filling), ())) if self._filling else 0
        return len(self._live) + filling

    def _room_for(self, row: Row) -> bool:
        """Slots and K/V room for `row` and its twins beside the live rows (rows are padded to the longest)."""
        count = 1 + len(self._twins.get(id(row), ()))
        if self._taken() + count > self.slots and self._taken():
            return False
        if self.room_tokens is None:
            return True
        longest = max([r.gen.total for r in self._live] + [row.gen.total])
        return (len(self._live) + count) * longest <= self.room_tokens or not self._live

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or self._filling or self._live or self._waiting)
                if self._closed:
                    return
            self.turn()

    def turn(self) -> bool:
        """One turn of the loop: admit the oldest waiting answer if it fits, one prefill chunk, one decode step."""
        # Called by the loop thread; tests built with start=False call it themselves to place joins exactly.
        with self._wake:
            dropped = self._drop_cancelled_waiting()
            row = None
            if self._filling is None and self._waiting and self._room_for(self._waiting[0]):
                row = self._filling = self._waiting.popleft()
            worked = bool(dropped or self._filling or self._live)
        for gone in dropped:
            self._end_unstarted(gone, "stopped")
        try:
            with self.engine.device_lock(), torch.inference_mode(), self._backends():
                if row is not None:
                    self._begin(row)
                if self._filling is not None:
                    self._prefill_chunk(self._filling)
                if self._live:
                    self._step()
        except Exception as exc:  # never leave a caller waiting forever: every row in hand ends with the error
            log.exception("the decode batch failed")
            self._fail_all(exc)
        finally:
            with self._wake:
                self._wake.notify_all()
        return worked

    def _fail_all(self, exc: BaseException) -> None:
        if self._filling is not None:
            self._fail_filling(self._filling, exc)
        for row in self._live:
            row.gen.error = exc
        if self._live:
            self._leave(list(range(len(self._live))), store=False)

    def _backends(self):
        # The batched cache grows every step, and cuDNN's SDPA would build a plan for each new shape (see batched.py).
        cuda = self.engine.info.device == "cuda"
        return sdpa_kernel(PREFILL_BACKENDS) if PREFILL_BACKENDS and cuda else contextlib.nullcontext()

    def _drop_cancelled_waiting(self) -> list[Row]:
        gone = [row for row in self._waiting if row.gen.stop.is_set()
                and all(t.gen.stop.is_set() for t in self._twins.get(id(row), ()))]
        for row in gone:
            self._waiting.remove(row)
        return gone

    # ---- admitting one answer: prefix lookup, chunked prefill, first token ----

    def _begin(self, row: Row) -> None:
        engine, gen = self.engine, row.gen
        row.started = time.perf_counter()
        for twin in self._twins.get(id(row), ()):
            twin.started = row.started  # the copies left the queue with it: one prefill serves them all
        try:
            generate.look_up_prefix(engine, gen)
            gen.fast = None  # the static buffers hold one answer; batch rows live in the batched cache
            if not gen.options.use_cache:
                gen.entry, gen.reused, gen.stats.reused_tokens = None, 0, 0
            inputs = gen.inputs
            row.positions, gen.delta = rope_positions(engine.model, inputs["input_ids"],
                                                      inputs.get("mm_token_type_ids"), inputs.get("image_grid_thw"))
            gen.cache = new_cache(engine.model, gen.entry.layers if gen.entry else None, gen.reused)
            row.chunks = prefill_chunks(gen.tokens, gen.reused, self.chunk_tokens)
        except Exception as exc:
            self._fail_filling(row, exc)

    def _prefill_chunk(self, row: Row) -> None:
        engine, gen = self.engine, row.gen
        try:
            a, b = row.chunks.pop(0)
            inputs = gen.inputs
            pixels, grid = chunk_images(inputs.get("pixel_values"), inputs.get("image_grid_thw"), gen.tokens, a, b)
            scores = prefill(engine.model, inputs["input_ids"][:, a:b], row.positions[:, :, a:b], gen.cache,
                             pixels, grid)  # (1, V)
            if row.chunks:
                return
            layers = [(layer.keys, layer.values) for layer in gen.cache.layers]  # (1, kv_heads, L, head_dim)
            gen.cache = None
            rows = [row] + self._twins.pop(id(row), [])
            with self._wake:
                self._filling = None
            for twin in rows:
                self._first_token(twin, row, scores, layers)
        except Exception as exc:
            self._fail_filling(row, exc)

    def _first_token(self, row: Row, leader: Row, scores: torch.Tensor, layers) -> None:
        """Choose the row's first token from the shared prefill's logits, then join the batch (or end)."""
        engine, gen = self.engine, row.gen
        if row is not leader:
            gen.tokens, gen.delta, gen.entry = leader.gen.tokens, leader.gen.delta, leader.gen.entry
            gen.stats.reused_tokens, row.started = leader.gen.reused, leader.started
        ids = gen.inputs["input_ids"]  # (1, L)
        gen.sink.put(ids.cpu())  # the prompt: the streamer skips it
        row.index = gen.length
        row.sequence = ids
        row.processors = logits_processors(gen.options, gen.length, engine.eos_ids, engine.processor.tokenizer,
                                           engine.model.config)
        if not gen.options.precise:
            row.generator = row_generator(gen.options.seed, ids.device)
        token = int(choose_row(scores, ids, row.processors, gen.options.precise, row.generator))
        self._note_logprob(row, scores[0], token)
        if row.accept(token, engine.eos_ids, engine.processor.tokenizer):
            self._finish(row, layers, gen.length)
        else:
            self._join(row, layers)

    def _note_logprob(self, row: Row, raw: torch.Tensor, token: int) -> None:
        """Note the chosen token's log-probability (from the raw logits, (V,)) when the row asked for them."""
        gen = row.gen
        if getattr(gen, "logprobs", None) is None or token in self.engine.eos_ids:
            return  # the end-of-answer token is no part of the text, so none of its logprobs
        from vlassist.engine import sampling

        gen.logprobs.append(sampling.token_logprob(self.engine.processor.tokenizer, raw, token, gen.options.logprobs))

    def _fail_filling(self, row: Row, exc: BaseException) -> None:
        log.debug("prefill failed", exc_info=True)
        rows = [row] + self._twins.pop(id(row), [])
        with self._wake:
            if self._filling is row:
                self._filling = None
        for failed in rows:
            failed.gen.error = exc
            failed.gen.cache = None
            self._end_unstarted(failed, None)

    def _end_unstarted(self, row: Row, reason: str | None) -> None:
        row.ended = reason
        for twin in self._twins.pop(id(row), []):
            twin.ended = reason
            twin.gen.sink.end()
            twin.done.set()
        row.gen.sink.end()
        row.done.set()

    # ---- the batch: join, step, leave ----

    def _join(self, row: Row, layers) -> None:
        """Put the row's prompt K/V into the batched cache, right-aligned; the other rows are padded if shorter."""
        length = row.index
        fast = self.engine.fast
        if not self._live and fast is not None and fast.fits(row.gen.total):
            fast.start(new_cache(self.engine.model, layers, length), length, row.gen.total)
            self.solo = fast
            with self._wake:
                self._live.append(row)
            return
        if self.solo is not None:
            self._unsolo()
        if not self._live:
            self.cache = new_cache(self.engine.model, layers, length)
            self.mask = torch.ones(1, length, dtype=torch.bool, device=layers[0][0].device)
            with self._wake:
                self._live.append(row)
            return
        width = self.mask.shape[1]
        grow = max(0, length - width)
        wide = width + grow
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.keys = _append_row(layer.keys, keys[:, :, :length], grow, wide)
            layer.values = _append_row(layer.values, values[:, :, :length], grow, wide)
        slots = torch.arange(wide, device=self.mask.device)
        mask = torch.cat([self.mask.new_zeros(len(self._live), grow), self.mask], dim=1)
        self.mask = torch.cat([mask, (slots >= wide - length).view(1, -1)])
        with self._wake:
            self._live.append(row)

    def _unsolo(self) -> None:
        """Move the lone row's K/V out of the static buffers into a batched cache of one row."""
        row = self._live[0]
        self.cache = new_cache(self.engine.model, self.solo.layers(row.index), row.index)
        self.mask = torch.ones(1, row.index, dtype=torch.bool, device=row.sequence.device)
        self.solo = None

    def _solo_step(self) -> torch.Tensor:
        """The lone row's next logits (1, V) from the static buffers' step."""
        row = self._live[0]
        token = row.sequence.new_tensor([row.answer[-1]])
        return self.solo.step(token, row.index, row.gen.delta)

    def _step(self) -> None:
        """One decode step for every live row; rows that end (or were cancelled) leave the batch."""
        cancelled = [i for i, row in enumerate(self._live) if row.gen.stop.is_set()]
        if cancelled:
            for i in cancelled:
                self._live[i].ended = "stopped"
            self._leave(cancelled)
            if not self._live:
                return
        rows = self._live
        count = len(rows)
        for row in rows:
            row.shared = max(row.shared, count)
        try:
            if self.solo is not None:
                scores = self._solo_step()  # (1, V)
            else:
                device = self.mask.device
                token = torch.tensor([[row.answer[-1]] for row in rows], device=device)  # (B, 1)
                at = torch.tensor([row.index for row in rows], device=device)  # (B,) cache index as if alone
                delta = torch.tensor([row.gen.delta for row in rows], device=device)
                positions = torch.stack([at, at + delta, at + delta, at + delta]).view(4, count, 1)
                self.mask = torch.cat([self.mask, self.mask.new_ones(count, 1)], dim=1)  # (B, K + 1): fed token
                scores = decode_step(self.engine.model, token, positions, self.cache, self.mask)  # (B, V)
        except Exception as exc:
            for row in rows:
                row.gen.error = exc
            self._leave(list(range(count)), store=False)
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                self.engine.prefixes.clear()
                torch.cuda.empty_cache()
            return
        self.steps += 1
        chosen = torch.stack([choose_row(scores[i:i + 1], row.sequence, row.processors, row.options.precise,
                                         row.generator) if (row.processors or not row.options.precise)
                              else scores[i].argmax() for i, row in enumerate(rows)]).tolist()
        ended = []
        for i, (row, token_id) in enumerate(zip(rows, chosen)):
            row.index += 1
            self._note_logprob(row, scores[i], int(token_id))
            if row.accept(int(token_id), self.engine.eos_ids, self.engine.processor.tokenizer):
                ended.append(i)
        if ended:
            self._leave(ended)

    def _leave(self, indices: list[int], store: bool = True) -> None:
        """End the rows at `indices`: keep their K/V as prefixes, drop them and the padding nobody needs."""
        if self.solo is not None:  # the lone row ends: its K/V are in the static buffers
            row = self._live[0]
            self._finish(row, self.solo.layers(row.index) if store else None, row.index)
            with self._wake:
                self._live = []
            self.solo = None
            return
        width = self.mask.shape[1]
        for i in indices:
            row = self._live[i]
            layers = [(layer.keys[i:i + 1, :, width - row.index:], layer.values[i:i + 1, :, width - row.index:])
                      for layer in self.cache.layers] if store else None
            self._finish(row, layers, row.index)
        keep = [i for i in range(len(self._live)) if i not in set(indices)]
        with self._wake:
            self._live = [self._live[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        self.cache.batch_select_indices(torch.tensor(keep, device=self.mask.device))
        self.mask = self.mask[keep]
        first = int(self.mask.any(dim=0).nonzero()[0])
        if first:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def _finish(self, row: Row, layers, held: int) -> None:
        """The row's output ids, its K/V (`held` positions) stored for a follow-up, and its stream ended."""
        gen = row.gen
        ids = gen.inputs["input_ids"].cpu()
        gen.output = torch.cat([ids, torch.tensor([row.answer], dtype=ids.dtype)], dim=1)
        if layers is not None and gen.options.use_cache and gen.error is None:
            answer = np.asarray(row.answer[:held - gen.length], dtype=np.int64)
            kept = [(k[:, :, :held].clone(), v[:, :, :held].clone()) for k, v in layers]  # not views of the batch
            self.engine.prefixes.put(np.concatenate([gen.tokens, answer]), kept, gen.delta)
        gen.sink.end()
        row.done.set()


def _append_row(batch: torch.Tensor, row: torch.Tensor, grow: int, wide: int) -> torch.Tensor:
    """The batch's (B, H, K, D) padded left by `grow`, with `row` (1, H, L, D) right-aligned in `wide` slots below."""
    if grow:
        batch = torch.cat([batch.new_zeros(batch.shape[0], batch.shape[1], grow, batch.shape[3]), batch], dim=2)
    padded = row.new_zeros(1, row.shape[1], wide, row.shape[3])
    padded[:, :, wide - row.shape[2]:] = row
    return torch.cat([batch, padded])
