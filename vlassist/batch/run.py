"""The batch loop: items through the answer service(s), one row appended per finished item; Ctrl+C stops cleanly."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

from vlassist.batch.inputs import Item, Loader
from vlassist.batch.rows import make_row
from vlassist.batch.tasks import Task, parse_answer
from vlassist.conversation import GenerationOptions, Turn
from vlassist.errors import VlassistError
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job, Request

POLL_S = 0.05


class BatchRunner:
    """Answers items with up to one group of jobs in flight per service; rows go to `write` as each item finishes.

    Local engines get one service (the device answers one group at a time), and with `batch_size` > 1 each group
    is that many items answered together in one batched decode (AnswerService.submit_group); a remote server
    gets one service per --concurrency slot, one item each, so that many requests are in flight for it to batch.
    """

    def __init__(self, services: Sequence[AnswerService], task: Task, options: GenerationOptions, family: str,
                 model: str, loader: Loader, write: Callable[[Item, dict], None], batch_size: int = 1):
        self.services = list(services)
        self.task = task
        self.options = replace(options, json_schema=task.schema_text) if task.schema_text else options
        self.family = family
        self.model = model
        self.loader = loader
        self.write = write
        self.batch_size = max(1, batch_size)
        self.interrupted = False
        self._inflight: dict[int, list[tuple[Item, Job]]] = {}  # service index → its running items and jobs

    def run(self, items: Sequence[Item]) -> bool:
        """Answer every item (bad ones become error rows); returns False if Ctrl+C stopped the batch early."""
        waiting = deque(items)
        idle = deque(range(len(self.services)))
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._interrupt) if main else None
        cancelled = False
        try:
            while True:
                while not self.interrupted and waiting and idle:
                    index = idle[0]
                    items = [waiting.popleft() for _ in range(min(self.batch_size, len(waiting)))]
                    group = self._submit(self.services[index], items)
                    if group:
                        self._inflight[idle.popleft()] = group
                if self.interrupted and not cancelled:
                    cancelled = True
                    self._cancel_all()
                if not self._inflight:
                    break
                self._collect(idle)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        return not self.interrupted

    def _interrupt(self, signum, frame) -> None:
        # Only a flag: the loop cancels (the service's lock may be held by the code this signal interrupted).
        # A second Ctrl+C raises KeyboardInterrupt at once, for a server that does not let go.
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _cancel_all(self) -> None:
        """Ctrl+C: running answers end within a decode step and are not written (they never finished)."""
        print("\nvlassist batch: stopping (Ctrl+C again to quit at once)", file=sys.stderr, flush=True)
        for index, group in list(self._inflight.items()):
            for _, job in group:
                self.services[index].cancel(job.id)

    def _collect(self, idle: deque) -> None:
        wait = POLL_S if len(self._inflight) > 1 else 4 * POLL_S
        for index, group in list(self._inflight.items()):
            if all(job.wait(wait) for _, job in group):  # a group's jobs end together
                del self._inflight[index]
                idle.append(index)
                for item, job in group:
                    self._finish(item, job)

    def _row(self, item: Item, **fields) -> dict:
        return make_row(item.source, item.sha256, item.page, self.loader.dpi, self.task.id, self.model, **fields)

    def _submit(self, service: AnswerService, items: list[Item]) -> list[tuple[Item, Job]]:
        """Queue the items' questions as one group; a file that cannot be read or a prompt refused is a failed row."""
        ready: list[tuple[Item, Request]] = []
        for item in items:
            try:
                request = Request([Turn("user", self.task.prompt, [self.loader.load(item)])], self.options)
                service.admit(request)
                ready.append((item, request))
            except VlassistError as exc:
                self.write(item, self._row(item, error=str(exc)))
            except MemoryError:
                self.write(item, self._row(item, error=f"{item.source}: not enough memory to decode it"))
        if len(ready) == 1:  # one at a time: the single-answer path, streamed
            return [(ready[0][0], service.submit(ready[0][1], admitted=True))]
        jobs = service.submit_group([request for _, request in ready], admitted=True) if ready else []
        return [(item, job) for (item, _), job in zip(ready, jobs)]

    def _finish(self, item: Item, job: Job) -> None:
        if job.outcome == "stopped" and self.interrupted:
            return  # cut short by Ctrl+C: not a finished row; the rerun answers it
        if job.outcome == "stopped":
            result, error = None, "the answer was stopped"
        else:
            result, error = parse_answer(self.task, job, self.family)
        self.write(item, self._row(item, answer=job.text, result=result, stats=job.stats.to_dict(), error=error))


def close_services(services: Sequence[AnswerService]) -> None:
    """Close every service (cancelling anything still running) without waiting on each in turn."""
    started = time.monotonic()
    for service in services:
        service.close(timeout=max(0.1, 10.0 - (time.monotonic() - started)))
