"""Admission limits: a request whose question or prompt is too large is refused before it is queued.

The rule for long conversations: nothing is ever trimmed silently. A prompt (the whole conversation so far, its
images and the new question) over the limit is refused with a message naming its size, the limit and what to do;
the usual remedy for a long conversation is to start a new one.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlassist.config import Settings
from vlassist.conversation import Answerer, GenerationOptions, Turn
from vlassist.errors import VlassistError
from vlassist.service.answering import Admission
from vlassist.service.jobs import Request


class LimitError(VlassistError):
    """A question or prompt is larger than this server accepts."""


class ContextLengthError(LimitError):
    """A prompt does not fit the model's context (less the answer's room) or the prompt cap."""

    def __init__(self, message: str, tokens: int, limit: int):
        super().__init__(message)
        self.tokens, self.limit = tokens, limit


def check_question(text: str, max_chars: int) -> None:
    """Refuse a question longer than `max_chars` characters."""
    if len(text) > max_chars:
        raise LimitError(f"the question is {len(text):,} characters long, over the limit of {max_chars:,}; "
                         "shorten it, or split it into several questions")


def prompt_limit(answerer: Answerer, options: GenerationOptions, max_prompt_tokens: int) -> int:
    """The most prompt tokens a request may take: the model's context less the answer's room, and the cap."""
    context = getattr(answerer, "context_tokens", None)
    limit = max_prompt_tokens if not isinstance(context, int) else min(max_prompt_tokens,
                                                                        context - options.max_new_tokens)
    row = getattr(answerer, "row_tokens", None)  # the K/V room one answer may take in a decode batch
    if isinstance(row, int):
        limit = min(limit, row - options.max_new_tokens)
    return max(0, limit)


def check_prompt(answerer: Answerer, turns: Sequence[Turn], options: GenerationOptions,
                 max_prompt_tokens: int) -> None:
    """Refuse a prompt (text and visual tokens) over the limit, with what to do about it."""
    count = getattr(answerer, "count_prompt_tokens", None)
    if count is None:  # an answerer that cannot count (e.g. a fake in tests) is limited by characters only
        return
    limit = prompt_limit(answerer, options, max_prompt_tokens)
    tokens = count(turns, options)
    if tokens <= limit:
        return
    context = getattr(answerer, "context_tokens", None)
    if isinstance(context, int) and tokens <= max_prompt_tokens and tokens < context:
        # The prompt itself fits: only the room kept for the answer does not, so a shorter answer is the remedy.
        raise ContextLengthError(f"this request needs {tokens:,} tokens (text and images), over the limit of "
                                 f"{limit:,} left by a {options.max_new_tokens:,}-token answer in the model's "
                                 f"{context:,}-token context; choose a shorter answer length (up to "
                                 f"{context - tokens:,} tokens fit)", tokens, limit)
    followup = sum(turn.role == "user" for turn in turns) > 1
    remedy = ("start a new conversation (this one has grown too long), or shorten the question"
              if followup else "shorten the question")
    raise ContextLengthError(f"this request needs {tokens:,} tokens (text and images), over the limit of {limit:,} "
                     f"(room is kept for a {options.max_new_tokens:,}-token answer); {remedy}, attach fewer "
                     "images, or use a lower resolution", tokens, limit)


def context_admission(answerer: Answerer, max_prompt_tokens: int, max_chars: int | None = None) -> Admission:
    """An admission check refusing a request whose prompt does not fit the model's context or the cap."""

    def admit(request: Request) -> None:
        turns = request.build_turns()
        if max_chars is not None and turns and turns[-1].role == "user":
            check_question(turns[-1].text, max_chars)  # cheap, and keeps a huge text from being tokenized
        check_prompt(answerer, turns, request.options, max_prompt_tokens)

    return admit


def options_admission(answerer: Answerer) -> Admission:
    """An admission check refusing options the answerer cannot use (a grammar over its limits, a bad logit bias),
    for answerers that can tell (`check_options`); grammars are compiled, and cached, here rather than in the queue."""

    def admit(request: Request) -> None:
        check = getattr(answerer, "check_options", None)
        if check is not None:
            check(request.options)

    return admit


def default_admission(answerer: Answerer, settings: Settings) -> list[Admission]:
    """The checks every front end passes to AnswerService: question length, prompt size, then the options."""
    return [context_admission(answerer, settings.max_prompt_tokens, settings.max_question_chars),
            options_admission(answerer)]
