"""The answer service: one per process, it owns the answerer and starts requests in arrival order.

It runs as many jobs at once as the answerer has slots (`answerer.slots`: the local engine's continuous decode
batch; 1 when absent); a job waits in the FIFO queue, with its position, only while every slot is taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from vlassist.conversation import Answerer
from vlassist.errors import VlassistError, error_line
from vlassist.service import units
from vlassist.service.jobs import Job, Outcome, Request

log = logging.getLogger(__name__)

Admission = Callable[[Request], None]  # raises VlassistError to refuse a request before it is queued
RECENT_JOBS = 20  # finished jobs whose durations feed the wait estimate


class AnswerService:
    """A FIFO queue of jobs in front of one answerer; cancel by id; positions and wait estimates for each job."""

    def __init__(self, answerer: Answerer, admission: Sequence[Admission] = ()):
        self.answerer = answerer
        self.admission = list(admission)
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._active: list[Job] = []  # the running jobs
        self._groups: dict[str, list[Job]] = {}  # job id → the jobs submitted with it by submit_group
        self._choices: set[str] = set()  # ids of jobs that are n choices of one request (submit_choices)
        self._durations: deque[float] = deque(maxlen=RECENT_JOBS)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._paused: str | None = None  # while set (the model is being switched): why new requests are refused
        self._worker = threading.Thread(target=self._work, name="vlassist-answers", daemon=True)
        self._worker.start()

    # ---- what front ends call ----

    def admit(self, request: Request) -> None:
        """Run the admission checks: raise VlassistError, naming the limit, if the request cannot be answered."""
        paused = self._paused
        if paused is not None:
            raise VlassistError(paused)
        for check in self.admission:
            check(request)

    def submit(self, request: Request, admitted: bool = False) -> Job:
        """Queue a request behind every earlier one and return its job (checked first unless `admitted`)."""
        if not admitted:
            self.admit(request)
        job = Job(request)
        with self._wake:
            self._refuse_if_closed()
            self._jobs[job.id] = job
            self._queue.append(job)
            self._wake.notify_all()  # the worker, and a switch waiting on the same condition
        return job

    def submit_group(self, requests: Sequence[Request], admitted: bool = False) -> list[Job]:
        """Queue requests that share options to be answered together (one batched decode); one job each."""
        # The group waits in the queue like consecutive jobs and runs as one unit on the worker thread through the
        # answerer's `answer_batch` (answerers without it answer the jobs one after another). Each job can be
        # cancelled on its own; its text arrives when the group ends, not streamed.
        if len({request.options for request in requests}) > 1:
            raise ValueError("a group's requests must share their options")
        if not admitted:
            for request in requests:
                self.admit(request)
        jobs = [Job(request) for request in requests]
        with self._wake:
            self._refuse_if_closed()
            for job in jobs:
                self._jobs[job.id] = job
                self._groups[job.id] = jobs
            self._queue.extend(jobs)
            self._wake.notify_all()  # the worker, and a switch waiting on the same condition
        return jobs

    def submit_choices(self, request: Request, count: int, admitted: bool = False) -> list[Job]:
        """Queue `count` answers to one request (the API's `n`): one prefill where the answerer can share it."""
        if not admitted:
            self.admit(request)
        jobs = [Job(request) for _ in range(count)]
        with self._wake:
            self._refuse_if_closed()
            for job in jobs:
                self._jobs[job.id] = job
                self._groups[job.id] = jobs
                if count > 1:
                    self._choices.add(job.id)
            self._queue.extend(jobs)
            self._wake.notify_all()
        return jobs

    @property
    def slots(self) -> int:
        """How many jobs run at once: the answerer's slots."""
        slots = getattr(self.answerer, "slots", 1)
        return slots if isinstance(slots, int) and slots > 0 else 1

    def get(self, job_id: str) -> Job | None:
        """The job with this id, queued, running or recently finished."""
        with self._lock:
            return self._jobs.get(job_id)

    def job_for_message(self, message_id: int) -> Job | None:
        """The newest job filling in this stored answer, if this process has one."""
        with self._lock:
            found = [j for j in self._jobs.values() if j.request.message_id == message_id]
        return found[-1] if found else None

    def cancel(self, job_id: str) -> bool:
        """Stop a job: a queued one never starts, a running one ends within one decode step. False if unknown/done."""
        with self._wake:
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return False
            job.cancel_event.set()
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
                self._wake.notify_all()  # the worker may wait for this queue to empty (close)
        if queued:
            self._end(job, "stopped")
        return True

    def cancel_conversation(self, conversation_id: int) -> int:
        """Stop every job of a conversation (it was deleted); returns how many were stopped."""
        with self._lock:
            ids = [j.id for j in self._jobs.values() if j.request.conversation_id == conversation_id and not j.done]
        return sum(self.cancel(job_id) for job_id in ids)

    def position(self, job: Job) -> int:
        """1 for the next job to start, 2 for the one after…; 0 once it runs or has ended, or while a slot is free."""
        with self._lock:
            try:
                index = self._queue.index(job)
            except ValueError:
                return 0
            if self._follows_another(index):  # it waits for its own conversation's earlier answer
                return index + 1
            free = self.slots - len(self._active)
            return 0 if index < free else index - max(free, 0) + 1

    def estimate_s(self, job: Job) -> float | None:
        """Roughly how long until this job starts, from recent answers' durations; None before any finished."""
        with self._lock:
            if not self._durations:
                return None
            typical = sum(self._durations) / len(self._durations)
            try:
                ahead = self._queue.index(job)
            except ValueError:
                return 0.0
            slots = self.slots
            if ahead < slots - len(self._active):
                return 0.0
            started = [j.started for j in self._active if j.started is not None]
        # The first slot frees when the oldest running answer ends; each `slots` jobs ahead take one answer's time.
        left = max(0.0, typical - (time.monotonic() - min(started))) if started else 0.0
        return left + (ahead // slots) * typical

    @property
    def running(self) -> bool:
        """True while a job runs on the answerer."""
        with self._lock:
            return bool(self._active)

    @property
    def answering(self) -> int:
        """How many jobs run right now (at most `slots`)."""
        with self._lock:
            return len(self._active)

    @property
    def queued(self) -> int:
        """How many jobs wait to start."""
        with self._lock:
            return len(self._queue)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, cancel every queued and running one, and wait for the worker to end."""
        with self._wake:
            self._closed = True
            pending = list(self._queue) + list(self._active)
            self._wake.notify_all()  # the worker, and a switch waiting on the same condition
        for job in pending:
            self.cancel(job.id)
        self._worker.join(timeout)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise VlassistError("the answer service is shutting down")
        if self._paused is not None:
            raise VlassistError(self._paused)

    # ---- switching the answerer (vlassist/service/models.py) ----

    def pause(self, reason: str, cancel_queued: str) -> list[Job]:
        """Start no new job until resume(): refuse requests with `reason`, end queued jobs failed with `cancel_queued`.

        Returns the cancelled jobs; the running one goes on (wait_idle() waits for it). Queued jobs are not carried
        over to another answerer: each stored answer names the model it was asked of, so they are told to ask again.
        """
        with self._wake:
            self._paused = reason
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                self._groups.pop(job.id, None)
        for job in dropped:
            self._end(job, "failed", error=cancel_queued)
        return dropped

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job runs (the running one has ended); True if so within `timeout` seconds."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._active, timeout)

    def replace_answerer(self, answerer: Answerer, admission: Sequence[Admission] | None = None,
                         timeout: float | None = None) -> Answerer:
        """Answer every job that starts from now on with `answerer` (and its admission checks); return the old one.

        A running job ends on the answerer it started on: this waits for it (up to `timeout` seconds).
        """
        with self._wake:
            if not self._wake.wait_for(lambda: not self._active, timeout):
                raise VlassistError("the running answer did not end in time to switch the model")
            old, self.answerer = self.answerer, answerer
            if admission is not None:
                self.admission = list(admission)
        return old

    def resume(self) -> None:
        """Take and start jobs again after pause()."""
        with self._wake:
            self._paused = None
            self._wake.notify_all()

    @property
    def paused(self) -> str | None:
        """Why requests are refused right now (the model is being switched), or None."""
        return self._paused

    # ---- the worker thread ----

    def _work(self) -> None:
        runners: list[threading.Thread] = []
        while True:
            with self._wake:
                self._wake.wait_for(lambda: (self._queue and self._paused is None and self._next() is not None)
                                    or (self._closed and not self._queue))
                if self._closed and not self._queue:
                    break
                job = self._queue[self._next()]
                self._queue.remove(job)
                answerer = self.answerer  # the job runs to its end on this one, even if it is replaced meanwhile
                # The rest of its group (those not cancelled while queued) leaves the queue with it.
                group = [job] + [j for j in self._groups.get(job.id, ()) if j in self._queue and j is not job]
                for member in group[1:]:
                    self._queue.remove(member)
                self._active.extend(group)
            runner = threading.Thread(target=self._run_unit, args=(group, answerer), name="vlassist-answer",
                                      daemon=True)
            runner.start()
            runners = [r for r in runners if r.is_alive()] + [runner]
        for runner in runners:
            runner.join()

    def _next(self) -> int | None:
        """Index of the queued job to start now (the oldest one that may), or None while none can."""
        # Answers of one conversation run in order (a follow-up is built on the answer before it); others overtake
        # a waiting follow-up rather than leave a slot idle.
        for index, job in enumerate(self._queue):
            if self._follows_another(index):
                continue
            group = self._groups.get(job.id, ())
            need = min(max(len(group), 1), self.slots)
            return index if not self._active or len(self._active) + need <= self.slots else None
        return None

    def _follows_another(self, index: int) -> bool:
        """True if the queued job at `index` must wait for an earlier answer of its conversation to end."""
        job = self._queue[index]
        conversation = job.request.conversation_id
        if conversation is None:
            return False
        group = self._groups.get(job.id, ())
        earlier = [j for j in self._active if j not in group]
        earlier += [j for j in list(self._queue)[:index] if j not in group]
        return any(j.request.conversation_id == conversation for j in earlier)

    def _run_unit(self, group: list[Job], answerer: Answerer) -> None:
        """Run one job, a submit_group or n choices to its end on this runner thread, then free their slots."""
        try:
            if len(group) > 1 and group[0].id in self._choices:
                units.run_choices(self, group, answerer)
            elif len(group) > 1:
                units.run_group(self, group, answerer)
            else:
                self._run(group[0], answerer)
        finally:
            with self._wake:
                for member in group:
                    if member in self._active:
                        self._active.remove(member)
                    self._groups.pop(member.id, None)
                    self._choices.discard(member.id)
                    if member.started is not None and member.finished is not None and member.outcome == "complete":
                        # A group's time is shared by its jobs, so the wait estimate counts each job's part.
                        self._durations.append((member.finished - member.started) / len(group))
                self._forget_old()
                self._wake.notify_all()  # the worker, pause() and replace_answerer() wait for this

    def _run(self, job: Job, answerer: Answerer) -> None:
        job._start()
        try:
            reply = answerer.stream(job.request.build_turns(), job.request.options, stop=job.cancel_event)
            job.logprobs = reply.logprobs
            self._pump(job, reply)
        except VlassistError as exc:
            self._end(job, "failed", error=str(exc))
            return
        except Exception as exc:  # a bug or a device fault: keep the service alive, tell the asker
            log.exception("answer %s failed", job.id)
            self._end(job, "failed", error=error_line(exc))
            return
        stopped = reply.stats.stop_reason == "stopped" or job.cancelled
        self._end(job, "stopped" if stopped else "complete", units.waited(job, reply.stats))

    @staticmethod
    def _pump(job: Job, reply) -> None:
        """Append the reply's chunks to the job (and its sink) as they come."""
        sink = job.request.sink
        for chunk in reply:
            job._append(chunk)
            if sink is not None:
                sink.progress(job.text)

    def _end(self, job: Job, outcome: Outcome, stats=None, error: str | None = None) -> None:
        if stats is None:
            stats = job.stats
        if error is not None:
            stats.stop_reason, stats.error = "error", error
        elif outcome == "stopped":
            stats.stop_reason = "stopped"
        sink = job.request.sink
        if sink is not None:
            try:
                sink.finish(job.text, outcome, stats)
                job.saved = True
            except Exception:  # the answer stays readable from the job even if the store refused it
                job.saved = False
                log.exception("could not store answer %s", job.id)
        job._end(outcome, stats, error)

    def _forget_old(self) -> None:
        # Finished jobs stay readable for a while (a page polls them once more); keep the newest few.
        done = [job_id for job_id, job in self._jobs.items() if job.done]
        for job_id in done[:-RECENT_JOBS]:
            del self._jobs[job_id]

