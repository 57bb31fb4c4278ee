"""Prefill and decode for Qwen-VL models: M-RoPE positions, one prefill, one decode step, token choice."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache

from vlassist.engine import sampling

# Prefill meets a new (new tokens, cached tokens) shape on nearly every question, and cuDNN's SDPA builds an
# execution plan for each new shape (tens to hundreds of ms on the host); flash and memory-efficient attention
# have no such step. None keeps PyTorch's own choice (the benchmark compares both).
PREFILL_BACKENDS: list | None = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def rope_positions(model, input_ids, mm_token_type_ids=None, image_grid_thw=None) -> tuple[torch.Tensor, int]:
    """Positions of every prompt token, (4, 1, L): row 0 is the cache index, rows 1-3 the M-RoPE axes; and delta.

    Computed from the whole prompt each time and passed explicitly, so the `rope_deltas` that the model keeps as
    shared state (set by whatever ran last) never decides where a token sits. `delta` shifts decode positions.
    """
    length = input_ids.shape[1]
    text = torch.arange(length, device=input_ids.device).view(1, 1, length)  # (1, 1, L)
    if image_grid_thw is None or mm_token_type_ids is None:
        return text.expand(4, 1, length), 0
    mrope, deltas = model.model.get_rope_index(
        input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw)  # (3, 1, L), (1, 1)
    return torch.cat([text, mrope.to(text.device)], dim=0), int(deltas.reshape(-1)[0])


def step_positions(index: int, delta: int, device) -> torch.Tensor:
    """Positions of the token at cache index `index` in the answer: (4, 1, 1)."""
    return torch.tensor([index, index + delta, index + delta, index + delta], device=device).view(4, 1, 1)


def new_cache(model, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None, length: int = 0) -> DynamicCache:
    """A growing KV cache, optionally starting with the first `length` tokens of stored per-layer (K, V)."""
    cache = DynamicCache(config=model.config.get_text_config())
    for layer, (keys, values) in enumerate(prefix or []):
        cache.update(keys[:, :, :length], values[:, :, :length], layer)  # (1, kv_heads, length, head_dim)
    return cache


def prefill(model, input_ids, positions, cache, pixel_values=None, image_grid_thw=None) -> torch.Tensor:
    """Run the not-yet-cached prompt tokens (1, S) through the model; logits of the last one, (1, V) float32.

    Only images whose tokens are in `input_ids` get pixel_values (and their own image_grid_thw); cached images
    are already inside `cache`.
    """
    backends = (sdpa_kernel(PREFILL_BACKENDS) if PREFILL_BACKENDS and input_ids.is_cuda
                else contextlib.nullcontext())
    with backends:
        out = model.model(input_ids=input_ids, position_ids=positions, past_key_values=cache, use_cache=True,
                          pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    return model.lm_head(out.last_hidden_state[:, -1:]).float()[:, -1]  # (1, V)


def decode_step(model, token, positions, cache, mask=None) -> torch.Tensor:
    """One answer token (1, 1) at `positions` (4, 1, 1) through the text model: logits (1, V)."""
    embeds = model.model.get_input_embeddings()(token)  # (1, 1, H)
    out = model.model.language_model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                                      past_key_values=cache, use_cache=True)
    return model.lm_head(out.last_hidden_state).float()[:, -1]  # (1, V)


def cache_layers(cache, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (K, V) views of the first `length` cached tokens, (1, kv_heads, length, head_dim) each."""
    return [(layer.keys[:, :, :length], layer.values[:, :, :length]) for layer in cache.layers]


def choose(scores: torch.Tensor, sequence: torch.Tensor, processors, greedy: bool) -> torch.Tensor:
    """The next token (1,) from last-position scores (1, V), after the logits processors saw the sequence so far."""
    for processor in processors:
        scores = processor(sequence, scores)
    if greedy:
        return scores.argmax(dim=-1)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[:, 0]


def schema_processor(tokenizer, options, config):
    """The logits processor that keeps the answer inside `options.json_schema`, `options.regex` or `options.choice`."""
    # Imported here: the grammar library is loaded only when a schema is asked for.
    from vlassist.engine.constrained import grammar_logits_processor

    return grammar_logits_processor(tokenizer, options, config)


def constrained(options) -> bool:
    """True if the answer is held to a grammar: a JSON Schema, a regular expression, a list of choices, or forced
    tool calls."""
    return bool(options.json_schema or options.regex or options.choice) or constrained_tools(options)


def yield_to_grammar(options):
    """`options` with no answer-length floor when a grammar holds the answer: once the grammar's document is
    complete only an end-of-answer token is allowed, so a floor (VLASSIST_MIN_ANSWER_TOKENS, min_tokens) would leave
    no token to choose and break the document."""
    return replace(options, min_new_tokens=0) if options.min_new_tokens and constrained(options) else options


def logits_processors(options, prompt_len: int, eos_ids, tokenizer, config, prompt_known: bool = True) -> list:
    """Logits processors in order: answer-length floor, penalties and bias, the grammar, then the sampling filters.

    `prompt_known` False (a left-padded batch) keeps the prompt out of the repetition penalty. The grammar comes
    before top-k/top-p, so the filters keep a token the grammar allows.
    """
    before, after = sampling.rows_processors(options, prompt_len, sorted(eos_ids), prompt_known)
    chain: list = list(before)
    grammar = grammar_processor(options, tokenizer, config)
    if grammar is not None:
        chain.append(grammar)
    return chain + after


def grammar_processor(options, tokenizer, config):
    """The processor that keeps the answer inside a grammar (JSON schema, regex, choices, or forced tool calls)."""
    if options.json_schema or options.regex or options.choice:
        return schema_processor(tokenizer, options, config)
    if constrained_tools(options):
        from vlassist.engine.toolgrammar import tool_call_processor

        return tool_call_processor(tokenizer, options, config)
    return None


def constrained_tools(options) -> bool:
    """True if the answer must be tool calls (a required or named `tool_choice`): a grammar chooses its tokens."""
    return bool(getattr(options, "tools", None)) and options.tool_choice != "none" and (
        options.tool_choice == "required" or options.forced_tool is not None)
