"""The decode paths: static-cache decoding matches the reference, and fast modes fall back cleanly off CUDA."""

import pytest
import torch
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine.fastdecode import build_decoder
from vlassist.images import load_image

CACHED = GenerationOptions(max_new_tokens=16, min_new_tokens=16, max_image_tokens=256)
PLAIN = GenerationOptions(max_new_tokens=16, min_new_tokens=16, max_image_tokens=256, use_cache=False)


def _img(size=(96, 64), color=(200, 30, 30)):
    return load_image(image_bytes(size, color))



def test_static_decoding_matches_the_reference(static_engine):
    """Decoding into preallocated buffers gives the same greedy answer as transformers generate()."""
    assert static_engine.fast is not None and static_engine.info.decode == "static"
    turns = [Turn("user", "what is this", [_img()])]
    assert static_engine.stream(turns, CACHED).consume() == static_engine.stream(turns, PLAIN).consume()


def test_static_decoding_follow_up_with_a_new_image_matches(static_engine):
    """A follow-up that reuses the stored cache and adds an image still matches the reference."""
    first = [Turn("user", "look", [_img()])]
    text = static_engine.stream(first, CACHED).consume()
    turns = first + [Turn("assistant", text), Turn("user", "and this?", [_img((128, 96), (0, 0, 200))])]
    reply = static_engine.stream(turns, CACHED)
    assert reply.consume() == static_engine.stream(turns, PLAIN).consume() and reply.stats.reused_tokens > 0


def test_too_long_for_the_buffers_decodes_eagerly_and_exactly(static_engine):
    """A prompt plus answer longer than the static buffers takes the eager path with the same answer."""
    long = GenerationOptions(max_new_tokens=300, min_new_tokens=20, max_image_tokens=256)
    plain = GenerationOptions(max_new_tokens=300, min_new_tokens=20, max_image_tokens=256, use_cache=False)
    turns = [Turn("user", "describe", [_img()])]
    assert not static_engine.fast.fits(len(static_engine.encode(turns, long)[0]["input_ids"][0]) + 300)
    stop_early = static_engine.stream(turns, long)
    text = stop_early.consume()
    assert text == static_engine.stream(turns, plain).consume()


def test_stale_rope_deltas_on_the_model_change_nothing(engine):
    """Positions come from the prompt itself, not from the rope_deltas another request left on the model."""
    turns = [Turn("user", "what is this", [_img((160, 96))])]
    expected = engine.stream(turns, PLAIN).consume()
    engine.prefixes.clear()
    engine.model.model.rope_deltas = torch.tensor([[977]])
    assert engine.stream(turns, CACHED).consume() == expected


@pytest.mark.parametrize("requested", ["auto", "graph", "compile"])
def test_fast_modes_fall_back_on_cpu_and_say_why(engine25, requested):
    """Off CUDA, graph and compile modes are not attempted; the engine decodes eagerly and reports why."""
    decoder, mode, reason, _ = build_decoder(engine25.model, requested, 256)
    assert decoder is None and mode == "eager" and reason


def test_compile_off_keeps_the_eager_path(engine25):
    """VLASSIST_COMPILE=off builds no static decoder."""
    assert build_decoder(engine25.model, "off", 256)[:2] == (None, "eager")


def test_small_buckets_decode_exactly(static_engine):
    """A request decoded in a smaller bucket (a view of the first slots of the buffers) gives the same answer."""
    from vlassist.engine.fastdecode import StaticDecoder

    full = static_engine.fast
    static_engine.fast = StaticDecoder(static_engine.model, 256, "static", buckets=(48, 96, 160))
    try:
        first = [Turn("user", "what is this", [_img()])]
        total = len(static_engine.encode(first, CACHED)[0]["input_ids"][0]) + CACHED.max_new_tokens
        text = static_engine.stream(first, CACHED).consume()
        assert static_engine.fast.size == next(n for n in (48, 96, 160, 256) if n >= total) < 256
        assert text == static_engine.stream(first, PLAIN).consume()
        turns = first + [Turn("assistant", text), Turn("user", "and the colour?")]
        reply = static_engine.stream(turns, CACHED)
        assert reply.consume() == static_engine.stream(turns, PLAIN).consume() and reply.stats.reused_tokens > 0
    finally:
        static_engine.fast = full
