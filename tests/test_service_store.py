"""Stored conversations as answer jobs: question and answer stored first, text written as it streams."""

from __future__ import annotations

import time

import pytest
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.errors import VlassistError
from vlassist.images import load_image
from vlassist.service import conversations
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Request
from vlassist.store.history import History, NewImage

LONG = GenerationOptions(max_new_tokens=1500, min_new_tokens=1500)


@pytest.fixture
def setup(engine25, tmp_path):
    """(service, one owner's store) over the tiny Qwen2.5-VL engine and a fresh history."""
    history = History.open(tmp_path)
    service = AnswerService(engine25)
    yield service, history.for_owner("local")
    service.close()
    history.close()


def picture() -> NewImage:
    data = image_bytes()
    return NewImage(data, load_image(data), "a.png")


def messages(store, conversation_id):
    return store.get_conversation(conversation_id).messages


def test_question_and_running_answer_are_stored_before_the_answer_starts(setup):
    """Asking stores the question and an empty running answer at once, in a new conversation named after it."""
    service, store = setup
    first = service.submit(Request([Turn("user", "hold")], LONG))
    job = conversations.ask(service, store, None, "Describe", [picture()], GenerationOptions(max_new_tokens=8),
                            model_family="qwen2_5_vl", model="tiny")
    conversation_id = job.request.conversation_id
    assert store.get_conversation(conversation_id).title == "Describe"
    question, answer = messages(store, conversation_id)
    assert (question.role, answer.role, answer.status, answer.text) == ("user", "assistant", "running", "")
    service.cancel(first.id)
    assert job.wait(60)
    answer = messages(store, conversation_id)[-1]
    assert answer.status == "complete" and answer.text == job.text and answer.model_family == "qwen2_5_vl"
    assert answer.stats.new_tokens == job.stats.new_tokens and answer.stats.images[0].original_size == (64, 48)


def test_the_answer_is_written_while_it_streams(setup):
    """Long before a long answer ends, the store already holds a prefix of its text."""
    service, store = setup
    job = conversations.ask(service, store, None, "Write", options=LONG)
    deadline = time.monotonic() + 60
    while not messages(store, job.request.conversation_id)[-1].text:
        assert time.monotonic() < deadline and not job.done
        time.sleep(0.02)
    stored = messages(store, job.request.conversation_id)[-1]
    assert stored.status == "running" and job.text.startswith(stored.text)
    service.cancel(job.id)
    assert job.wait(10)
    stored = messages(store, job.request.conversation_id)[-1]
    assert stored.status == "interrupted" and stored.text == job.text and stored.stats.stop_reason == "stopped"


def test_a_follow_up_queued_behind_an_answer_sees_it_complete(setup):
    """A second question sent while the first answer streams is answered after it, with it in its context."""
    service, store = setup
    first = conversations.ask(service, store, None, "One", [picture()],
                              GenerationOptions(max_new_tokens=60, min_new_tokens=60))
    conversation_id = first.request.conversation_id
    second = conversations.ask(service, store, conversation_id, "Two", options=GenerationOptions(max_new_tokens=8))
    assert second.wait(60) and first.done
    stored = messages(store, conversation_id)
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]
    assert [m.status for m in stored[1::2]] == ["complete", "complete"]
    # The follow-up's prompt held the whole first answer: more tokens than the first question's prompt.
    assert second.stats.prompt_tokens > first.stats.prompt_tokens + first.stats.new_tokens


def test_a_cancelled_queued_question_leaves_a_stopped_empty_answer(setup):
    """Cancelling a question before it starts stores its answer as interrupted, so the history still alternates."""
    service, store = setup
    first = conversations.ask(service, store, None, "One", options=LONG)
    second = conversations.ask(service, store, first.request.conversation_id, "Two")
    assert service.cancel(second.id) and service.cancel(first.id)
    assert first.wait(10) and second.done
    stored = messages(store, first.request.conversation_id)
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]
    assert [m.status for m in stored[1::2]] == ["interrupted", "interrupted"] and stored[3].text == ""


def test_deleting_a_conversation_cancels_its_jobs(setup):
    """Jobs of a deleted conversation stop; the service goes on with the next request."""
    service, store = setup
    job = conversations.ask(service, store, None, "Doomed", options=LONG)
    while job.state != "running":
        time.sleep(0.01)
    assert service.cancel_conversation(job.request.conversation_id) == 1
    store.delete(job.request.conversation_id)
    assert job.wait(10) and job.outcome == "stopped"
    after = conversations.ask(service, store, None, "Next", options=GenerationOptions(max_new_tokens=4))
    assert after.wait(60) and after.outcome == "complete"


def test_a_failed_answer_is_stored_as_error_with_the_reason(setup):
    """An answer the engine refuses is stored with status error and the reason; the next one still works."""
    service, store = setup
    job = conversations.ask(service, store, None, "", options=GenerationOptions(max_new_tokens=8))
    assert job.wait(60) and job.outcome == "failed"
    answer = messages(store, job.request.conversation_id)[-1]
    assert answer.status == "error" and answer.stats.error and answer.stats.stop_reason == "error"


def test_a_refused_question_stores_nothing(engine25, tmp_path):
    """When admission refuses a question, no conversation, question or answer is stored."""
    def refuse(request):
        raise VlassistError("too big")

    history = History.open(tmp_path)
    service = AnswerService(engine25, admission=[refuse])
    try:
        store = history.for_owner("local")
        with pytest.raises(VlassistError, match="too big"):
            conversations.ask(service, store, None, "Anything", [picture()])
        assert store.list_conversations() == []
    finally:
        service.close()
        history.close()
