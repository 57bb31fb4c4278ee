"""The OpenAI-compatible HTTP API over the answer service: chat completions (plain and streamed), models, health,
tokenize/detokenize and Prometheus metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlassist import __version__
from vlassist.answers.schemas import SchemaError
from vlassist.config import Settings
from vlassist.conversation import TokenLogprob
from vlassist.errors import OptionError, VlassistError
from vlassist.images import decode_for
from vlassist.redirects import RelativeRedirects
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job
from vlassist.service.jobs import Request as JobRequest
from vlassist.service.limits import ContextLengthError, LimitError

from . import convert, params, tokens
from .choices import Choices
from .convert import ApiError
from .imagebudget import check_images, image_parts
from .limits import BodyLimit
from .metrics import ApiMetrics
from .models import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorBody,
    Extension,
    ModelCard,
    ModelList,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from .models import TokenLogprob as ApiTokenLogprob
from .stops import StopCutter
from .toolcalls import ToolCallSplitter, calls_expected
from .validate import check_request, public_message

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there
STOP_WAIT_S = 30.0  # how long a cancelled answer may take to end (one decode step, normally)


class _ClientGone(Exception):
    """The client closed the connection; its job has been cancelled."""


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _admission_error(exc: VlassistError, body: ChatRequest) -> ApiError:
    if isinstance(exc, ContextLengthError):  # OpenAI's answer to a prompt the context cannot hold
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, LimitError):  # a question over the server's character limit: the request is too large
        return ApiError(413, str(exc), param="messages", code="request_too_large")
    if isinstance(exc, SchemaError):
        return ApiError(400, str(exc), param=params.grammar_param(body), code="invalid_schema")
    if isinstance(exc, OptionError):
        return ApiError(400, str(exc), param=exc.param, code="invalid_value")
    return ApiError(400, str(exc), code="refused")


def _api_logprobs(entries: list[TokenLogprob]) -> ChoiceLogprobs:
    """OpenAI's `logprobs` object for these answer tokens."""
    return ChoiceLogprobs(content=[
        ApiTokenLogprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                        top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top])
        for e in entries])


