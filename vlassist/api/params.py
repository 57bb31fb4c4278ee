"""Sampling and output-grammar parameters of a chat request → generation options; every unknown field refused.

Accepted beyond OpenAI's own fields are the extras vLLM takes in the body (`top_k`, `min_p`,
`repetition_penalty`, `min_tokens`, `structured_outputs`, `guided_json` / `guided_choice` / `guided_regex`).
A field this server does not act on is a 400 naming it, never a silent 200: only fields that identify the
caller and cannot change the answer (`user`, `metadata`…) pass without effect.
"""

from __future__ import annotations

import json
from typing import Any

from .convert import ApiError
from .models import ChatRequest

# OpenAI fields that only label a request: they change nothing the model writes, so they are accepted as is.
LABELS = ("user", "metadata", "safety_identifier", "prompt_cache_key")
# Fields accepted only with the value that asks for what this server does anyway.
NEUTRAL: dict[str, tuple] = {
    "store": (False,),
    "service_tier": ("auto", "default"),
    "modalities": (["text"],),
}
MAX_LOGIT_BIAS = 300  # tokens one request may bias (OpenAI's limit)
MAX_TOP_LOGPROBS = 20


def refuse_unknown(body: ChatRequest) -> None:
    """A 400 naming the first field of the request this server does not support (with the value given)."""
    for name, value in (body.model_extra or {}).items():
        if name in LABELS or value is None:
            continue
        if name in NEUTRAL and value in NEUTRAL[name]:
            continue
        if name in NEUTRAL:
            raise ApiError(400, f"{name}={json.dumps(value)[:80]} is not supported by this server", param=name,
                           code="unsupported_parameter")
        raise ApiError(400, f"the parameter {name!r} is not supported by this server", param=name,
                       code="unsupported_parameter")
    outputs = body.structured_outputs
    if outputs is not None:
        for name in outputs.model_extra or {}:
            raise ApiError(400, f"structured_outputs.{name} is not supported: use json, regex or choice",
                           param=f"structured_outputs.{name}", code="unsupported_parameter")


def _logit_bias(body: ChatRequest) -> tuple[tuple[int, float], ...]:
    if not body.logit_bias:
        return ()
    if len(body.logit_bias) > MAX_LOGIT_BIAS:
        raise ApiError(400, f"logit_bias names {len(body.logit_bias)} tokens, over the limit of {MAX_LOGIT_BIAS}",
                       param="logit_bias")
    pairs = []
    for key, amount in body.logit_bias.items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(400, f"logit_bias: {key!r} is not a token id (a whole number)", param="logit_bias") from None
        if not -100 <= amount <= 100:
            raise ApiError(400, f"logit_bias: the bias of token {token} must be between -100 and 100",
                           param="logit_bias")
        pairs.append((token, float(amount)))
    return tuple(sorted(pairs))


def _schema_text(value: Any, param: str) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ApiError(400, f"{param}: not valid JSON", param=param, code="invalid_schema") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{param}: a JSON Schema must be a JSON object", param=param, code="invalid_schema")
    return json.dumps(value)


def _choices(value: list[str], param: str) -> tuple[str, ...]:
    if not value:
        raise ApiError(400, f"{param}: give at least one choice", param=param)
    return tuple(value)


def grammar(body: ChatRequest, response_schema: str | None) -> tuple[dict, str | None]:
    """The output grammar the request asks for as GenerationOptions fields, and the request field it came from.

    `response_schema` is the response_format's schema text (None for plain text). At most one source may be given.
    """
    given: list[tuple[str, dict]] = []
    if response_schema is not None:
        given.append(("response_format", {"json_schema": response_schema}))
    outputs = body.structured_outputs
    if outputs is not None:
        given_fields = {"json": outputs.json_, "regex": outputs.regex, "choice": outputs.choice,
                        "json_object": outputs.json_object}
        named = [name for name, value in given_fields.items() if value not in (None, False)]
        if len(named) != 1:
            raise ApiError(400, "structured_outputs takes exactly one of json, regex, choice or json_object",
                           param="structured_outputs")
        name = named[0]
        where = f"structured_outputs.{name}"
        if name == "json":
            given.append((where, {"json_schema": _schema_text(outputs.json_, where)}))
        elif name == "json_object":
            given.append((where, {"json_schema": '{"type": "object"}'}))
        elif name == "regex":
            given.append((where, {"regex": outputs.regex}))
        else:
            given.append((where, {"choice": _choices(outputs.choice, where)}))
    if body.guided_json is not None:
        given.append(("guided_json", {"json_schema": _schema_text(body.guided_json, "guided_json")}))
    if body.guided_regex is not None:
        given.append(("guided_regex", {"regex": body.guided_regex}))
    if body.guided_choice is not None:
        given.append(("guided_choice", {"choice": _choices(body.guided_choice, "guided_choice")}))
    if len(given) > 1:
        raise ApiError(400, f"{' and '.join(name for name, _ in given)} both constrain the answer: send one",
                       param=given[1][0])
    if not given:
        return {}, None
    if "regex" in given[0][1] and not given[0][1]["regex"]:
        raise ApiError(400, f"{given[0][0]}: the regular expression is empty", param=given[0][0])
    return given[0][1], given[0][0]


def option_fields(body: ChatRequest, response_schema: str | None) -> dict:
    """GenerationOptions fields for the request's penalties, bias, extras, logprobs and output grammar."""
    refuse_unknown(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    fields: dict = {
        "frequency_penalty": body.frequency_penalty or 0.0,
        "presence_penalty": body.presence_penalty or 0.0,
        "logit_bias": _logit_bias(body),
        "top_k": max(body.top_k or 0, 0),  # vLLM's -1 and 0 both mean "all tokens"
        "min_p": body.min_p or 0.0,
        "logprobs": (body.top_logprobs or 0) if body.logprobs else None,
    }
    if body.repetition_penalty is not None:
        # Asked for by name, it applies whether the answer is sampled or greedy (as in vLLM).
        fields.update(repetition_penalty=body.repetition_penalty, penalize_greedy=True)
    fields.update(grammar(body, response_schema)[0])
    return fields


def grammar_param(body: ChatRequest) -> str:
    """The request field that carries the output grammar (for naming it in an error)."""
    for name in ("structured_outputs", "guided_json", "guided_regex", "guided_choice"):
        if getattr(body, name) is not None:
            return name
    return "response_format"


PART_TYPES = ("text", "image_url")


def unsupported_part(raw: Any) -> ApiError | None:
    """A 400 naming the first message part of a type this server does not take (audio, files…), if any."""
    messages = raw.get("messages") if isinstance(raw, dict) else None
    for m, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for p, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind not in PART_TYPES:
                where = f"messages[{m}].content[{p}]"
                return ApiError(400, f"{where}: {kind} parts are not supported; send text parts, and images as "
                                     "image_url data URLs", param=where, code="unsupported_content")
    return None
