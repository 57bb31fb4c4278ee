"""Greedy decoding with the token chosen on the device and read back in blocks: same answers as step by step."""

import pytest
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.images import load_image

FORCED = GenerationOptions(max_new_tokens=20, min_new_tokens=20, max_image_tokens=256)
FREE = GenerationOptions(max_new_tokens=20, max_image_tokens=256)


def _img(size=(96, 64), color=(200, 30, 30)):
    return load_image(image_bytes(size, color))



def _answer(engine, turns, options, block):
    engine.decode_block = block
    try:
        reply = engine.stream(turns, options)
        return reply.consume(), reply.stats
    finally:
        engine.decode_block = 8


def _answer_tokens(engine, stats):
    """The answer's tokens but the last, from the cache entry the engine stored for it."""
    entry = max(engine.prefixes.entries(), key=lambda e: len(e.tokens))
    return entry.tokens[stats.prompt_tokens:].tolist()


@pytest.mark.parametrize("block", [1, 3, 8])
def test_block_sizes_give_the_step_by_step_answer(static_engine, block):
    """Any block size gives the same greedy answer as choosing each token on the host, and as generate()."""
    turns = [Turn("user", "what is this", [_img()])]
    static_engine.prefixes.clear()
    reference, _ = _answer(static_engine, turns, FORCED, 0)
    static_engine.prefixes.clear()
    text, stats = _answer(static_engine, turns, FORCED, block)
    plain = static_engine.stream(turns, GenerationOptions(max_new_tokens=20, min_new_tokens=20, max_image_tokens=256,
                                                          use_cache=False)).consume()
    assert text == reference == plain and stats.new_tokens == 20 and stats.stop_reason == "length"


def test_end_token_inside_a_block_truncates_exactly(static_engine):
    """An end-of-answer token in the middle of a block ends the answer there, as the step-by-step path does."""
    turns = [Turn("user", "describe", [_img((128, 96), (20, 160, 40))])]
    static_engine.prefixes.clear()
    _, stats = _answer(static_engine, turns, FREE, 0)
    tokens = _answer_tokens(static_engine, stats)
    at = next(i for i in range(2, len(tokens)) if i % 8 and tokens.index(tokens[i]) == i)  # first use, mid-block
    original = set(static_engine.eos_ids)
    static_engine.eos_ids.add(tokens[at])
    try:
        results = []
        for block in (0, 8):
            static_engine.prefixes.clear()
            text, stats = _answer(static_engine, turns, FREE, block)
            follow = turns + [Turn("assistant", text), Turn("user", "and the colour?")]
            again, later = _answer(static_engine, follow, FREE, block)
            results.append((text, stats.new_tokens, stats.stop_reason, again, later.reused_tokens > 0))
    finally:
        static_engine.eos_ids = original
    assert results[0] == results[1] and results[1][1] == at + 1 and results[1][2] == "eos"


def test_stop_mid_answer_keeps_partial_text(static_engine):
    """Setting stop while blocks are decoded ends the answer at a block boundary and frees the engine."""
    turns = [Turn("user", "what is this", [_img()])]
    options = GenerationOptions(max_new_tokens=60, min_new_tokens=60, max_image_tokens=256)
    reply = static_engine.stream(turns, options)
    reply.consume(lambda chunk: reply.stop())
    assert reply.stats.stop_reason == "stopped" and 0 < reply.stats.new_tokens < 60 and not static_engine.busy


def test_sampling_keeps_the_step_by_step_path(static_engine):
    """Sampled answers do not take the greedy block path and stay repeatable with a seed."""
    turns = [Turn("user", "what is this", [_img()])]
    options = GenerationOptions(max_new_tokens=12, precise=False, seed=3, max_image_tokens=256)
    assert static_engine.stream(turns, options).consume() == static_engine.stream(turns, options).consume()


def test_greedy_step_off_falls_back_to_step_by_step(static_engine):
    """When the greedy step is unavailable (e.g. its capture failed) the answer still matches."""
    turns = [Turn("user", "what is this", [_img()])]
    static_engine.prefixes.clear()
    expected, _ = _answer(static_engine, turns, FORCED, 8)
    static_engine.fast.greedy_note = "in-graph greedy off (test)"
    try:
        assert not static_engine.fast.greedy_ready()
        static_engine.prefixes.clear()
        assert _answer(static_engine, turns, FORCED, 8)[0] == expected
    finally:
        static_engine.fast.greedy_note = ""
