"""vLLM's /tokenize and /detokenize: a prompt's or chat's token ids (images as their visual tokens), and back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from vlassist.config import Settings
from vlassist.errors import VlassistError
from vlassist.service.answering import AnswerService

from . import convert
from .convert import ApiError
from .models import ChatRequest, DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse


def add_routes(app: FastAPI, service: AnswerService, settings: Settings, dependencies: Sequence,
               context: Callable[[], int | None]) -> None:
    """Add POST /tokenize and /detokenize to `app` (behind `dependencies`, e.g. the key check)."""

    def local_engine():
        engine = service.answerer
        if getattr(engine, "tokenize", None) is None:
            raise ApiError(501, "this server answers through a remote backend: ask that server to tokenize",
                           code="not_supported")
        return engine

    @app.post("/tokenize", dependencies=list(dependencies), response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        """vLLM's /tokenize: a prompt's or a chat's token ids, each image counted as its visual tokens."""
        engine = local_engine()
        if extra := sorted(body.model_extra or {}):
            raise ApiError(400, f"the parameter {extra[0]!r} is not supported by /tokenize", param=extra[0],
                           code="unsupported_parameter")
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "send either prompt or messages", param="prompt")
        if not body.add_generation_prompt:
            raise ApiError(400, "add_generation_prompt false is not supported: chats are rendered ready for the "
                                "answer, as /v1/chat/completions sends them", param="add_generation_prompt")

        def count() -> list[int]:
            if body.prompt is not None:
                add = body.add_special_tokens if body.add_special_tokens is not None else True
                return engine.tokenize(body.prompt, add_special_tokens=add)
            chat = ChatRequest(messages=body.messages)
            turns, details = convert.to_turns(chat)
            try:
                return engine.tokenize(turns, convert.to_options(chat, details, settings))
            except VlassistError as exc:
                raise ApiError(400, str(exc), param="messages") from None

        tokens = await run_in_threadpool(count)
        strs = engine.token_strs(tokens) if body.return_token_strs else None
        return TokenizeResponse(count=len(tokens), max_model_len=context(), tokens=tokens, token_strs=strs)

    @app.post("/detokenize", dependencies=list(dependencies), response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        """vLLM's /detokenize: token ids back to text."""
        engine = local_engine()
        if extra := sorted(body.model_extra or {}):
            raise ApiError(400, f"the parameter {extra[0]!r} is not supported by /detokenize", param=extra[0],
                           code="unsupported_parameter")
        try:
            return DetokenizeResponse(prompt=engine.detokenize(body.tokens))
        except VlassistError as exc:
            raise ApiError(400, str(exc), param="tokens") from None
