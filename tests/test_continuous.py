"""Continuous batching on the local engine: answers join and leave the decode batch, each as if answered alone."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import torch
from conftest import image_bytes

from vlassist.answers.schemas import fields_schema
from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine import generate
from vlassist.engine.rows import prefill_chunks
from vlassist.engine.scheduler import Scheduler
from vlassist.images import load_image

SCHEMA = json.dumps(fields_schema("name,total:number"))
SIZES = [((64, 48), (200, 30, 30)), ((120, 90), (30, 200, 30)), ((40, 160), (10, 10, 220)), ((200, 200), (120, 120, 0))]
QUESTIONS = ["What is this?", "Describe the picture in a lot of detail please, every colour and shape.", "OCR",
             "Is it red? Answer yes or no and explain why at length."]


def conversations() -> list[list[Turn]]:
    """Four one-question conversations of different prompt lengths, each about its own image."""
    images = [load_image(image_bytes(size, color)) for size, color in SIZES]
    return [[Turn("user", question, [image])] for question, image in zip(QUESTIONS, images)]


def alone(engine, turns, options) -> torch.Tensor:
    """Prompt and answer ids of one conversation answered alone (single-answer path, nothing reused)."""
    engine.prefixes.clear()
    gen = generate.prepare(engine, turns, options)
    generate.run(engine, gen)
    return gen.output.cpu()


@pytest.fixture
def manual(engine):
    """A 4-slot decode batch on the tiny engine whose turns the test runs itself (16-token prefill chunks)."""
    scheduler = Scheduler(engine, slots=4, room_tokens=None, chunk_tokens=16, start=False)
    engine.prefixes.clear()
    yield engine, scheduler
    engine.prefixes.clear()


def run_until(scheduler, condition, limit: int = 2000) -> None:
    """Turn the batch until `condition()` holds."""
    for _ in range(limit):
        if condition():
            return
        scheduler.turn()
    raise AssertionError("the batch did not get there")


def test_rows_joining_and_leaving_equal_alone(manual):
    """Rows of different prompt lengths and options that join mid-way and leave early get their alone ids."""
    engine, scheduler = manual
    convs = conversations()
    forced = GenerationOptions(max_new_tokens=40, min_new_tokens=40)
    schema = GenerationOptions(max_new_tokens=48, json_schema=SCHEMA)
    short = GenerationOptions(max_new_tokens=12, min_new_tokens=12)
    free = GenerationOptions(max_new_tokens=30)
    plan = [(convs[0], forced), (convs[1], schema), (convs[2], short), (convs[3], free)]
    expected = [alone(engine, turns, options) for turns, options in plan]
    engine.prefixes.clear()
    gens = [generate.prepare(engine, turns, options) for turns, options in plan]
    first = scheduler.submit(gens[0])[0]
    run_until(scheduler, lambda: len(first.answer) >= 5)  # the first row decodes alone for a while
    second = scheduler.submit(gens[1])[0]
    run_until(scheduler, lambda: len(second.answer) >= 3)
    late = [scheduler.submit(gen)[0] for gen in gens[2:]]  # two join together, while the others run
    run_until(scheduler, lambda: all(row.done.is_set() for row in [first, second, *late]))
    for want, gen in zip(expected, gens):
        assert torch.equal(want, gen.output)
    assert first.shared == 4 and late[0].shared == 4  # they really decoded side by side
    assert late[0].ended == "length" and late[0].done.is_set()


def test_a_cancelled_row_leaves_and_the_others_are_unchanged(manual):
    """A row whose stop is set mid-answer leaves at the next step; the rows beside it still match alone."""
    engine, scheduler = manual
    convs = conversations()[:3]
    options = GenerationOptions(max_new_tokens=30, min_new_tokens=30)
    expected = [alone(engine, turns, options) for turns in convs]
    engine.prefixes.clear()
    stops = [threading.Event() for _ in convs]
    gens = [generate.prepare(engine, turns, options, stop) for turns, stop in zip(convs, stops)]
    rows = [scheduler.submit(gen)[0] for gen in gens]
    run_until(scheduler, lambda: all(len(row.answer) >= 6 for row in rows))
    stops[1].set()
    scheduler.turn()
    assert rows[1].done.is_set() and rows[1].ended == "stopped"
    cut = len(rows[1].answer)
    run_until(scheduler, lambda: all(row.done.is_set() for row in rows))
    assert cut < 30 and torch.equal(gens[1].output, expected[1][:, :gens[1].length + cut])
    for index in (0, 2):
        assert torch.equal(gens[index].output, expected[index])


def test_a_stop_string_ends_its_row(manual):
    """A row ends once its text holds one of its stop strings; its ids are the alone answer's up to there."""
    engine, scheduler = manual
    turns = conversations()[0]
    options = GenerationOptions(max_new_tokens=40, min_new_tokens=40)
    expected = alone(engine, turns, options)
    answer = expected[0, -40:].tolist()
    text = engine.processor.tokenizer.decode(answer[:10], skip_special_tokens=True)
    stop = text[-3:] if len(text.strip()) >= 3 else text
    engine.prefixes.clear()
    gen = generate.prepare(engine, turns, dataclasses.replace(options, stop_strings=(stop,)))
    row = scheduler.submit(gen)[0]
    run_until(scheduler, lambda: row.done.is_set())
    assert row.ended == "stop_string" and len(row.answer) <= 10
    assert stop in engine.processor.tokenizer.decode(row.answer, skip_special_tokens=True)
    assert torch.equal(gen.output, expected[:, :gen.length + len(row.answer)])


