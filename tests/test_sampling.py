"""Per-row logits processing (vlassist/engine/sampling.py) against hand-computed values, and through the engine."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine import sampling
from vlassist.images import load_image

INF = float("-inf")


def row(*values: float) -> torch.Tensor:
    """A logits row of the given values."""
    return torch.tensor(values, dtype=torch.float32)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    """repetition_penalty 2 halves a seen token's positive logit and doubles a negative one; unseen stay."""
    options = GenerationOptions(precise=False, repetition_penalty=2.0)
    out = sampling.penalize(row(4.0, -1.0, 3.0, 1.0), options, torch.tensor([1]), prompt=torch.tensor([0]))
    assert out.tolist() == [2.0, -2.0, 3.0, 1.0]


def test_repetition_penalty_is_off_for_greedy_unless_asked():
    """Greedy options leave logits alone unless penalize_greedy says the caller asked for the penalty."""
    logits, answer = row(4.0, 2.0), torch.tensor([0, 0])
    assert sampling.penalize(logits, GenerationOptions(repetition_penalty=2.0), answer).tolist() == [4.0, 2.0]
    asked = GenerationOptions(repetition_penalty=2.0, penalize_greedy=True)
    assert sampling.penalize(logits, asked, answer).tolist() == [2.0, 2.0]


def test_frequency_and_presence_penalties_follow_openai_formula():
    """logit − count × frequency_penalty − (count > 0) × presence_penalty, over the answer's tokens."""
    options = GenerationOptions(frequency_penalty=0.5, presence_penalty=1.0)
    out = sampling.penalize(row(1.0, 1.0, 1.0), options, torch.tensor([0, 0, 0, 2]))
    assert out.tolist() == pytest.approx([1.0 - 1.5 - 1.0, 1.0, 1.0 - 0.5 - 1.0])


def test_logit_bias_adds_to_the_named_tokens_only():
    """Each (token, bias) pair is added to that token's logit; ids past the row are ignored."""
    options = GenerationOptions(logit_bias=((1, 100.0), (2, -5.5), (99, 1.0)))
    assert sampling.bias(row(0.0, 0.0, 1.0), options).tolist() == [0.0, 100.0, -4.5]


def test_hold_end_forbids_end_tokens_until_min_tokens():
    """Below min_new_tokens the end tokens are -inf; at the floor the row is unchanged."""
    options = GenerationOptions(min_new_tokens=2)
    assert sampling.hold_end(row(1.0, 2.0, 3.0), options, 1, {2}).tolist() == [1.0, 2.0, INF]
    assert sampling.hold_end(row(1.0, 2.0, 3.0), options, 2, {2}).tolist() == [1.0, 2.0, 3.0]


def test_top_k_keeps_the_k_largest_after_temperature():
    """top_k 2 at temperature 0.5 keeps the two largest logits, doubled; the rest are -inf."""
    options = GenerationOptions(precise=False, temperature=0.5, top_p=1.0, top_k=2)
    assert sampling.warp(row(1.0, 3.0, 2.0, 0.0), options).tolist() == [INF, 6.0, 4.0, INF]


def test_top_p_keeps_the_smallest_head_reaching_the_mass():
    """Probabilities 0.5, 0.3, 0.2 with top_p 0.7 keep the first two (0.5 alone is short of 0.7)."""
    logits = torch.log(row(0.5, 0.3, 0.2))
    out = sampling.warp(logits, GenerationOptions(precise=False, temperature=1.0, top_p=0.7))
    assert torch.isfinite(out).tolist() == [True, True, False]


def test_min_p_drops_tokens_below_a_share_of_the_likeliest():
    """min_p 0.5 drops a token whose probability is under half the likeliest one's."""
    logits = torch.log(row(0.5, 0.3, 0.2))
    out = sampling.warp(logits, GenerationOptions(precise=False, temperature=1.0, top_p=1.0, min_p=0.5))
    assert torch.isfinite(out).tolist() == [True, True, False]


def test_logprobs_are_log_softmax_of_the_raw_row_with_the_top_alternatives():
    """The chosen token's logprob is log(p) of the raw logits; the top-2 alternatives come best first."""
    logits = torch.log(row(0.5, 0.3, 0.2))
    chosen, top = sampling.logprobs_of(logits, 2, 2)
    assert chosen == pytest.approx(math.log(0.2))
    assert [t for t, _ in top] == [0, 1] and [lp for _, lp in top] == pytest.approx([math.log(0.5), math.log(0.3)])


def test_pick_is_argmax_greedy_and_draws_only_kept_tokens_when_sampling():
    """Greedy pick is the argmax; a sampled pick after top_k 2 only ever draws one of the two kept tokens."""
    logits = row(1.0, 3.0, 2.0, 0.0)
    assert sampling.pick(logits, GenerationOptions()) == 1
    options = GenerationOptions(precise=False, temperature=1.0, top_p=1.0, top_k=2)
    generator = torch.Generator().manual_seed(0)
    drawn = {sampling.pick(sampling.warp(logits, options), options, generator) for _ in range(50)}
    assert drawn == {1, 2}