def create_app(service: AnswerService, settings: Settings, model_id: str, family: str,
               base_id: str | None = None) -> FastAPI:
    """The FastAPI app answering with `service`; `model_id` is what /v1/models lists, `family` maps boxes.

    `base_id`: with a LoRA adapter applied, the base checkpoint's own id, which this server does not answer as.
    """
    # No /docs or /redoc: their pages load scripts from a CDN; /openapi.json documents the API offline.
    app = FastAPI(title="vlassist", version=__version__, docs_url=None, redoc_url=None,
                  responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}})
    created = int(time.time())
    metrics = ApiMetrics(service) if settings.metrics else None

    def respond(exc: ApiError) -> JSONResponse:
        if metrics is not None:
            metrics.error(exc.status, exc.code)
        return _error(exc)

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        # The scheme is case-insensitive (RFC 9110); the key is compared in constant time.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                                 settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <VLASSIST_API_KEY>`",
                           code="invalid_api_key")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A part type this server does not take fails validation; name it rather than echo pydantic's union errors.
        if (unsupported := params.unsupported_part(exc.body)) is not None:
            return respond(unsupported)
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return respond(ApiError(400, message, param=where, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return respond(ApiError(exc.status_code, str(exc.detail), code=str(exc.status_code)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug still answers JSON, and without its traceback or the server's file paths (those go to the log).
        return respond(ApiError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                                code="internal_error", type="server_error"))

    if settings.max_body_mb:
        app.add_middleware(BodyLimit, max_bytes=int(settings.max_body_mb * 1024 * 1024))
    app.add_middleware(RelativeRedirects)  # the trailing-slash redirect must not echo the Host header

    @app.get("/health")
    async def health() -> dict:
        """Liveness, with the queue's length and the answers running (no key needed: load balancers poll it)."""
        return {"status": "ok", "model": model_id, "queued": service.queued, "answering": service.answering,
                "slots": service.slots}

    def card() -> ModelCard:
        context = getattr(service.answerer, "context_tokens", None)
        return ModelCard(id=model_id, created=created, family=family,
                         max_model_len=context if isinstance(context, int) else None)

    @app.get("/v1/models", dependencies=[Depends(check_key)], response_model=ModelList,
             response_model_exclude_none=True)
    async def models() -> ModelList:
        """The one model this server answers with, its family and context length."""
        return ModelList(data=[card()])

    @app.get("/v1/models/{name:path}", dependencies=[Depends(check_key)], response_model=ModelCard,
             response_model_exclude_none=True)
    async def model(name: str) -> ModelCard:
        """One model by id: the loaded one, or a 404."""
        if name != model_id:
            raise ApiError(404, f"the model {name!r} does not exist: this server answers with {model_id!r}",
                           param="model", code="model_not_found")
        return card()

    tokens.add_routes(app, service, settings, [Depends(check_key)], lambda: card().max_model_len)

    if metrics is not None:
        @app.get("/metrics", dependencies=[Depends(check_key)])
        async def prometheus() -> Response:
            """Prometheus metrics: queue length, running answers, tokens, latency histograms, errors by code."""
            return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)],
              response_model=ChatCompletion, response_model_exclude_none=True)
    async def chat(body: ChatRequest, request: Request):
        """Answer a conversation; `stream: true` sends OpenAI chunks as server-sent events, then `[DONE]`."""
        check_request(body)
        if base_id is not None and body.model == base_id:
            raise ApiError(400, f"model {base_id!r} is not served here: this server answers with the adapter "
                                f"{model_id!r} applied", param="model", code="model_not_found")
        stops = convert.stop_strings(body)

        def queue() -> list[Job]:
            # Images are admitted from their headers first (pixels, visual tokens), then decoded straight to
            # their model-input size: a request that cannot be answered never decodes a pixel.
            answerer = service.answerer
            planned = convert.to_options(body, [detail for *_, detail in image_parts(body)], settings)
            try:
                fit = check_images(body, answerer, planned, settings.max_prompt_tokens,
                                   int(settings.max_request_megapixels * 1_000_000))
            except VlassistError as exc:
                raise _admission_error(exc, body) from None
            with decode_for(fit):
                turns, details = convert.to_turns(body)
            # The engine ends a row at a stop string too, so its slot frees at once; the cutter trims the text.
            options = dataclasses.replace(convert.to_options(body, details, settings), stop_strings=tuple(stops))
            try:
                if body.n > 1:
                    return service.submit_choices(JobRequest(turns, options), body.n)
                return [service.submit(JobRequest(turns, options))]
            except VlassistError as exc:
                raise _admission_error(exc, body) from None

        # Decoding images and counting the prompt's tokens are CPU work (on untrusted bytes): off the event loop,
        # in one hop, so the job is queued the moment its images are ready.
        jobs = await run_in_threadpool(queue)
        if len(jobs) > 1:
            answers = [_Answer(service, job, request, StopCutter(stops), model_id, family, body, metrics, index)
                       for index, job in enumerate(jobs)]
            choices = Choices(answers)
            if body.stream:
                return StreamingResponse(choices.events(), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            try:
                return await choices.whole()
            except _ClientGone:
                return JSONResponse({}, status_code=499)
        answer = _Answer(service, jobs[0], request, StopCutter(stops), model_id, family, body, metrics)
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
                 family: str, body: ChatRequest, metrics: ApiMetrics | None = None, index: int = 0):
        self.service, self.job, self.request, self.cutter = service, job, request, cutter
        self.model, self.family, self.body, self.metrics, self.index = model, family, body, metrics, index
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.text = ""
        self.logprobs_sent = 0  # answer tokens whose logprobs have gone out
        self.tools = ToolCallSplitter(calls_expected(body), body.parallel_tool_calls is not False)

    def _logprobs(self, final: bool) -> ChoiceLogprobs | None:
        """Logprobs of the tokens not sent yet whose bytes the text sent so far holds (all of them at the end,
        unless a stop string cut the text)."""
        entries = self.job.logprobs if self.body.logprobs else None
        if entries is None:
            return None
        room, fresh = len(self.text.encode("utf-8", "surrogatepass")), []
        used = sum(len(e.bytes) for e in entries[:self.logprobs_sent])
        for entry in entries[self.logprobs_sent:]:
            if used + len(entry.bytes) > room and not (final and not self.cutter.hit):
                break
            used += len(entry.bytes)
            fresh.append(entry)
        self.logprobs_sent += len(fresh)
        return _api_logprobs(fresh)

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.answered(self.job.stats, self.job.outcome or "unknown")

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
                # Matching is linear, but a thread keeps even a long answer's scan off the loop serving others.
                piece = (await run_in_threadpool(self.cutter.feed, text[sent:]) if self.cutter.stops
                         else self.cutter.feed(text[sent:]))
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
            return ApiError(500, public_message(self.job.error or "the answer failed"), code="answer_failed",
                            type="server_error")
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
        self._count()
        if (error := self._failed()) is not None:
            raise error
        self.tools.feed(self.text)
        self.tools.finish()
        calls = self.tools.calls or None
        reason = convert.finish_reason(self.job.stats, self.cutter.hit, bool(calls))
        content = self.tools.content if self.tools.content or not calls else None
        message = AssistantMessage(content=content, tool_calls=calls)
        choice = Choice(index=self.index, message=message, finish_reason=reason, logprobs=self._logprobs(final=True))
        return ChatCompletion(id=self.id, created=self.created, model=self.model, usage=self._usage(),
                              choices=[choice], vlassist=self._extension())

    def _deltas(self, content: str, calls: list, logprobs: ChoiceLogprobs | None = None) -> str:
        """The events for split answer text: its content (with the logprobs of its tokens), then each completed
        call whole."""
        tokens = logprobs is not None and bool(logprobs.content)
        events = self._chunk(Delta(content=content), logprobs=logprobs) if content or tokens else ""
        for call in calls:
            index = self.tools.calls.index(call)
            events += self._chunk(Delta(tool_calls=[ToolCallDelta(index=index, id=call.id,
                                                                  function=call.function)]))
        return events

    def _chunk(self, delta: Delta, finish: str | None = None, logprobs: ChoiceLogprobs | None = None,
               **extra) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    choices=[ChunkChoice(index=self.index, delta=delta, finish_reason=finish,
                                                         logprobs=logprobs)],
                                    **extra)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    async def events(self, last: bool = True) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, text chunks, a finish chunk with the extension, usage, `[DONE]`.

        With `last` false (one of n choices) the usage chunk and `[DONE]` are left to the caller.
        """
        try:
            yield self._chunk(Delta(role="assistant", content=""))
            async for piece in self._pieces():
                if events := self._deltas(*self.tools.feed(piece), logprobs=self._logprobs(final=False)):
                    yield events
            # The closing events go out in one write: the client's stream ends with no extra round of the loop.
            self._count()
            if (error := self._failed()) is not None:
                if self.metrics is not None:
                    self.metrics.error(error.status, error.code)
                closing = f"data: {json.dumps(error.body())}\n\n"
            else:
                rest = self._logprobs(final=True)
                # Tokens whose text the stream had not sent yet (the last characters, or none at all).
                closing = self._deltas(*self.tools.finish(),
                                       logprobs=rest if rest is not None and rest.content else None)
                reason = convert.finish_reason(self.job.stats, self.cutter.hit, bool(self.tools.calls))
                closing += self._chunk(Delta(), reason, vlassist=self._extension())
                options = self.body.stream_options
                if last and options is not None and options.include_usage:
                    usage = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                                usage=self._usage())
                    closing += f"data: {usage.model_dump_json(exclude_none=True)}\n\n"
            yield closing + "data: [DONE]\n\n" if last else closing
        except _ClientGone:
            return
        finally:
            # However the stream ends (client gone, server cancelled the task), the job must not keep the model.
            self.service.cancel(self.job.id)

