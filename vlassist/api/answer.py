"""One chat-completion request's job seen from the event loop: text as it grows, stop strings, tool calls,
logprobs, and the response bodies (whole or streamed)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from vlassist.conversation import TokenLogprob
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job

from . import convert
from .convert import ApiError
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
    Extension,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from .models import TokenLogprob as ApiTokenLogprob
from .stops import StopCutter
from .toolcalls import ToolCallSplitter, calls_expected
from .validate import public_message

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there
STOP_WAIT_S = 30.0  # how long a cancelled answer may take to end (one decode step, normally)


class ClientGone(Exception):
    """The client closed the connection; its job has been cancelled."""


def _api_logprobs(entries: list[TokenLogprob]) -> ChoiceLogprobs:
    """OpenAI's `logprobs` object for these answer tokens."""
    return ChoiceLogprobs(content=[
        ApiTokenLogprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                        top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top])
        for e in entries])


class Answer:
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
                    raise ClientGone
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
        except ClientGone:
            return
        finally:
            # However the stream ends (client gone, server cancelled the task), the job must not keep the model.
            self.service.cancel(self.job.id)

