"""`vlassist serve` with a 4-slot decode batch: concurrent clients share it, `n` choices, honest queue stats."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import openai
import pytest
from api_support import API_KEY, data_url, image_message, start_serve, stop_serve
from test_api import raw_post

pytestmark = pytest.mark.enable_socket

SLOTS = 4


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """One serve process on the tiny Qwen2.5-VL checkpoint decoding up to four answers together."""
    proc, url = start_serve(tiny_qwen25, tmp_path_factory.mktemp("api") / "serve.log", VLASSIST_API_KEY=API_KEY,
                            VLASSIST_PARALLEL=str(SLOTS), VLASSIST_CPU_THREADS="1")
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def client(server):
    """The official openai client pointed at the server."""
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def health(server: str) -> dict:
    """The server's /health body."""
    with urllib.request.urlopen(f"{server}/health", timeout=10) as response:
        return json.load(response)


def open_stream(server: str, question: str, tokens: int):
    """A streamed request whose first text chunk has arrived (so it holds a slot); the open response."""
    response = raw_post(server, {"model": "any", "stream": True, "max_tokens": tokens, "min_tokens": tokens,
                                 "messages": [image_message(question, data_url(color=(len(question) * 9, 60, 90)))]})
    assert response.status == 200
    while b'"content":"' not in (line := response.readline()) or b'"content":""' in line:
        assert line, "the stream ended before any text"
    return response


def hang_up(response) -> None:
    """Close a streamed response's connection (the server cancels its answer)."""
    response.conn.sock.close()
    response.conn.close()


def test_four_clients_decode_at_once_and_a_fifth_waits_its_real_time(server, client):
    """Four long answers run together (no queue); a fifth waits for a slot and its queued_s counts that wait."""
    streams = [open_stream(server, f"Question number {i}", 3000) for i in range(SLOTS)]
    try:
        now = health(server)
        assert now["slots"] == SLOTS and now["answering"] == SLOTS and now["queued"] == 0
        result = {}
        fifth = threading.Thread(target=lambda: result.setdefault("reply", client.chat.completions.create(
            model="any", max_tokens=6, extra_body={"min_tokens": 6},
            messages=[{"role": "user", "content": "the fifth question"}])))
        fifth.start()
        deadline = time.monotonic() + 30
        while health(server)["queued"] != 1:
            assert time.monotonic() < deadline, "the fifth request never queued"
            time.sleep(0.05)
        held = time.monotonic()
        time.sleep(1.0)
    finally:
        for stream in streams[:1]:
            hang_up(stream)
    fifth.join(60)
    waited = time.monotonic() - held
    stats = result["reply"].model_extra["vlassist"]["stats"]
    assert stats["queued_s"] >= 1.0 and stats["queued_s"] <= waited + 5
    assert stats["batch_rows"] >= 2  # it decoded beside the three answers still streaming
    for stream in streams[1:]:
        hang_up(stream)


def test_n_choices_come_from_one_request(client):
    """`n: 3` returns three choices indexed 0-2; greedy choices are the same answer; usage counts all three."""
    reply = client.chat.completions.create(model="any", n=3, max_tokens=8, extra_body={"min_tokens": 8},
                                           messages=[image_message("What is this?", data_url())])
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in reply.choices}) == 1
    assert reply.usage.completion_tokens == 24 and reply.usage.prompt_tokens > 0


def test_n_streamed_choices_interleave_and_end_once(client):
    """A streamed `n: 2` sends each choice's chunks with its index, both finish, and the stream ends once."""
    stream = client.chat.completions.create(model="any", n=2, max_tokens=12, stream=True, temperature=1.0, seed=3,
                                            extra_body={"min_tokens": 12},
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Say something"}])
    texts, finished, usage = {0: "", 1: ""}, set(), None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and all(texts.values())
    assert usage is not None and usage.completion_tokens == 24


def test_n_over_the_limit_is_refused_naming_it(client):
    """`n` above 16 is a 400 that names the parameter."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="any", n=17, max_tokens=2, messages=[{"role": "user", "content": "x"}])
    assert "n" in str(err.value)