def test_a_follow_up_joining_a_running_batch_reuses_its_prefix(manual):
    """A follow-up asked while another answer decodes reuses the first turn's stored K/V and matches alone."""
    engine, scheduler = manual
    convs = conversations()
    options = GenerationOptions(max_new_tokens=16, min_new_tokens=16)
    gen = generate.prepare(engine, convs[0], options)
    row = scheduler.submit(gen)[0]
    run_until(scheduler, lambda: row.done.is_set())
    reply = engine.processor.tokenizer.decode(row.answer, skip_special_tokens=True)
    follow = convs[0] + [Turn("assistant", reply), Turn("user", "And the colour?")]
    busy = scheduler.submit(generate.prepare(engine, convs[1], GenerationOptions(max_new_tokens=60,
                                                                                 min_new_tokens=60)))[0]
    run_until(scheduler, lambda: len(busy.answer) >= 3)
    again = generate.prepare(engine, follow, options)
    second = scheduler.submit(again)[0]
    run_until(scheduler, lambda: second.done.is_set() and busy.done.is_set())
    assert again.stats.reused_tokens >= gen.length  # at least the image and the first question's K/V
    assert torch.equal(again.output, alone(engine, follow, options))


def test_n_choices_share_one_prefill(manual):
    """Copies submitted with an answer share its prefill: greedy copies equal it; each leaves on its own."""
    engine, scheduler = manual
    turns = conversations()[1]
    options = GenerationOptions(max_new_tokens=20, min_new_tokens=20)
    expected = alone(engine, turns, options)
    engine.prefixes.clear()
    leader = generate.prepare(engine, turns, options)
    copies = [generate.Generation(leader.inputs, leader.image_keys, options, threading.Event(),
                                  generate.prepare(engine, turns, options).sink, leader.stats.__class__())
              for _ in range(2)]
    rows = scheduler.submit(leader, copies)
    scheduler.turn()
    assert all(row.started for row in rows)  # all three left the queue with the one prefill
    run_until(scheduler, lambda: all(row.done.is_set() for row in rows))
    for gen in [leader, *copies]:
        assert torch.equal(gen.output, expected)
    assert rows[0].shared == 3


def test_sampled_rows_follow_their_seed(manual):
    """A sampled row with a seed draws what the single-answer path draws with that seed, beside a greedy row."""
    engine, scheduler = manual
    convs = conversations()
    sampled = GenerationOptions(max_new_tokens=16, precise=False, temperature=1.0, top_p=0.9, seed=7,
                                repetition_penalty=1.0)
    expected = alone(engine, convs[0], sampled)
    engine.prefixes.clear()
    gens = [generate.prepare(engine, convs[0], sampled),
            generate.prepare(engine, convs[1], GenerationOptions(max_new_tokens=16, min_new_tokens=16))]
    rows = [scheduler.submit(gen)[0] for gen in gens]
    run_until(scheduler, lambda: all(row.done.is_set() for row in rows))
    assert torch.equal(gens[0].output, expected)


def test_prefill_chunks_never_cut_an_image():
    """Prefill slices cover the prompt in order and hold each image's tokens whole."""
    tokens = torch.tensor([1, 2, 3] + [-5] * 10 + [4, 5, 6, 7] + [-9] * 3 + [8]).numpy()
    chunks = prefill_chunks(tokens, 1, 4)
    assert chunks[0][0] == 1 and chunks[-1][1] == len(tokens)
    assert all(a < b and b == c for (a, b), (c, _) in zip(chunks, chunks[1:]))
    for a, _ in chunks:
        assert not (0 < a < len(tokens) and tokens[a] < 0 and tokens[a - 1] == tokens[a])


