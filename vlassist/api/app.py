"""The OpenAI-compatible HTTP API over the answer service: chat completions (plain and streamed), models, health,
tokenize/detokenize and Prometheus metrics."""

from __future__ import annotations

import dataclasses
import hmac
import time

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlassist import __version__
from vlassist.answers.schemas import SchemaError
from vlassist.config import Settings
from vlassist.errors import OptionError, VlassistError
from vlassist.images import decode_for
from vlassist.redirects import RelativeRedirects
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job
from vlassist.service.jobs import Request as JobRequest
from vlassist.service.limits import ContextLengthError, LimitError

from . import convert, params, tokens
from .answer import Answer, ClientGone
from .choices import Choices
from .convert import ApiError
from .imagebudget import check_images, image_parts
from .limits import BodyLimit
from .metrics import ApiMetrics
from .models import (
    ChatCompletion,
    ChatRequest,
    ErrorBody,
    ModelCard,
    ModelList,
)
from .stops import StopCutter
from .validate import check_request


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
            answers = [Answer(service, job, request, StopCutter(stops), model_id, family, body, metrics, index)
                       for index, job in enumerate(jobs)]
            choices = Choices(answers)
            if body.stream:
                return StreamingResponse(choices.events(), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            try:
                return await choices.whole()
            except ClientGone:
                return JSONResponse({}, status_code=499)
        answer = Answer(service, jobs[0], request, StopCutter(stops), model_id, family, body, metrics)
        if body.stream:
            return StreamingResponse(answer.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return await answer.whole()
        except ClientGone:
            return JSONResponse({}, status_code=499)

    return app
