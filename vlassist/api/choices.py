"""The API's `n`: several answers to one request (one job each, one prefill) as one response or one event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .models import ChatCompletion, ChatCompletionChunk, Usage


class Choices:
    """The n answers of one request (one job each, one prefill), merged into one response or one event stream."""

    def __init__(self, answers: list):
        self.answers = answers
        for answer in answers[1:]:
            answer.id, answer.created = answers[0].id, answers[0].created  # one completion, n choices

    def _usage(self) -> Usage:
        prompt = self.answers[0].job.stats.prompt_tokens
        completion = sum(answer.job.stats.new_tokens for answer in self.answers)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def whole(self) -> ChatCompletion:
        """Every choice complete, in one response body; the extension is the first choice's."""
        try:
            done = await asyncio.gather(*(answer.whole() for answer in self.answers))
        finally:
            for answer in self.answers:
                answer.service.cancel(answer.job.id)
        first = done[0]
        return ChatCompletion(id=first.id, created=first.created, model=first.model, usage=self._usage(),
                              choices=[c for body in done for c in body.choices], vlassist=first.vlassist)

    async def events(self) -> AsyncIterator[str]:
        """Every choice's events as they come (each chunk names its choice), then usage and one `[DONE]`."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def pump(answer) -> None:
            try:
                async for event in answer.events(last=False):
                    await queue.put(event)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(answer)) for answer in self.answers]
        try:
            left = len(tasks)
            while left:
                event = await queue.get()
                if event is None:
                    left -= 1
                else:
                    yield event
            closing = ""
            first = self.answers[0]
            options = first.body.stream_options
            if options is not None and options.include_usage:
                usage = ChatCompletionChunk(id=first.id, created=first.created, model=first.model, choices=[],
                                            usage=self._usage())
                closing = f"data: {usage.model_dump_json(exclude_none=True)}\n\n"
            yield closing + "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()
            for answer in self.answers:
                answer.service.cancel(answer.job.id)