def test_next_token_runs_floor_bias_mask_and_pick_in_order():
    """next_token holds the end token below min tokens, adds the bias, then applies the row's grammar mask."""
    options = GenerationOptions(min_new_tokens=2, logit_bias=((1, 5.0),))
    logits = row(0.0, 0.0, 9.0)  # token 2 ends the answer
    assert sampling.next_token(logits, options, torch.tensor([0]), eos_ids={2}) == 1
    assert sampling.next_token(logits, options, torch.tensor([0, 0]), eos_ids={2}) == 2
    only_zero = lambda r: torch.where(torch.arange(3) == 0, r, torch.tensor(INF))  # noqa: E731
    assert sampling.next_token(logits, options, torch.tensor([0, 0]), eos_ids={2}, mask=only_zero) == 0


def test_rows_processor_applies_each_rows_own_tokens():
    """The batched form penalises each row by its own answer tokens (columns after the prompt)."""
    options = GenerationOptions(presence_penalty=1.0)
    processor = sampling.RowsProcessor(options, prompt_len=1, eos_ids=[], stage="adjust")
    sequence = torch.tensor([[5, 0], [5, 1]])
    out = processor(sequence, torch.zeros(2, 2))
    assert out.tolist() == [[-1.0, 0.0], [0.0, -1.0]]


QUESTION = [Turn("user", "Describe it", [load_image(image_bytes())])]


def test_a_huge_logit_bias_forces_a_token(engine):
    """logit_bias +100 on one token makes every greedy answer token that token."""
    tokenizer = engine.processor.tokenizer
    token = tokenizer.convert_tokens_to_ids("a")
    reply = engine.stream(QUESTION, GenerationOptions(max_new_tokens=5, logit_bias=((token, 100.0),)))
    reply.consume()
    assert reply.text == "aaaaa"


def test_logprobs_come_with_each_answer_token(engine):
    """options.logprobs gives one entry per answer token, each with its alternatives, bytes joining to the text."""
    reply = engine.stream(QUESTION, GenerationOptions(max_new_tokens=6, min_new_tokens=6, logprobs=3))
    text = reply.consume()
    assert len(reply.logprobs) == 6
    assert all(e.logprob <= 0 and len(e.top) == 3 and e.top[0].logprob >= e.logprob for e in reply.logprobs)
    assert bytes(b for e in reply.logprobs for b in e.bytes).decode("utf-8", "replace") == text


def test_regex_and_choice_constrain_the_answer(engine):
    """A regular expression or a list of choices holds the answer to it."""
    regex = engine.stream(QUESTION, GenerationOptions(max_new_tokens=12, regex=r"[0-9]{3}-[a-c]{2}"))
    assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", regex.consume())
    choice = engine.stream(QUESTION, GenerationOptions(max_new_tokens=12, choice=("yes", 'no "way"')))
    assert choice.consume() in ("yes", 'no "way"')


def test_tokenize_counts_each_image_as_the_prompt_encodes_it(engine):
    """Engine.tokenize gives the same ids as the encoded prompt: each image as its visual tokens."""
    options = GenerationOptions()
    inputs, _ = engine.encode(QUESTION, options)
    assert engine.tokenize(QUESTION, options) == inputs["input_ids"][0].tolist()


def test_a_greedy_answer_with_neutral_options_is_unchanged(engine):
    """Zero penalties and an empty bias take the plain greedy path: the same answer as default options."""
    plain = engine.stream(QUESTION, GenerationOptions(max_new_tokens=6)).consume()
    neutral = GenerationOptions(max_new_tokens=6, frequency_penalty=0.0, presence_penalty=0.0, logit_bias=())
    assert engine.stream(QUESTION, neutral).consume() == plain


def test_grammars_are_compiled_once_per_text(engine25):
    """The same grammar text compiles once: the second request gets the cached grammar."""
    from vlassist.engine.constrained import compile_source

    tokenizer, config = engine25.processor.tokenizer, engine25.model.config
    first = compile_source(tokenizer, "regex", "[a-f]{2}-[0-9]{4}", config)
    assert compile_source(tokenizer, "regex", "[a-f]{2}-[0-9]{4}", config) is first


def test_a_grammar_slower_than_the_budget_is_refused(engine25):
    """A schema whose compile outlasts the admission budget raises SchemaError naming the limit."""
    from vlassist.answers.schemas import SchemaError
    from vlassist.engine.constrained import compile_within

    objects = {f"p{i}": {"type": "object", "properties": {f"q{i}_{j}": {"type": "string"} for j in range(60)}}
               for i in range(12)}
    schema = json.dumps({"type": "object", "properties": objects, "required": list(objects)})
    with pytest.raises(SchemaError, match="longer than 0.001 s to compile"):
        compile_within(engine25.processor.tokenizer, GenerationOptions(json_schema=schema), engine25.model.config,
                       budget_s=0.001)
