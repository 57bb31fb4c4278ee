"""Prefix KV caches, looked up by what the model saw: token ids, and image contents where image tokens stand."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from cachetools import LRUCache


def image_key(sha256: str, input_size: tuple[int, int]) -> int:
    """A negative int naming one image at one model-input size (never equal to a token id)."""
    digest = hashlib.sha256(f"{sha256}:{input_size[0]}x{input_size[1]}".encode()).hexdigest()
    return -1 - int(digest[:15], 16)


def fingerprint(input_ids: Sequence[int], image_token_id: int, image_keys: Sequence[int],
                image_token_counts: Sequence[int]) -> np.ndarray:
    """Token ids (L,) with each image's placeholder tokens replaced by that image's key.

    Two prompts with the same text but different images then differ exactly where the images are, so a
    cached prefix can never be reused for another picture.
    """
    out = np.asarray(input_ids, dtype=np.int64).copy()
    slots = np.flatnonzero(out == image_token_id)
    if len(slots) != sum(image_token_counts):
        raise ValueError("image placeholder tokens do not match the images")
    start = 0
    for key, count in zip(image_keys, image_token_counts):
        out[slots[start:start + count]] = key
        start += count
    return out


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def usable_prefix(tokens: np.ndarray, common: int) -> int:
    """How much of a common prefix can be reused: never all of the prompt, never part of an image."""
    n = min(common, len(tokens) - 1)  # at least one token must run to give the next token's logits
    # An image's features come from the whole image at once, so a cut inside its tokens backs off to its start.
    while 0 < n < len(tokens) and tokens[n] < 0 and tokens[n - 1] == tokens[n]:
        n -= 1
    return max(n, 0)


@dataclass(eq=False)  # compared and hashed by identity: entries are the store's keys
class Entry:
    """The K/V of one token sequence: per layer (1, kv_heads, n, head_dim)."""

    tokens: np.ndarray
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    nbytes: int
    delta: int | None = None  # M-RoPE offset of text after these tokens' images (None: not recorded)


class PrefixStore:
    """Stored KV caches of earlier prompts and answers, least recently used dropped first past a byte budget."""

    def __init__(self, budget_bytes: int):
        self._entries = self._new(budget_bytes)

    @staticmethod
    def _new(budget_bytes: int) -> LRUCache:
        # Entries are the keys and their sizes the values: a lookup scans every entry, and scanning values of
        # an LRUCache would count each one as used.
        return LRUCache(maxsize=budget_bytes, getsizeof=int)

    @property
    def budget_bytes(self) -> int:
        """The most bytes all entries may hold together."""
        return int(self._entries.maxsize)

    @budget_bytes.setter
    def budget_bytes(self, value: int) -> None:
        old, self._entries = self._entries, self._new(value)
        while old:
            entry, nbytes = old.popitem()  # least recently used first, so their order carries over
            if nbytes <= value:
                self._entries[entry] = nbytes

    @property
    def nbytes(self) -> int:
        """Bytes held by all entries."""
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """Every stored entry, without counting as a use."""
        return list(self._entries)

    def lookup(self, tokens: np.ndarray) -> tuple[Entry | None, int]:
        """The entry sharing the longest usable prefix with `tokens`, and that prefix's length (0: no hit)."""
        best, best_len = None, 0
        for entry in self._entries:
            n = usable_prefix(tokens, common_prefix(tokens, entry.tokens))
            if n > best_len:
                best, best_len = entry, n
        if best is not None:
            self._entries[best]  # noqa: B018  (reading it marks it as the most recently used)
        return best, best_len

    def put(self, tokens: np.ndarray, layers: list[tuple[torch.Tensor, torch.Tensor]],
            delta: int | None = None) -> bool:
        """Keep the K/V of `tokens` (len(tokens) positions) and their M-RoPE delta; False when over the budget."""
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if nbytes > self.budget_bytes or not len(tokens):
            return False
        # An entry whose tokens are a prefix of the new one can serve nothing the new one cannot.
        for entry in [e for e in self._entries
                      if len(e.tokens) <= len(tokens) and common_prefix(e.tokens, tokens) == len(e.tokens)]:
            del self._entries[entry]
        self._entries[Entry(tokens.copy(), layers, nbytes, delta)] = nbytes  # evicts the least recently used
        return True

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
