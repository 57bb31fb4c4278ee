"""How many answers decode together and how much K/V they may hold, from the memory budget; batch jobs through it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from vlassist.conversation import GenerationOptions, Stats, Turn
from vlassist.engine.batched import BUDGET_GB, RESERVE_GB, kv_bytes_per_token
from vlassist.engine.scheduler import Scheduler
from vlassist.errors import VlassistError, error_line

if TYPE_CHECKING:
    from vlassist.engine.core import Engine

# Auto slots on CUDA: rows of a typical screenshot question (a 1024² image is ~1.3k tokens) and its answer, and
# the most rows chosen. Measured on an H200 under a 24 GiB cap (7B, 1024² screenshots, docs/PERFORMANCE.md): with
# 16 slots 15 of 16 simultaneous answers failed and the server stopped answering; with 8 slots all 16 were answered
# (8 at a time, the others queued). VLASSIST_PARALLEL sets more where memory allows.
TYPICAL_ROW_TOKENS = 2048
MAX_AUTO_SLOTS = 8


def plan(engine: Engine) -> tuple[int, int | None]:
    """(slots, K/V room in tokens): VLASSIST_PARALLEL or the room's share; on the CPU 1 slot and no cap unless set."""
    settings = engine.settings
    if engine.info.device != "cuda":
        return max(1, settings.parallel), None
    # The room is the smaller of the device's free memory and the budget (VLASSIST_GPU_MEMORY_GB, else 24 GB) less
    # what is allocated now (weights, static buffers), less the prefix store's budget and one prefill's reserve.
    free, _total = torch.cuda.mem_get_info()
    budget = (settings.gpu_memory_gb or BUDGET_GB) * 2**30 - torch.cuda.memory_allocated()
    room = min(free, budget) - (RESERVE_GB + settings.kv_cache_gb) * 2**30
    room_tokens = max(0, int(room // kv_bytes_per_token(engine.model)))
    auto = max(1, min(MAX_AUTO_SLOTS, room_tokens // TYPICAL_ROW_TOKENS))
    return (settings.parallel or auto), room_tokens


def make_scheduler(engine: Engine) -> Scheduler | None:
    """The engine's continuous decode batch, or None when one answer at a time is all it may run."""
    count, room = plan(engine)
    if count <= 1:
        return None
    return Scheduler(engine, count, room, engine.settings.prefill_chunk)


def answer_through(engine: Engine, conversations: Sequence[Sequence[Turn]], options: GenerationOptions,
                   stops: Sequence[threading.Event] | None = None) -> list[tuple[str, Stats]]:
    """Answer one-question conversations as rows of the continuous batch: (text, stats) each, in order."""
    stops = list(stops) if stops is not None else [threading.Event() for _ in conversations]
    replies, results = [], []
    for turns, stop in zip(conversations, stops):
        try:
            replies.append(engine.stream(turns, options, stop))
        except VlassistError as exc:  # one bad question is that row's error, not the batch's
            replies.append(exc)
    for reply in replies:  # every row streams into its own queue: reading them in turn loses nothing
        if isinstance(reply, BaseException):
            stats = Stats(stop_reason="error")
            stats.error = error_line(reply)
            results.append(("", stats))
            continue
        try:
            results.append((reply.consume(), reply.stats))
        except VlassistError as exc:
            reply.stats.stop_reason, reply.stats.error = "error", error_line(exc)
            results.append((reply.text, reply.stats))
    return results
