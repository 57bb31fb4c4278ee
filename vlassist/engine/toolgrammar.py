"""Forced tool calls: an xgrammar structural tag that makes the answer one or more Qwen `<tool_call>` blocks.

With `tool_choice` "required" (or a named function) the answer must start with a call at once and hold only
calls: `<tool_call>\\n{"name": "f", "arguments": {…}}\\n</tool_call>`, arguments valid against the function's
parameters, several calls separated by a newline as the Qwen templates write them (one when parallel calls are
off). Near the token budget the processor prefers tokens that close the call, then the end of the answer, so a
forced answer is never cut before its call is complete when the budget allows one at all.
"""

from __future__ import annotations

import json

import torch

from vlassist.engine.constrained import (
    CLOSING_MARGIN,
    SchemaLogitsProcessor,
    _compiler,
    closing_ranks,
    minimal_length,
    stop_token_ids,
)

CALL_BEGIN = '<tool_call>\n{"name": "'
ARGUMENTS = '", "arguments": '
CALL_END = "}\n</tool_call>"
SEPARATOR = "\n"


def forced(options) -> bool:
    """True if `options` ask for an answer made only of tool calls."""
    return bool(options.tools) and (options.tool_choice == "required" or options.forced_tool is not None)


def _functions(options) -> list[dict]:
    functions = [tool.get("function", tool) for tool in json.loads(options.tools)]
    if options.forced_tool is not None:
        functions = [f for f in functions if f.get("name") == options.forced_tool]
    if not functions:
        raise ValueError(f"no tool named {options.forced_tool!r} was given")
    return functions


def _parameters(function: dict) -> dict:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}


def arguments_grammar(parameters: dict) -> str:
    """EBNF for arguments valid against `parameters`, spaced as the templates' `tojson` writes them.

    No free whitespace: a model could otherwise pad the call forever, and the call reads as the model was
    trained to write it.
    """
    import xgrammar as xgr

    grammar = xgr.Grammar.from_json_schema(json.dumps(parameters), any_whitespace=False, separators=(", ", ": "),
                                           strict_mode=True)
    return str(grammar)


def structural_tag(options) -> dict:
    """xgrammar's structural tag for the forced calls `options` ask for."""
    tags = [{"type": "tag", "begin": CALL_BEGIN + f["name"] + ARGUMENTS,
             "content": {"type": "grammar", "grammar": arguments_grammar(_parameters(f))}, "end": CALL_END}
            for f in _functions(options)]
    return {"type": "structural_tag", "format": {
        "type": "tags_with_separator", "tags": tags, "separator": SEPARATOR, "at_least_one": True,
        "stop_after_first": not options.parallel_tool_calls}}


def reserve(options) -> int:
    """Tokens (at most one per byte) the shortest complete call takes, with a margin for closing brackets."""
    shortest = min(len((CALL_BEGIN + f["name"] + ARGUMENTS + CALL_END).encode()) + minimal_length(_parameters(f))
                   for f in _functions(options))
    return shortest + CLOSING_MARGIN


class ToolCallProcessor(SchemaLogitsProcessor):
    """SchemaLogitsProcessor over the tool-call grammar; near the budget the answer's end beats another call."""

    def __init__(self, compiled, ranks, budget: int, stops: list[int]):
        super().__init__(compiled, ranks, budget)
        self.stops = stops

    def _prefer_closing(self, scores: torch.Tensor, in_string: bool) -> torch.Tensor:
        stops = torch.tensor([s for s in self.stops if s < scores.shape[0]], dtype=torch.long, device=scores.device)
        if len(stops) and torch.isfinite(scores[stops]).any():
            out = torch.full_like(scores, float("-inf"))
            out[stops] = scores[stops]
            return out
        return super()._prefer_closing(scores, in_string)


def tool_call_processor(tokenizer, options, model_config) -> ToolCallProcessor:
    """A fresh logits processor for one answer that may only be the forced tool calls of `options`."""
    compiled = _compiler(tokenizer, model_config).compile_structural_tag(json.dumps(structural_tag(options)))
    budget = max(1, options.max_new_tokens - reserve(options))
    return ToolCallProcessor(compiled, closing_ranks(compiled), budget, stop_token_ids(tokenizer, model_config))
