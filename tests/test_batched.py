"""Batched decoding on the local engine: several one-image questions per forward step, each as if answered alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from conftest import image_bytes

import vlassist.backends
from vlassist.__main__ import main
from vlassist.answers.schemas import fields_schema
from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine import batched, generate
from vlassist.images import load_image
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Request

# Images of different sizes (so different visual tokens and M-RoPE grids) and questions of different lengths.
SIZES = [((64, 48), (200, 30, 30)), ((120, 90), (30, 200, 30)), ((40, 160), (10, 10, 220)), ((200, 200), (120, 120, 0))]
QUESTIONS = ["What is this?", "Describe the picture in a lot of detail please, every colour and shape.", "OCR",
             "Is it red? Answer yes or no and explain why at length."]
SCHEMA = json.dumps(fields_schema("name,total:number"))


def conversations() -> list[list[Turn]]:
    """Four one-question conversations, each about its own image."""
    images = [load_image(image_bytes(size, color)) for size, color in SIZES]
    return [[Turn("user", question, [image])] for question, image in zip(QUESTIONS, images)]


def alone_ids(engine, turns, options) -> torch.Tensor:
    """Prompt and answer ids of one conversation on the single-answer path, with no stored prefix to reuse."""
    engine.prefixes.clear()
    gen = generate.prepare(engine, turns, options)
    generate.run(engine, gen)
    return gen.output.cpu()


def batched_ids(engine, convs, options, stops=None) -> tuple[list[torch.Tensor], list]:
    """Prompt and answer ids of each conversation answered in one batch, and each row's (text, stats)."""
    stops = stops or [threading.Event() for _ in convs]
    gens = [generate.prepare(engine, turns, options, stop) for turns, stop in zip(convs, stops)]
    results = batched.answer_rows(engine, gens)
    return [gen.output for gen in gens], results


@pytest.mark.parametrize("options", [GenerationOptions(max_new_tokens=24, min_new_tokens=24),
                                     GenerationOptions(max_new_tokens=48, json_schema=SCHEMA)],
                         ids=["forced-length", "schema-eos"])
def test_batched_ids_equal_answering_alone(engine, options):
    """Greedy batched answers have exactly the token ids each conversation gets alone (forced or grammar EOS)."""
    convs = conversations()
    expected = [alone_ids(engine, turns, options) for turns in convs]
    got, _ = batched_ids(engine, convs, options)
    for want, have in zip(expected, got):
        assert torch.equal(want, have)


def test_rows_end_on_their_own_at_eos_or_length(engine25):
    """Rows leave the batch at different steps (one at a natural EOS, the others at max_new_tokens), unchanged."""
    options = GenerationOptions(max_new_tokens=72)
    convs = conversations()
    expected = [alone_ids(engine25, turns, options) for turns in convs]
    got, results = batched_ids(engine25, convs, options)
    reasons = [stats.stop_reason for _, stats in results]
    assert "eos" in reasons and "length" in reasons  # this checkpoint ends the fourth answer early
    for want, have, (_, stats) in zip(expected, got, results):
        assert torch.equal(want, have)
        assert stats.new_tokens == have.shape[1] - stats.prompt_tokens


def test_a_stopped_row_ends_and_the_others_go_on(engine3):
    """A row whose stop event is set ends after its first token as "stopped"; the other rows match alone."""
    options = GenerationOptions(max_new_tokens=20, min_new_tokens=20)
    convs = conversations()[:3]
    expected = [alone_ids(engine3, turns, options) for turns in convs]
    stops = [threading.Event() for _ in convs]
    stops[1].set()
    got, results = batched_ids(engine3, convs, options, stops)
    assert [stats.stop_reason for _, stats in results] == ["length", "stopped", "length"]
    assert results[1][1].new_tokens == 1 and torch.equal(got[1], expected[1][:, :got[1].shape[1]])
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])


def test_answer_batch_text_and_stats_match_stream(engine25):
    """Engine.answer_batch gives each conversation the text, token count and stop reason that stream() gives."""
    options = GenerationOptions(max_new_tokens=16)
    convs = conversations()[:2] + [[Turn("assistant", "no user turn")]]
    alone = []
    for turns in convs[:2]:
        engine25.prefixes.clear()
        reply = engine25.stream(turns, options)
        alone.append((reply.consume(), reply.stats))
    results = engine25.answer_batch(convs, options)
    for (text, stats), (want_text, want) in zip(results, alone):
        assert (text, stats.new_tokens, stats.stop_reason, stats.prompt_tokens, stats.visual_tokens) == (
            want_text, want.new_tokens, want.stop_reason, want.prompt_tokens, want.visual_tokens)
    assert results[2][1].stop_reason == "error" and "user turn" in results[2][1].error


