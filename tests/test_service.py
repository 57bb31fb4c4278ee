"""The answer service on the tiny checkpoints: FIFO order, positions, cancel, failures, persistence."""

from __future__ import annotations

import time

import pytest

from vlassist.conversation import GenerationOptions, Turn
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Request

LONG = GenerationOptions(max_new_tokens=1500, min_new_tokens=1500)  # long enough to interrupt, whatever the model
SHORT = GenerationOptions(max_new_tokens=4)


def question(text: str = "What is in the picture?") -> list[Turn]:
    """A one-question conversation without images."""
    return [Turn("user", text)]


def wait_until(condition, timeout: float = 60.0) -> None:
    """Poll `condition` until it holds, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class RecordingSink:
    """Remembers what the service hands a sink."""

    def __init__(self):
        self.progress_calls: list[str] = []
        self.finished: tuple | None = None

    def progress(self, text):
        self.progress_calls.append(text)

    def finish(self, text, outcome, stats):
        self.finished = (text, outcome, stats)


@pytest.fixture
def service(engine):
    """An answer service over one tiny engine, closed after the test."""
    svc = AnswerService(engine)
    yield svc
    svc.close()


def test_jobs_start_in_the_order_they_were_submitted(service):
    """Eight requests submitted in turn start one after another in that order, each after the previous ended."""
    jobs = [service.submit(Request(question(f"question {i}"), SHORT)) for i in range(8)]
    for job in jobs:
        assert job.wait(120)
    starts = [job.started for job in jobs]
    assert starts == sorted(starts)
    for earlier, later in zip(jobs, jobs[1:]):
        assert earlier.finished <= later.started
    assert all(job.outcome == "complete" for job in jobs)


def test_waiting_jobs_know_their_position(service):
    """Behind a running answer, waiting jobs are at positions 1, 2, 3; the running one is at 0."""
    first = service.submit(Request(question(), LONG))
    wait_until(lambda: first.state == "running")
    waiting = [service.submit(Request(question(), SHORT)) for _ in range(3)]
    assert [service.position(job) for job in waiting] == [1, 2, 3]
    assert service.position(first) == 0
    service.cancel(first.id)
    assert waiting[0].wait(60)
    for job in waiting:
        job.wait(60)
    assert [service.position(job) for job in waiting] == [0, 0, 0]


def test_estimate_grows_with_the_queue(service):
    """Once an answer has finished, a job further back in the queue gets a longer wait estimate."""
    assert service.submit(Request(question(), SHORT)).wait(60)
    first = service.submit(Request(question(), LONG))
    wait_until(lambda: first.state == "running")
    second, third = (service.submit(Request(question(), SHORT)) for _ in range(2))
    assert service.estimate_s(third) > service.estimate_s(second) >= 0
    service.cancel(first.id)
    third.wait(60)


def test_cancel_ends_a_running_answer_at_once_keeping_its_text(service):
    """Cancel mid-answer ends the job within moments; the text so far is kept and the job reads stopped."""
    sink = RecordingSink()
    job = service.submit(Request(question(), LONG, sink))
    wait_until(lambda: len(job.text) > 20)
    asked = time.monotonic()
    assert service.cancel(job.id)
    assert job.wait(5)
    assert time.monotonic() - asked < 5
    assert job.outcome == "stopped" and job.stats.stop_reason == "stopped"
    assert job.text and job.stats.new_tokens < LONG.max_new_tokens
    assert sink.finished[0] == job.text and sink.finished[1] == "stopped"


def test_cancel_while_queued_means_it_never_starts(service):
    """A job cancelled while waiting ends stopped with no text, never runs, and the one ahead is untouched."""
    first = service.submit(Request(question(), LONG))
    wait_until(lambda: first.state == "running")
    sink = RecordingSink()
    queued = service.submit(Request(question(), SHORT, sink))
    assert service.cancel(queued.id)
    assert queued.done and queued.outcome == "stopped" and queued.started is None and queued.text == ""
    assert sink.finished[1] == "stopped"
    assert first.state == "running"
    service.cancel(first.id)
    assert first.wait(5)


def test_a_failed_request_does_not_stop_the_next(service):
    """A request the engine refuses ends failed with its message; the request after it is answered."""
    bad = service.submit(Request([Turn("assistant", "no question here")], SHORT))
    good = service.submit(Request(question(), SHORT))
    assert good.wait(60) and bad.done
    assert bad.outcome == "failed" and "user turn" in bad.error
    assert good.outcome == "complete"


def test_turns_are_built_when_the_job_starts(service):
    """A request's turn builder runs only once the jobs ahead of it have ended."""
    first = service.submit(Request(question(), LONG))
    wait_until(lambda: first.state == "running")
    seen = []
    second = service.submit(Request(lambda: seen.append(first.done) or question(), SHORT))
    service.cancel(first.id)
    assert second.wait(60)
    assert seen == [True]


def test_chunks_follow_the_job_to_its_end(service):
    """Iterating a job's chunks from another thread gives exactly its whole text."""
    job = service.submit(Request(question(), GenerationOptions(max_new_tokens=40, min_new_tokens=40)))
    assert "".join(job.chunks()) == job.text
    assert job.outcome == "complete" and job.stats.new_tokens == 40


def test_change_listeners_see_every_change_and_cannot_break_the_answer(service):
    """A job's change listener is told of its start, each chunk and its end (seeing the text grow to the whole
    answer); a listener that raises does not fail the answer; a forgotten one is told nothing more."""
    first = service.submit(Request(question(), LONG))  # keeps the next job queued while listeners are added
    job = service.submit(Request(question(), GenerationOptions(max_new_tokens=30, min_new_tokens=30)))
    seen: list[tuple[str, int]] = []
    job.on_change(lambda: seen.append((job.state, len(job.text))))
    job.on_change(lambda: 1 / 0)
    forgotten: list[str] = []
    job.on_change(lambda: forgotten.append(job.state))()  # forgotten at once
    service.cancel(first.id)
    assert job.wait(60) and job.outcome == "complete" and job.stats.new_tokens == 30
    assert seen[0] == ("running", 0) and seen[-1] == ("done", len(job.text))
    lengths = [n for _, n in seen]
    assert lengths == sorted(lengths) and len(seen) >= 3 and not forgotten

def test_admission_refuses_before_queueing(engine):
    """An admission check that raises refuses the request: nothing is queued."""
    from vlassist.errors import VlassistError

    def no_long_questions(request):
        if len(request.build_turns()[-1].text) > 10:
            raise VlassistError("the question is too long")

    svc = AnswerService(engine, admission=[no_long_questions])
    try:
        with pytest.raises(VlassistError, match="too long"):
            svc.submit(Request(question("a very long question indeed"), SHORT))
        assert svc.queued == 0
        assert svc.submit(Request(question("short"), SHORT)).wait(60)
    finally:
        svc.close()