@pytest.fixture
def batching(engine25):
    """The tiny Qwen2.5-VL engine answering through a running 4-slot decode batch."""
    engine25.prefixes.clear()
    engine25.scheduler = Scheduler(engine25, slots=4, room_tokens=None, chunk_tokens=64)
    yield engine25
    engine25.scheduler.close(timeout=30)
    engine25.scheduler = None
    engine25.prefixes.clear()


def test_concurrent_streams_answer_together_as_alone(batching):
    """Answers streamed from several threads at once decode together and each gets its alone text and stats."""
    engine = batching
    convs = conversations()
    options = GenerationOptions(max_new_tokens=48, min_new_tokens=48)
    scheduler, engine.scheduler = engine.scheduler, None
    expected = [engine.stream(turns, options).consume() for turns in convs]
    engine.scheduler = scheduler
    engine.prefixes.clear()
    replies = [engine.stream(turns, options) for turns in convs]
    texts: list[str | None] = [None] * len(replies)
    threads = [threading.Thread(target=lambda i=i: texts.__setitem__(i, replies[i].consume())) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert texts == expected
    for reply in replies:
        assert reply.stats.new_tokens == 48 and reply.stats.stop_reason == "length"
        assert 1 <= reply.stats.batch_rows <= 4 and reply.stats.queued_s >= 0


def test_an_abandoned_stream_frees_its_slot(batching):
    """A caller that stops reading ends its row as stopped; the next answer is still answered in full."""
    engine = batching
    convs = conversations()
    reply = engine.stream(convs[0], GenerationOptions(max_new_tokens=400, min_new_tokens=400))
    chunks = iter(reply)
    next(chunks)
    chunks.close()
    assert reply.stats.stop_reason == "stopped" and reply.stats.new_tokens < 400
    other = engine.stream(convs[1], GenerationOptions(max_new_tokens=10, min_new_tokens=10))
    other.consume()
    assert other.stats.new_tokens == 10 and not engine.scheduler.busy


def test_a_lone_row_decodes_in_the_static_buffers_until_another_joins(static_engine):
    """A lone row steps in the static buffers; when a second row joins, its K/V move to the batch, ids unchanged."""
    engine = static_engine
    scheduler = Scheduler(engine, slots=4, room_tokens=None, chunk_tokens=64, start=False)
    convs = conversations()[:2]
    options = GenerationOptions(max_new_tokens=24, min_new_tokens=24)
    expected = [alone(engine, turns, options) for turns in convs]
    engine.prefixes.clear()
    gens = [generate.prepare(engine, turns, options) for turns in convs]
    first = scheduler.submit(gens[0])[0]
    run_until(scheduler, lambda: len(first.answer) >= 6)
    assert scheduler.solo is not None  # alone: the static buffers' step
    second = scheduler.submit(gens[1])[0]
    run_until(scheduler, lambda: second.index > 0)
    assert scheduler.solo is None and scheduler.cache is not None  # two rows: the batched cache
    run_until(scheduler, lambda: first.done.is_set() and second.done.is_set())
    for want, gen in zip(expected, gens):
        assert torch.equal(want, gen.output)
    engine.prefixes.clear()


def test_rows_with_penalties_bias_and_logprobs_match_alone(manual):
    """Per-row extras (penalties, logit bias, log-probabilities) apply to their own row only, as alone."""
    engine, scheduler = manual
    convs = conversations()[:2]
    extras = GenerationOptions(max_new_tokens=16, min_new_tokens=16, frequency_penalty=1.5, presence_penalty=0.5,
                               logit_bias=((7, 5.0),), logprobs=2)
    plain = GenerationOptions(max_new_tokens=16, min_new_tokens=16)
    expected = [alone(engine, convs[0], extras), alone(engine, convs[1], plain)]
    engine.prefixes.clear()
    gens = [generate.prepare(engine, convs[0], extras), generate.prepare(engine, convs[1], plain)]
    gens[0].logprobs = []
    rows = [scheduler.submit(gen)[0] for gen in gens]
    run_until(scheduler, lambda: all(row.done.is_set() for row in rows))
    for want, gen in zip(expected, gens):
        assert torch.equal(want, gen.output)
    assert len(gens[0].logprobs) == 16 and gens[1].logprobs is None
