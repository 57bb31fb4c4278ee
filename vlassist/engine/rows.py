"""One answer as a row of the continuous decode batch: its options, token choice, prefill chunks and end test.

Every per-row decision lives here so that a batch of rows with different options behaves, row by row, as each
answer would alone: its own logits processors (answer-length floor, sampling warpers, JSON grammar), its own
random stream (seeded as the single-answer path seeds it), its own stop strings and limits.
V is the vocabulary size, L the prompt's length in tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from vlassist.engine import generate


def choose_row(scores: torch.Tensor, sequence: torch.Tensor, processors: list, greedy: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of one row, a 0-d tensor, from its logits (1, V) after its processors saw its ids (1, L + n)."""
    # The one place a row's token is chosen: per-row logits functions (penalties, bias, log-probabilities) go here.
    for processor in processors:
        scores = processor(sequence, scores)
    if greedy:
        return scores.argmax(dim=-1)[0]  # left on the device: the batch reads every row's token in one transfer
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=generator)[0, 0]


def row_generator(seed: int | None, device) -> torch.Generator:
    """A row's own random stream: seeded as torch.manual_seed(seed) seeds the single-answer path."""
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def prefill_chunks(tokens: np.ndarray, start: int, size: int) -> list[tuple[int, int]]:
    """Slices [a, b) of the prompt past `start`, about `size` tokens each, never cutting an image's tokens."""
    # An image's features come from the whole image at once, so a chunk holds each of its images whole: a cut
    # that falls inside an image moves back to the image's start, or (if the chunk would be empty) past its end.
    chunks, a, length = [], start, len(tokens)
    while a < length:
        b = min(a + max(size, 1), length)
        if b < length and tokens[b] < 0 and tokens[b - 1] == tokens[b]:
            first = b
            while first > a and tokens[first - 1] == tokens[b]:
                first -= 1
            if first > a:
                b = first
            else:
                while b < length and tokens[b] == tokens[first]:
                    b += 1
        chunks.append((a, b))
        a = b
    return chunks


def chunk_images(pixel_values, grid, tokens: np.ndarray, a: int, b: int):
    """pixel_values rows and image_grid_thw of the images whose tokens start inside [a, b) (None, None if none)."""
    if grid is None:
        return None, None
    starts = np.flatnonzero((tokens < 0) & (np.r_[0, tokens[:-1]] != tokens))  # first token of each image
    inside = [i for i, s in enumerate(starts) if a <= s < b]
    if not inside:
        return None, None
    sizes = grid.prod(-1).tolist()  # pixel rows per image
    first = int(sum(sizes[:inside[0]]))
    count = int(sum(sizes[i] for i in inside))
    return pixel_values[first:first + count], grid[inside[0]:inside[-1] + 1]


@dataclass(eq=False)
class Row:
    """One answer in the decode batch: what it has chosen so far, where it is, and why it ended."""

    gen: generate.Generation
    processors: list = field(default_factory=list)
    generator: torch.Generator | None = None
    chunks: list[tuple[int, int]] = field(default_factory=list)  # prefill slices still to run
    sequence: torch.Tensor | None = None  # (1, L + chosen): the ids its processors read
    answer: list[int] = field(default_factory=list)  # answer ids chosen so far
    index: int = 0  # K/V positions it holds, as if alone: L, then one more per fed token
    shared: int = 1  # the most rows that shared one of its decode steps
    ended: str | None = None  # "eos", "length", "stopped" or "stop_string" once it leaves
    done: threading.Event = field(default_factory=threading.Event)
    queued_at: float = 0.0
    started: float = 0.0  # when its prefill began (it left the queue)
    positions: torch.Tensor | None = None  # (4, 1, L) the prompt's positions, for its prefill chunks

    @property
    def options(self):
        """The row's own generation options."""
        return self.gen.options

    def accept(self, token: int, eos_ids, tokenizer) -> bool:
        """Take the chosen token, stream it; True if the row has ended with it."""
        self.answer.append(token)
        self.sequence = torch.cat([self.sequence, self.sequence.new_tensor([[token]])], dim=1)
        self.gen.sink.put(torch.tensor([token]))
        if token in eos_ids:
            self.ended = "eos"
        elif self.gen.stop.is_set():
            self.ended = "stopped"
        elif self._hit_stop_string(token, tokenizer):
            self.ended = "stop_string"
        elif len(self.answer) >= self.options.max_new_tokens:
            self.ended = "length"
        return self.ended is not None

    def _hit_stop_string(self, token: int, tokenizer) -> bool:
        """True once the answer's text contains one of the row's stop strings (only the new tail is searched)."""
        stops = self.options.stop_strings
        if not stops:
            return False
        # Decoding the last few tokens again covers a stop string split across tokens without decoding it all.
        longest = max(len(s) for s in stops)
        recent = tokenizer.decode(self.answer[-(longest + 4):], skip_special_tokens=True)
        return any(stop in recent for stop in stops)
