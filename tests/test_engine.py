"""The engine seam: conversations in, streamed text and stats out, one caller at a time."""

import threading
import time

import pytest
import torch
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine.loader import attention_candidates, load_model
from vlassist.errors import VlassistError
from vlassist.images import load_image

GREEDY = GenerationOptions(max_new_tokens=12, min_new_tokens=12, max_image_tokens=256)


def _img(size=(96, 64), color=(200, 30, 30)):
    return load_image(image_bytes(size, color))


def test_stream_yields_text_then_complete_stats(engine):
    """An answer streams as several chunks; stats count prompt, visual and new tokens."""
    # Long enough that even a random model's bytes decode to text more than once along the way.
    reply = engine.stream([Turn("user", "Describe", [_img()])], GenerationOptions(max_new_tokens=64, min_new_tokens=64))
    chunks = list(reply)
    assert len(chunks) > 1 and "".join(chunks) == reply.text
    s = reply.stats
    assert s.new_tokens == 64 and s.stop_reason == "length"
    assert s.prompt_tokens > s.visual_tokens == s.images[0].visual_tokens > 0
    assert 0 < s.ttft_s <= s.total_s and s.tokens_per_s > 0


def test_text_only_question_works(engine):
    """A conversation with no image is answered."""
    reply = engine.stream([Turn("user", "What is 2+2?")], GREEDY)
    assert reply.consume() and reply.stats.visual_tokens == 0


def test_several_images_and_follow_ups(engine):
    """Two images in the first turn and a follow-up turn are all encoded."""
    first = Turn("user", "Compare", [_img((96, 64)), _img((64, 128), (0, 0, 255))])
    reply = engine.stream([first], GREEDY)
    reply.consume()
    follow = engine.stream([first, Turn("assistant", reply.text), Turn("user", "Which is blue?")], GREEDY)
    follow.consume()
    assert len(follow.stats.images) == 2
    assert follow.stats.prompt_tokens > reply.stats.prompt_tokens


def test_greedy_answers_are_repeatable(engine):
    """Precise mode is deterministic: the same question gives the same answer."""
    turns = [Turn("user", "Read the text", [_img()])]
    assert engine.stream(turns, GREEDY).consume() == engine.stream(turns, GREEDY).consume()


def test_stop_event_returns_partial_text(engine):
    """Setting the stop event mid-answer ends it early and keeps the text so far."""
    stop = threading.Event()
    reply = engine.stream([Turn("user", "Describe", [_img()])],
                          GenerationOptions(max_new_tokens=400, min_new_tokens=400), stop=stop)
    got = []
    for chunk in reply:
        got.append(chunk)
        if len(got) == 3:
            stop.set()
    assert reply.stats.stop_reason == "stopped"
    assert 0 < reply.stats.new_tokens < 400 and reply.text == "".join(got)


def test_abandoned_stream_stops_the_worker_and_frees_the_engine(engine):
    """Closing a reply's iterator early stops generation and releases the device lock."""
    reply = engine.stream([Turn("user", "Describe")], GenerationOptions(max_new_tokens=400, min_new_tokens=400))
    iterator = iter(reply)
    next(iterator)
    iterator.close()
    assert not engine.busy and reply.stats.stop_reason == "stopped"


def test_lock_serialises_callers_and_reports_queueing(engine):
    """A second caller waits for the first, is told it is queued, and both get whole answers."""
    turns = [Turn("user", "Describe")]
    options = GenerationOptions(max_new_tokens=40, min_new_tokens=40)
    first = engine.stream(turns, options)
    it = iter(first)
    next(it)  # the first caller now holds the device
    queued, results = threading.Event(), {}

    def second():
        reply = engine.stream(turns, options, on_queued=queued.set)
        results["text"] = reply.consume()
        results["stats"] = reply.stats

    t = threading.Thread(target=second)
    t.start()
    assert queued.wait(5)
    for _ in it:
        pass
    t.join(30)
    assert results["stats"].new_tokens == 40 and results["stats"].queued_s > 0
    assert results["text"] == first.text  # same greedy question, same answer: nothing mixed up


def test_worker_exception_reaches_the_caller_without_hanging(engine, monkeypatch):
    """An exception in the generation worker is raised in the caller promptly, and the engine stays usable."""
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(engine.model.model.language_model, "forward", broken)
    started = time.perf_counter()
    reply = engine.stream([Turn("user", "hi")], GREEDY)
    with pytest.raises(RuntimeError, match="kernel exploded"):
        reply.consume()
    assert time.perf_counter() - started < 10 and reply.stats.stop_reason == "error"
    monkeypatch.undo()
    assert engine.stream([Turn("user", "hi")], GREEDY).consume()


def test_empty_question_is_refused(engine):
    """A user turn with neither text nor image is refused with a clear message."""
    with pytest.raises(VlassistError, match="ask a question"):
        engine.stream([Turn("user", "  ")], GREEDY).consume()


def test_sampling_mode_runs_with_a_seed(engine):
    """Creative mode samples; with a fixed seed it is reproducible."""
    options = GenerationOptions(max_new_tokens=10, min_new_tokens=10, precise=False, seed=7)
    turns = [Turn("user", "Describe", [_img()])]
    assert engine.stream(turns, options).consume() == engine.stream(turns, options).consume()


def test_flash_attention_falls_back_to_sdpa_when_flash_attn_is_absent():
    """On CUDA without flash_attn installed, auto picks SDPA and says why."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    candidates = attention_candidates("auto", "cuda")
    assert candidates[0][0] == "sdpa" and "flash_attn is not installed" in candidates[0][1]


def test_failed_flash_attention_load_falls_back_and_reports(tiny_qwen25):
    """When loading with flash_attention_2 fails, the model loads with SDPA and the reason says so."""
    model, attn, reason = load_model(tiny_qwen25, torch.float32, "cpu",
                                     [("flash_attention_2", "flash_attn is installed"), ("sdpa", "")])
    assert attn == "sdpa" and model.config._attn_implementation == "sdpa"
    assert reason.startswith("flash_attention_2 failed to load") and reason.endswith("using PyTorch SDPA")


def test_explicit_attention_choice_is_honoured(tiny_qwen25):
    """VLASSIST_ATTN=eager loads the eager implementation."""
    assert attention_candidates("eager", "cuda") == [("eager", "set by VLASSIST_ATTN=eager")]
    _, attn, _ = load_model(tiny_qwen25, torch.float32, "cpu", attention_candidates("eager", "cpu"))
    assert attn == "eager"


def test_engine_reports_what_it_loaded(engine):
    """info names family, device, dtype and attention with a reason."""
    info = engine.info
    assert info.family in ("qwen2_5_vl", "qwen3_vl") and info.device == "cpu" and info.dtype == "float32"
    assert info.attn == "sdpa" and info.attn_reason and info.parameters > 0
    assert engine.memory()["weights_gb"] > 0
