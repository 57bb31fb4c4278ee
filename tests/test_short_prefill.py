"""Short follow-ups prefilled straight into the static buffers (padded to a bucket): same answers and K/V."""

import numpy as np
import pytest
import torch
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine.decode import rope_positions
from vlassist.images import load_image

FORCED = GenerationOptions(max_new_tokens=12, min_new_tokens=12, max_image_tokens=256)
FREE = GenerationOptions(max_new_tokens=12, max_image_tokens=256)


def _img(size=(96, 64), color=(200, 30, 30)):
    return load_image(image_bytes(size, color))


class _Count:
    """Counts calls of one decoder method, still running it."""

    def __init__(self, fast):
        self.fast, self.calls, self.original = fast, 0, fast.prefill_short

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)
        self.fast.prefill_short = counted
        return self

    def __exit__(self, *exc):
        del self.fast.prefill_short


def _conversation(engine, questions, options, short=True, image=None):
    """Answer each question in turn in one conversation; the texts, stats and the longest stored entry."""
    engine.short_prefill = short
    engine.prefixes.clear()
    try:
        turns, texts, stats = [], [], []
        for i, question in enumerate(questions):
            turns.append(Turn("user", question, [image or _img()] if i == 0 else []))
            reply = engine.stream(turns, options)
            texts.append(reply.consume())
            stats.append(reply.stats)
            turns.append(Turn("assistant", texts[-1]))
        entry = max(engine.prefixes.entries(), key=lambda e: len(e.tokens))
        return texts, stats, entry
    finally:
        engine.short_prefill = True


QUESTIONS = ["what is this", "and the colour?", "is there any text in it", "describe the corners"]


def test_follow_ups_take_the_short_path_with_the_same_answers_and_cache(static_engine):
    """Follow-ups through the short prefill answer as the eager prefill does and as generate(), with equal K/V."""
    with _Count(static_engine.fast) as count:
        short, stats, short_entry = _conversation(static_engine, QUESTIONS, FORCED)
    assert count.calls == len(QUESTIONS) - 1 and all(s.reused_tokens > 0 for s in stats[1:])
    eager, _, eager_entry = _conversation(static_engine, QUESTIONS, FORCED, short=False)
    assert short == eager
    assert np.array_equal(short_entry.tokens, eager_entry.tokens) and short_entry.delta == eager_entry.delta
    for (k1, v1), (k2, v2) in zip(short_entry.layers, eager_entry.layers):
        torch.testing.assert_close(k1, k2, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v1, v2, rtol=1e-4, atol=1e-5)
    turns = []
    for question, text in zip(QUESTIONS, short):
        turns.append(Turn("user", question, [] if turns else [_img()]))
        plain = static_engine.stream(turns, GenerationOptions(max_new_tokens=12, min_new_tokens=12,
                                                              max_image_tokens=256, use_cache=False)).consume()
        assert plain == text
        turns.append(Turn("assistant", text))


@pytest.mark.parametrize("buckets", [(16, 32, 64, 128), (128,), (64, 128)])
def test_padding_to_any_bucket_gives_the_same_answers(static_engine, buckets):
    """How far the new tokens are padded changes nothing: padded slots are hidden and later overwritten."""
    reference, _, _ = _conversation(static_engine, QUESTIONS[:3], FREE, short=False)
    fast = static_engine.fast
    original = fast.prefill_sizes
    fast.prefill_sizes = buckets
    try:
        texts, _, _ = _conversation(static_engine, QUESTIONS[:3], FREE)
    finally:
        fast.prefill_sizes = original
    assert texts == reference


def test_buffers_overwritten_in_between_are_refilled_from_the_store(static_engine):
    """After another picture ran, a follow-up copies its stored prefix back in and still answers the same."""
    reference, _, _ = _conversation(static_engine, QUESTIONS[:2], FORCED, short=False)
    static_engine.prefixes.clear()
    first = [Turn("user", QUESTIONS[0], [_img()])]
    text = static_engine.stream(first, FORCED).consume()
    held = static_engine.fast.held.copy()
    static_engine.stream([Turn("user", "other", [_img((128, 96), (10, 200, 90))])], FORCED).consume()
    n = min(len(held), len(static_engine.fast.held))
    assert not np.array_equal(static_engine.fast.held[:n], held[:n])  # the buffers now hold the other picture
    with _Count(static_engine.fast) as count:
        again = static_engine.stream(first + [Turn("assistant", text), Turn("user", QUESTIONS[1])], FORCED)
        follow = again.consume()
    assert count.calls == 1 and again.stats.reused_tokens > 0 and [text, follow] == reference


def test_long_follow_up_falls_back_to_the_eager_prefill(static_engine):
    """More new tokens than the largest bucket take the eager prefill, with the answer generate() gives."""
    question = "please list " + "every visible detail and " * 40
    turns = [Turn("user", QUESTIONS[0], [_img()])]
    static_engine.prefixes.clear()
    text = static_engine.stream(turns, FORCED).consume()
    turns += [Turn("assistant", text), Turn("user", question)]
    with _Count(static_engine.fast) as count:
        reply = static_engine.stream(turns, FREE)
        follow = reply.consume()
    plain = static_engine.stream(turns, GenerationOptions(max_new_tokens=12, max_image_tokens=256,
                                                          use_cache=False)).consume()
    assert count.calls == 0 and reply.stats.reused_tokens > 0 and follow == plain


def test_stored_delta_matches_the_whole_prompt_positions(static_engine):
    """The M-RoPE delta kept with an entry is what positions over the whole follow-up prompt give."""
    texts, _, entry = _conversation(static_engine, QUESTIONS[:2], FORCED)
    turns = [Turn("user", QUESTIONS[0], [_img()]), Turn("assistant", texts[0]), Turn("user", QUESTIONS[1]),
             Turn("assistant", texts[1]), Turn("user", "one more")]
    inputs, _ = static_engine.encode(turns, FORCED)
    positions, delta = rope_positions(static_engine.model, inputs["input_ids"], inputs["mm_token_type_ids"],
                                      inputs["image_grid_thw"])
    length = inputs["input_ids"].shape[1]
    assert entry.delta == delta
    assert positions[1:, 0, -1].tolist() == [length - 1 + delta] * 3


def test_second_image_in_a_follow_up_is_not_short_prefilled(static_engine):
    """A follow-up that adds a picture runs the eager prefill (its vision tower), with generate()'s answer."""
    turns = [Turn("user", QUESTIONS[0], [_img()])]
    static_engine.prefixes.clear()
    text = static_engine.stream(turns, FORCED).consume()
    turns += [Turn("assistant", text), Turn("user", "and this one?", [_img((64, 64), (0, 0, 250))])]
    with _Count(static_engine.fast) as count:
        reply = static_engine.stream(turns, FORCED)
        follow = reply.consume()
    plain = static_engine.stream(turns, GenerationOptions(max_new_tokens=12, min_new_tokens=12, max_image_tokens=256,
                                                          use_cache=False)).consume()
    assert count.calls == 0 and reply.stats.reused_tokens > 0 and follow == plain
