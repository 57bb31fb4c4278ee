"""How the answer service runs a unit of several jobs: a submit_group (one batched call) or n choices of one request."""

from __future__ import annotations

import logging
import threading

from vlassist.conversation import Answerer
from vlassist.errors import VlassistError, error_line
from vlassist.service.jobs import Job

log = logging.getLogger("vlassist.service.answering")


def run_choices(service, jobs: list[Job], answerer: Answerer) -> None:
    """Answer n choices of one request: one prefill and n rows where the answerer has `stream_choices`."""
    stream_choices = getattr(answerer, "stream_choices", None)
    if stream_choices is None:
        for job in jobs:
            service._run(job, answerer)
        return
    for job in jobs:
        job._start()
    request = jobs[0].request
    try:
        replies = stream_choices(request.build_turns(), request.options, len(jobs),
                                 [job.cancel_event for job in jobs])
    except Exception as exc:
        if not isinstance(exc, VlassistError):
            log.exception("answer %s failed", jobs[0].id)
        for job in jobs:
            service._end(job, "failed", error=error_line(exc))
        return

    def one(job: Job, reply) -> None:
        try:
            job.logprobs = getattr(reply, "logprobs", None)
            service._pump(job, reply)
        except Exception as exc:
            if not isinstance(exc, VlassistError):
                log.exception("answer %s failed", job.id)
            service._end(job, "failed", error=error_line(exc))
            return
        stopped = reply.stats.stop_reason == "stopped" or job.cancelled
        service._end(job, "stopped" if stopped else "complete", waited(job, reply.stats))

    # Every choice streams into its own queue; one thread each keeps them all flowing at their own pace.
    threads = [threading.Thread(target=one, args=(job, reply), daemon=True) for job, reply in zip(jobs, replies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

def run_group(service, jobs: list[Job], answerer: Answerer) -> None:
    """Answer a submit_group's jobs in one answer_batch call; each job ends with its own outcome."""
    answer_batch = getattr(answerer, "answer_batch", None)
    if answer_batch is None:
        for job in jobs:
            service._run(job, answerer)
        return
    for job in jobs:
        job._start()
    try:
        results = answer_batch([job.request.build_turns() for job in jobs], jobs[0].request.options,
                               [job.cancel_event for job in jobs])
    except Exception as exc:  # the whole group failed (out of memory, a device fault): each job says so
        if not isinstance(exc, VlassistError):
            log.exception("answer group %s failed", ", ".join(job.id for job in jobs))
        error = error_line(exc)
        for job in jobs:
            service._end(job, "failed", error=error)
        return
    for job, (text, stats) in zip(jobs, results):
        if text:
            job._append(text)
            if job.request.sink is not None:
                job.request.sink.progress(job.text)
        if stats.stop_reason == "error":
            service._end(job, "failed", stats, stats.error or "the answer failed")
        else:
            stopped = stats.stop_reason == "stopped" or job.cancelled
            service._end(job, "stopped" if stopped else "complete", waited(job, stats))


def waited(job: Job, stats):
    """Stats whose queued_s is the whole wait: in the service's queue, then for the device or a slot."""
    if job.started is not None:
        stats.queued_s = max(0.0, job.started - job.submitted) + (stats.queued_s or 0.0)
    return stats
