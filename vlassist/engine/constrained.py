"""Schema-constrained decoding: a transformers logits processor that only lets JSON valid against a schema out.

xgrammar compiles the JSON Schema into a token mask for the model's vocabulary. On top of the mask, the
processor keeps a token budget: once the answer nears `max_new_tokens` it prefers tokens that close the open
strings, arrays and objects, so a rambling model still ends with a complete document instead of being cut.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch
import xgrammar as xgr
from cachetools import LRUCache
from transformers import LogitsProcessor

from vlassist.answers.schema_limits import check_choices, check_regex, check_schema_limits
from vlassist.answers.schemas import SchemaError, load_schema  # noqa: F401  (SchemaError is part of this API)

DEFAULT_MAX_NEW_TOKENS = 1024  # GenerationOptions' default, for callers that do not pass theirs
CLOSING_MARGIN = 16  # extra tokens kept for closing brackets beyond a minimal document

COMPILE_BUDGET_S = 10.0  # the longest a grammar may take to compile at admission before it is refused
GRAMMARS_KEPT = 64  # compiled grammars cached by their text's hash

_compilers: dict[tuple[int, int], xgr.GrammarCompiler] = {}
_compilers_lock = threading.Lock()
_grammars: LRUCache = LRUCache(maxsize=GRAMMARS_KEPT)  # (tokenizer id, width, kind, sha256) → CompiledGrammar
_grammars_lock = threading.Lock()
# Admission compiles here, off the event loop and the answer worker; two threads bound what refused work costs.
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlassist-grammar")


def vocab_size(model_config) -> int | None:
    """The width of the model's logits, which can exceed the tokenizer's vocabulary (padding rows)."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return getattr(text_config, "vocab_size", None) or getattr(model_config, "vocab_size", None)


def stop_token_ids(tokenizer, model_config=None) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS, ChatML's <|im_end|>, and the config's EOS ids."""
    ids = set()
    for token in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>"):
        if token and tokenizer.convert_tokens_to_ids(token) not in (None, tokenizer.unk_token_id):
            ids.add(int(tokenizer.convert_tokens_to_ids(token)))
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    eos = getattr(text_config, "eos_token_id", None)
    ids.update(int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    return sorted(ids)


def _compiler(tokenizer, model_config) -> xgr.GrammarCompiler:
    # Building the tokenizer info scans the whole vocabulary: do it once per tokenizer.
    size = vocab_size(model_config) or len(tokenizer)
    key = (id(tokenizer), size)
    with _compilers_lock:
        if key not in _compilers:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=max(size, len(tokenizer)),
                                                      stop_token_ids=stop_token_ids(tokenizer, model_config))
            _compilers[key] = xgr.GrammarCompiler(info)
        return _compilers[key]


def _clean(exc: BaseException) -> str:
    # The grammar library's messages start with a time stamp and its source path: neither is the client's business.
    text = (str(exc).strip().splitlines() or [""])[0]
    text = re.sub(r"^\[[\d:.]+\]\s*", "", text)
    text = re.sub(r"\S*[/\\]\S+\.(?:cc|cpp|h|hpp|py):\d+:\s*", "", text).strip()
    if not text or text.startswith("Check failed"):
        return "the grammar engine cannot compile it"
    return text


def grammar_source(options) -> tuple[str, str] | None:
    """The grammar `options` ask for as (kind, text): ("json", schema), ("regex", pattern) or ("choice", JSON list)."""
    if options.json_schema:
        return "json", options.json_schema
    if options.regex:
        return "regex", options.regex
    if options.choice:
        return "choice", json.dumps(list(options.choice), ensure_ascii=False)
    return None


def check_source(kind: str, text: str) -> None:
    """Refuse a grammar over a limit before any compile: schema size, depth, enums, patterns, `$ref` loops."""
    if kind == "json":
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None  # load_schema below names what is wrong
        if isinstance(parsed, dict):
            # Before the schema validator, which recurses once per level and would overflow on a deep schema.
            check_schema_limits(parsed, text)
        load_schema(text)
    elif kind == "regex":
        check_regex(text, "regex")
    else:
        check_choices(json.loads(text), "choice")


def _compile(compiler: xgr.GrammarCompiler, kind: str, text: str) -> xgr.CompiledGrammar:
    try:
        if kind == "json":
            # Free whitespace would let a model pad forever; compact separators keep every token meaningful.
            return compiler.compile_json_schema(json.dumps(load_schema(text)), any_whitespace=False,
                                                strict_mode=True)
        if kind == "regex":
            return compiler.compile_regex(text)
        # Each choice as an EBNF string literal: JSON's escapes (quotes, backslashes, control characters) are EBNF's.
        choices = json.loads(text)
        return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices))
    except (RuntimeError, ValueError, TypeError) as exc:
        what = {"json": "JSON Schema", "regex": "regular expression", "choice": "choice list"}[kind]
        raise SchemaError(f"this {what} cannot be used for constrained output: {_clean(exc)}") from None


def compile_source(tokenizer, kind: str, text: str, model_config) -> xgr.CompiledGrammar:
    """The compiled grammar for (kind, text), checked against the limits first and cached by the text's hash."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    size = vocab_size(model_config) or len(tokenizer)
    key = (id(tokenizer), size, kind, digest)
    with _grammars_lock:
        found = _grammars.get(key)
    if found is not None:
        return found
    check_source(kind, text)  # before the compiler is built: a refusal costs no vocabulary scan
    compiler = _compiler(tokenizer, model_config)
    compiled = _compile(compiler, kind, text)
    with _grammars_lock:
        _grammars[key] = compiled
    return compiled


