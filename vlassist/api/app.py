"""The OpenAI-compatible HTTP API over the answer service: chat completions (plain and streamed), models, health."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlassist import __version__
from vlassist.config import Settings
from vlassist.errors import VlassistError
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job
from vlassist.service.jobs import Request as JobRequest
from vlassist.service.limits import LimitError

from . import convert
from .convert import ApiError, StopCutter
from .models import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    Extension,
    ModelCard,
    ModelList,
    Usage,
)

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there
STOP_WAIT_S = 30.0  # how long a cancelled answer may take to end (one decode step, normally)


class _ClientGone(Exception):
    """The client closed the connection; its job has been cancelled."""


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _admission_error(exc: VlassistError) -> ApiError:
    if isinstance(exc, LimitError):  # a question or prompt over a limit: the request is too large
        return ApiError(413, str(exc), param="messages", code="request_too_large")
    return ApiError(400, str(exc), code="refused")


def create_app(service: AnswerService, settings: Settings, model_id: str, family: str,
               base_id: str | None = None) -> FastAPI:
    """The FastAPI app answering with `service`; `model_id` is what /v1/models lists, `family` maps boxes.

    `base_id`: with a LoRA adapter applied, the base checkpoint's own id, which this server does not answer as.
    """
    # No /docs or /redoc: their pages load scripts from a CDN; /openapi.json documents the API offline.
    app = FastAPI(title="vlassist", version=__version__, docs_url=None, redoc_url=None,
                  responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}})
    created = int(time.time())

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <VLASSIST_API_KEY>`",
                           code="invalid_api_key")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return _error(ApiError(400, message, param=where, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(ApiError(exc.status_code, str(exc.detail), code=str(exc.status_code)))

    @app.get("/health")
    async def health() -> dict:
        """Liveness, with the queue's length (no key needed: load balancers poll it)."""
        return {"status": "ok", "model": model_id, "queued": service.queued}

    @app.get("/v1/models", dependencies=[Depends(check_key)], response_model=ModelList)
    async def models() -> ModelList:
        """The one model this server answers with."""
        return ModelList(data=[ModelCard(id=model_id, created=created)])

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)],
              response_model=ChatCompletion, response_model_exclude_none=True)
    async def chat(body: ChatRequest, request: Request):
        """Answer a conversation; `stream: true` sends OpenAI chunks as server-sent events, then `[DONE]`."""
        if base_id is not None and body.model == base_id:
            raise ApiError(400, f"model {base_id!r} is not served here: this server answers with the adapter "
                                f"{model_id!r} applied", param="model", code="model_not_found")
        stops = convert.stop_strings(body)

        def queue() -> Job:
            turns, details = convert.to_turns(body)
            try:
                return service.submit(JobRequest(turns, convert.to_options(body, details, settings)))
            except VlassistError as exc:
                raise _admission_error(exc) from None

        # Decoding images and counting the prompt's tokens are CPU work (on untrusted bytes): off the event loop,
        # in one hop, so the job is queued the moment its images are ready.
        job = await run_in_threadpool(queue)
        answer = _Answer(service, job, request, StopCutter(stops), model_id, family, body)
        if body.stream:
            return StreamingResponse(answer.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return await answer.whole()
        except _ClientGone:
            return JSONResponse({}, status_code=499)

    return app


class _Answer:
    """One request's job seen from the event loop: its text as it grows, stop strings, the response bodies."""

    def __init__(self, service: AnswerService, job: Job, request: Request, cutter: StopCutter, model: str,
                 family: str, body: ChatRequest):
        self.service, self.job, self.request, self.cutter = service, job, request, cutter
        self.model, self.family, self.body = model, family, body
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.text = ""

    async def _pieces(self) -> AsyncIterator[str]:
        """Text to send, as the job makes it; cancels the job on a stop string or when the client leaves."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        # Each change of the job wakes the event loop straight from the worker thread.
        forget = self.job.on_change(lambda: loop.call_soon_threadsafe(changed.set))
        try:
            async for piece in self._follow(changed):
                yield piece
        finally:
            forget()

    async def _follow(self, changed: asyncio.Event) -> AsyncIterator[str]:
        sent, checked = 0, time.monotonic()
        while True:
            # Checked on a clock, not only when idle: a server that drops writes to a closed socket would
            # otherwise keep a steadily streaming answer running for nobody.
            if time.monotonic() - checked > DISCONNECT_POLL_S:
                checked = time.monotonic()
                if await self.request.is_disconnected():
                    self.service.cancel(self.job.id)
                    raise _ClientGone
            changed.clear()
            done = self.job.done  # read before the text: once done, the text is final
            text = self.job.text
            if len(text) > sent:
                piece = self.cutter.feed(text[sent:])
                sent = len(text)
                if piece:
                    self.text += piece
                    yield piece
                if self.cutter.hit:
                    self.service.cancel(self.job.id)
                    await run_in_threadpool(self.job.wait, STOP_WAIT_S)
                    return
            if done:
                if rest := self.cutter.flush():
                    self.text += rest
                    yield rest
                return
            try:
                await asyncio.wait_for(changed.wait(), DISCONNECT_POLL_S)
            except TimeoutError:
                pass

    def _failed(self) -> ApiError | None:
        if self.job.outcome == "failed":
            return ApiError(500, self.job.error or "the answer failed", code="answer_failed", type="server_error")
        if self.job.outcome == "stopped" and not self.cutter.hit:
            return ApiError(503, "the answer was cancelled on the server", code="cancelled", type="server_error")
        return None

    def _extension(self) -> Extension:
        stats = self.job.stats
        data = stats.to_dict()
        # The job's place in the queue, in the server's own clock: lets clients see FIFO order and waiting time.
        data["job"] = {"id": self.job.id, "submitted": self.job.submitted, "started": self.job.started,
                       "finished": self.job.finished}
        return Extension(stats=data, boxes=convert.boxes(self.text, self.family, stats))

    def _usage(self) -> Usage:
        stats = self.job.stats
        return Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.new_tokens,
                     total_tokens=stats.prompt_tokens + stats.new_tokens)

    async def whole(self) -> ChatCompletion:
        """The complete answer as one response body."""
        async for _ in self._pieces():
            pass
        if (error := self._failed()) is not None:
            raise error
        reason = convert.finish_reason(self.job.stats, self.cutter.hit)
        return ChatCompletion(id=self.id, created=self.created, model=self.model, usage=self._usage(),
                              choices=[Choice(message=AssistantMessage(content=self.text), finish_reason=reason)],
                              vlassist=self._extension())

    def _chunk(self, delta: Delta, finish: str | None = None, **extra) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, text chunks, a finish chunk with the extension, usage, `[DONE]`."""
        try:
            yield self._chunk(Delta(role="assistant", content=""))
            async for piece in self._pieces():
                yield self._chunk(Delta(content=piece))
            # The closing events go out in one write: the client's stream ends with no extra round of the loop.
            if (error := self._failed()) is not None:
                closing = f"data: {json.dumps(error.body())}\n\n"
            else:
                reason = convert.finish_reason(self.job.stats, self.cutter.hit)
                closing = self._chunk(Delta(), reason, vlassist=self._extension())
                options = self.body.stream_options
                if options is not None and options.include_usage:
                    usage = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                                usage=self._usage())
                    closing += f"data: {usage.model_dump_json(exclude_none=True)}\n\n"
            yield closing + "data: [DONE]\n\n"
        except _ClientGone:
            return
        finally:
            # However the stream ends (client gone, server cancelled the task), the job must not keep the model.
            self.service.cancel(self.job.id)
