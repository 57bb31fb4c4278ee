"""Where answer tokens go: a text streamer that notes when each token arrived, and the stats made from that."""

from __future__ import annotations

import threading
import time

import torch
from transformers import StoppingCriteria, TextIteratorStreamer

from vlassist.conversation import Stats
from vlassist.errors import error_line


class TimedStreamer(TextIteratorStreamer):
    """A text streamer that also records when each generated token arrived."""

    def __init__(self, tokenizer, timeout: float):
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.token_times: list[float] = []

    def put(self, value):
        """Take token ids (the prompt first, then answer tokens), noting the answer tokens' arrival."""
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            now = time.perf_counter()
            self.token_times.extend([now] * int(value.numel()))
        super().put(value)


class StopOnEvent(StoppingCriteria):
    """Ends generate() as soon as the caller sets a threading.Event."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def finish_stats(stats: Stats, streamer: TimedStreamer, started: float, stopped: bool, eos_ids,
                 output=None, error: BaseException | None = None) -> None:
    """Fill in timings, the answer's length and why it ended, once the worker is done.

    `output` is the whole sequence (1, L + new) when the worker finished, `error` what it raised otherwise.
    """
    times = streamer.token_times
    stats.total_s = time.perf_counter() - started
    stats.new_tokens = len(times)
    if times:
        stats.ttft_s = times[0] - started
        if len(times) > 1:
            stats.tokens_per_s = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
    if error is not None:
        stats.stop_reason = "error"
        stats.error = error_line(error)
    elif output is not None and output.shape[1] > stats.prompt_tokens and int(output[0, -1]) in eos_ids:
        stats.stop_reason = "eos"
    elif stopped:
        stats.stop_reason = "stopped"
    else:
        stats.stop_reason = "length"