def compile_schema(tokenizer, schema_text: str | dict, model_config) -> xgr.CompiledGrammar:
    """Compile a JSON Schema to a grammar over this tokenizer (compact JSON: no free whitespace)."""
    text = schema_text if isinstance(schema_text, str) else json.dumps(schema_text)
    return compile_source(tokenizer, "json", text, model_config)


def compile_within(tokenizer, options, model_config, budget_s: float = COMPILE_BUDGET_S) -> None:
    """Compile (into the cache) the grammar `options` ask for, refusing one that takes longer than `budget_s`."""
    source = grammar_source(options)
    if source is None:
        return
    future = _pool.submit(compile_source, tokenizer, *source, model_config)
    try:
        future.result(timeout=budget_s)
    except FutureTimeout:
        raise SchemaError(f"the {source[0]} grammar took longer than {budget_s:g} s to compile, over the limit; "
                          "simplify it") from None


def minimal_length(schema: Any, depth: int = 0) -> int:
    """Characters in the shortest JSON document `schema` accepts (an estimate used as a closing reserve)."""
    if not isinstance(schema, dict) or depth > 20:
        return 4
    for key in ("enum", "const"):
        if key in schema:
            values = schema[key] if key == "enum" else [schema[key]]
            return min((len(json.dumps(v, ensure_ascii=False)) for v in values), default=4)
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return min(minimal_length(s, depth + 1) for s in schema[key])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        return 2 + sum(len(json.dumps(k)) + 4 + minimal_length(props.get(k, {}), depth + 1) for k in required)
    if kind == "array":
        return 2 + int(schema.get("minItems", 0)) * (2 + minimal_length(schema.get("items", {}), depth + 1))
    if kind == "string":
        return 2 + int(schema.get("minLength", 0)) * 3
    return 4


class SchemaLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the schema; near the token budget, prefers tokens that close."""

    def __init__(self, compiled: xgr.CompiledGrammar, ranks: ClosingRanks, budget: int):
        self.compiled = compiled
        self.ranks = ranks
        self.budget = budget
        self.matchers: list[xgr.GrammarMatcher] = []
        self.lexers: list[_StringState] = []
        self.bitmask = None
        self.prompt_len = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, width = scores.shape
        if not self.matchers:
            self.matchers = [xgr.GrammarMatcher(self.compiled) for _ in range(batch)]
            self.lexers = [_StringState() for _ in range(batch)]
            self.bitmask = xgr.allocate_token_bitmask(batch, self.compiled.tokenizer_info.vocab_size)
            self.prompt_len = input_ids.shape[1]
        else:
            for row, matcher in enumerate(self.matchers):
                token = int(input_ids[row, -1])
                if matcher.is_terminated():
                    continue
                if not matcher.accept_token(token):
                    raise RuntimeError("the decoder produced a token the JSON grammar does not allow")
                self.lexers[row].feed(self.ranks.text(token))
        for row, matcher in enumerate(self.matchers):
            if not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, row)
        device = scores.device
        masked = scores.float() if device.type in ("cpu", "cuda") else scores.float().cpu()
        mask_width = min(width, self.compiled.tokenizer_info.vocab_size)
        xgr.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), vocab_size=mask_width)
        if width > mask_width:  # logits rows the grammar does not know are never valid
            masked[:, mask_width:] = float("-inf")
        if input_ids.shape[1] - self.prompt_len >= self.budget:
            for row in range(batch):
                masked[row] = self._prefer_closing(masked[row], self.lexers[row].in_string)
        return masked.to(device=device, dtype=scores.dtype)

    def select_rows(self, rows: list[int]) -> None:
        """Keep only these rows' grammar state: a batched decode dropped the other rows' finished answers."""
        if self.matchers:
            self.matchers = [self.matchers[row] for row in rows]
            self.lexers = [self.lexers[row] for row in rows]
            self.bitmask = self.bitmask[rows].contiguous()

    def _prefer_closing(self, scores: torch.Tensor, in_string: bool) -> torch.Tensor:
        # Among the allowed tokens keep only the best-closing rank, so the document ends in a few steps.
        ranks = (self.ranks.in_string if in_string else self.ranks.outside).to(scores.device)
        n = min(ranks.shape[0], scores.shape[0])
        allowed = torch.isfinite(scores[:n])
        ranked = torch.where(allowed, ranks[:n].to(torch.int16), torch.tensor(-1, dtype=torch.int16,
                                                                              device=scores.device))
        keep = ranked == ranked.max()
        out = torch.full_like(scores, float("-inf"))
        out[:n] = torch.where(keep, scores[:n], out[:n])
        return out


class _StringState:
    """Whether the JSON text so far ends inside a string literal (the grammar guarantees it is well formed)."""

    def __init__(self):
        self.in_string = False
        self.escaped = False

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self.escaped:
                self.escaped = False
            elif self.in_string and byte == 0x5C:  # backslash
                self.escaped = True
            elif byte == 0x22:  # quote
                self.in_string = not self.in_string


class ClosingRanks:
    """Per-token preference when an answer must end soon, inside and outside a JSON string."""

    def __init__(self, decoded_vocab: list[bytes]):
        self.vocab = decoded_vocab
        inside, outside = [], []
        for data in decoded_vocab:
            # Inside a string any allowed unescaped quote ends it; better still if brackets close after it.
            quote = data.find(b'"')
            if b"\\" in data or quote < 0:
                inside.append(0)
            else:
                inside.append(3 if any(c in b"}]" for c in data[quote + 1:]) else 2)
            first = data.lstrip(b" \t\r\n")[:1]
            outside.append(3 if first in (b"}", b"]") else 1 if first == b"," else 0)
        self.in_string = torch.tensor(inside, dtype=torch.int8)
        self.outside = torch.tensor(outside, dtype=torch.int8)

    def text(self, token_id: int) -> bytes:
        """The bytes a token stands for (empty for ids past the vocabulary)."""
        return self.vocab[token_id] if 0 <= token_id < len(self.vocab) else b""


_ranks_cache: dict[int, ClosingRanks] = {}


def closing_ranks(compiled: xgr.CompiledGrammar) -> ClosingRanks:
    """Closing preferences for the compiled grammar's vocabulary, computed once per tokenizer info."""
    info = compiled.tokenizer_info
    key = id(info)
    if key not in _ranks_cache:
        _ranks_cache[key] = ClosingRanks(info.decoded_vocab)
    return _ranks_cache[key]


def grammar_logits_processor(tokenizer, options, model_config):
    """A fresh logits processor keeping one answer inside the JSON Schema, regex or choices of `options`."""
    kind, text = grammar_source(options)
    if kind == "json":
        return schema_logits_processor(tokenizer, text, model_config, options.max_new_tokens)
    compiled = compile_source(tokenizer, kind, text, model_config)
    # No closing preference: a pattern or a choice has no brackets to close, so the budget never starts.
    return SchemaLogitsProcessor(compiled, closing_ranks(compiled), budget=options.max_new_tokens + 1)


def schema_logits_processor(tokenizer, schema_text: str, model_config, max_new_tokens: int | None = None):
    """A fresh logits processor for one generate() call that keeps the answer valid against `schema_text`.

    Pass the call's `max_new_tokens` so the answer closes in time; without it the default limit is assumed.
    """
    compiled = compile_schema(tokenizer, schema_text, model_config)
    limit = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    reserve = minimal_length(load_schema(schema_text)) + CLOSING_MARGIN
    return SchemaLogitsProcessor(compiled, closing_ranks(compiled), budget=max(1, limit - reserve))
