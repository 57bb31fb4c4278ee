"""A request to answer and the job that tracks it: queued → running → done, readable from any thread."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from vlassist.conversation import GenerationOptions, Stats, Turn

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done"]
# How a finished job ended; "stopped" covers a cancel while queued as well as mid-answer.
Outcome = Literal["complete", "stopped", "failed"]


class AnswerSink(Protocol):
    """Where a job's text goes while it streams and when it ends (the history store, for the page)."""

    def progress(self, text: str) -> None:
        """The answer so far; called often, the sink decides how often to write."""

    def finish(self, text: str, outcome: Outcome, stats: Stats) -> None:
        """The answer ended: store it for good."""


@dataclass
class Request:
    """What to answer: the turns (or a function that builds them when the job starts) and how."""

    turns: Sequence[Turn] | Callable[[], Sequence[Turn]]
    options: GenerationOptions = field(default_factory=GenerationOptions)
    sink: AnswerSink | None = None
    conversation_id: int | None = None  # lets a deleted conversation cancel its jobs
    message_id: int | None = None  # the stored answer this job fills in, if any

    def build_turns(self) -> Sequence[Turn]:
        """The turns to answer; built late so an answer queued behind another sees that one complete."""
        return self.turns() if callable(self.turns) else self.turns


_ids = itertools.count(1)


class Job:
    """One request's progress: its text so far, state, outcome and stats; wait on it or iterate its chunks."""

    def __init__(self, request: Request):
        self.id = f"job-{next(_ids)}"
        self.request = request
        self.state: JobState = "queued"
        self.outcome: Outcome | None = None
        self.text = ""
        self.stats = Stats()
        self.error: str | None = None
        self.logprobs: list | None = None  # the reply's TokenLogprob list, growing as tokens are chosen, if asked
        self.saved: bool | None = None  # after the end: whether the sink stored the final answer (None: no sink)
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.cancel_event = threading.Event()
        self._changed = threading.Condition()
        self._listeners: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        """True once the job has ended, however."""
        return self.state == "done"

    @property
    def cancelled(self) -> bool:
        """True once someone asked to stop this job."""
        return self.cancel_event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (or `timeout` passes); True if it ended."""
        with self._changed:
            return self._changed.wait_for(lambda: self.done, timeout)

    def chunks(self, poll_s: float = 0.5) -> Iterator[str]:
        """The answer's text as it grows, from any thread, until the job ends."""
        sent = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda sent=sent: len(self.text) > sent or self.done, poll_s)
                text, done = self.text, self.done
            if len(text) > sent:
                yield text[sent:]
                sent = len(text)
            if done:
                return

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` after every change (start, more text, the end); returns a function that stops it.

        It runs on the worker thread, so it must be quick and must not block: an event loop's
        call_soon_threadsafe, for instance, which spares a watching thread and its wake-up per chunk.
        """
        with self._changed:
            self._listeners.append(callback)

        def forget() -> None:
            with self._changed:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return forget

    def _tell(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # a listener that went away (a closed event loop) must not stop the answer
                log.debug("job %s: a change listener failed", self.id, exc_info=True)

    # ---- written by the service's worker thread only ----

    def _start(self) -> None:
        with self._changed:
            self.state, self.started = "running", time.monotonic()
            self._changed.notify_all()
        self._tell()

    def _append(self, chunk: str) -> None:
        with self._changed:
            self.text += chunk
            self._changed.notify_all()
        self._tell()

    def _end(self, outcome: Outcome, stats: Stats | None = None, error: str | None = None) -> None:
        with self._changed:
            self.outcome, self.error, self.finished = outcome, error, time.monotonic()
            if stats is not None:
                self.stats = stats
            self.state = "done"
            self._changed.notify_all()
        self._tell()