def test_service_group_jobs_complete_with_their_own_answers(engine25):
    """AnswerService.submit_group runs its jobs together on the worker thread; each ends with its own text."""
    options = GenerationOptions(max_new_tokens=12)
    convs = conversations()[:3]
    expected = [text for text, _ in engine25.answer_batch(convs, options)]
    service = AnswerService(engine25)
    try:
        jobs = service.submit_group([Request(turns, options) for turns in convs])
        assert all(job.wait(120) for job in jobs)
    finally:
        service.close()
    assert [job.outcome for job in jobs] == ["complete"] * 3
    assert [job.text for job in jobs] == expected


def test_cancelling_one_job_of_a_group_leaves_the_others(engine25):
    """A job cancelled right after submit_group ends "stopped"; the rest of its group completes as usual."""
    options = GenerationOptions(max_new_tokens=12)
    convs = conversations()[:3]
    service = AnswerService(engine25)
    try:
        jobs = service.submit_group([Request(turns, options) for turns in convs])
        assert service.cancel(jobs[1].id)
        assert all(job.wait(120) for job in jobs)
    finally:
        service.close()
    assert [job.outcome for job in jobs] == ["complete", "stopped", "complete"]
    assert jobs[0].stats.new_tokens == jobs[2].stats.new_tokens == 12 and jobs[1].stats.new_tokens <= 1


@pytest.fixture
def local(engine25, monkeypatch):
    """`vlassist batch` in this process answers on the session's tiny Qwen2.5-VL engine."""
    monkeypatch.setattr(vlassist.backends, "load_answerer", lambda settings: engine25)
    monkeypatch.setenv("VLASSIST_DEVICE", "cpu")
    monkeypatch.delenv("VLASSIST_BACKEND_URL", raising=False)


def test_batch_size_three_writes_the_same_rows_as_one(local, engine25, tiny_qwen25, tmp_path, monkeypatch):
    """`vlassist batch --batch-size 3` over five images and a damaged file gives the rows `--batch-size 1` gives."""
    groups = []  # rows per batched call: the real method, counted

    def counted(conversations, *args, real=engine25.answer_batch):
        groups.append(len(conversations))
        return real(conversations, *args)

    monkeypatch.setattr(engine25, "answer_batch", counted)
    folder = tmp_path / "in"
    folder.mkdir()
    for n, (size, color) in enumerate(SIZES + [((96, 64), (9, 9, 9))]):
        (folder / f"{n}.png").write_bytes(image_bytes(size, color))
    (folder / "bad.png").write_bytes(image_bytes()[:60])
    rows = {}
    for size in (1, 3):
        out = tmp_path / f"results{size}.jsonl"
        code = main(["batch", str(folder), "--out", str(out), "--preset", "describe", "--max-new-tokens", "16",
                     "--batch-size", str(size), "--model", str(tiny_qwen25), "--no-progress"])
        assert code == 1  # the damaged file
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        rows[size] = {Path(r["source"]).name: (r["status"], r["answer"], (r["stats"] or {}).get("new_tokens"))
                      for r in lines}
    assert groups == [3, 2]  # --batch-size 1 answers one at a time; 3 makes groups of the five readable images
    assert rows[3] == rows[1] and len(rows[1]) == 6
    assert rows[1]["bad.png"][0] == "failed"


def test_auto_batch_size_estimate(engine):
    """The KV estimate is the bytes a prefilled cache holds per token; the auto batch size is 1 on the CPU."""
    from vlassist.engine.decode import cache_layers, new_cache, prefill, rope_positions

    gen = generate.prepare(engine, conversations()[0], GenerationOptions())
    inputs = gen.inputs
    positions, _ = rope_positions(engine.model, inputs["input_ids"], inputs["mm_token_type_ids"],
                                  inputs["image_grid_thw"])
    cache = new_cache(engine.model)
    with torch.inference_mode():
        prefill(engine.model, inputs["input_ids"], positions, cache, inputs["pixel_values"], inputs["image_grid_thw"])
    held = sum(k.numel() * k.element_size() + v.numel() * v.element_size()
               for k, v in cache_layers(cache, gen.length))
    assert batched.kv_bytes_per_token(engine.model) * gen.length == held
    assert engine.batch_size_for(4096) == 1
