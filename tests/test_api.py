"""`vlassist serve` on loopback, driven by the official `openai` client and raw HTTP: the OpenAI-compatible API."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import jsonschema
import openai
import pytest
from api_support import API_KEY, data_url, image_message, start_serve, stop_serve

from vlassist.api.stops import StopCutter

pytestmark = pytest.mark.enable_socket

STATUS_SCHEMA = {"type": "object", "required": ["status", "level", "ok"], "additionalProperties": False,
                 "properties": {"status": {"enum": ["normal", "alarm"]},
                                "level": {"type": "integer", "minimum": 0, "maximum": 9}, "ok": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """One serve process on the tiny Qwen2.5-VL checkpoint with an API key: its base URL."""
    proc, url = start_serve(tiny_qwen25, tmp_path_factory.mktemp("api") / "serve.log", VLASSIST_API_KEY=API_KEY,
                            VLASSIST_MAX_QUESTION_CHARS="2000")
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def client(server):
    """The official openai client pointed at the server, with the key."""
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def raw_post(url: str, body: dict, key: str | None = API_KEY) -> http.client.HTTPResponse:
    """POST JSON to the chat endpoint over a plain connection (to read SSE lines or hang up early)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = conn.getresponse()
    response.conn = conn
    return response


def test_non_streaming_answer_has_usage_and_the_vlassist_extension(client):
    """A plain completion returns text, OpenAI usage from the answer's stats, and stats with image sizes."""
    reply = client.chat.completions.create(model="any", max_tokens=6, messages=[
        {"role": "system", "content": "Answer briefly."}, image_message("Describe the picture")])
    choice = reply.choices[0]
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    extension = reply.model_extra["vlassist"]
    stats = extension["stats"]
    assert reply.usage.completion_tokens == stats["new_tokens"] > 0
    assert reply.usage.prompt_tokens == stats["prompt_tokens"] > stats["visual_tokens"] > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert stats["images"][0]["original_size"] == [64, 48]


def test_streaming_chunks_join_to_the_same_text_and_end_with_done(server, client):
    """Streamed SSE chunks join to the greedy non-streamed answer; the last event is `data: [DONE]`."""
    body = {"model": "any", "max_tokens": 8, "messages": [image_message("What colour is it?")]}
    whole = client.chat.completions.create(**body).choices[0].message.content
    response = raw_post(server, {**body, "stream": True})
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    response.conn.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and "stats" in chunks[-1]["vlassist"]


def test_json_schema_response_format_gives_valid_json(client):
    """response_format json_schema constrains the answer: it parses and validates against the schema."""
    reply = client.chat.completions.create(
        model="any", max_tokens=64, messages=[image_message("Status as JSON")],
        response_format={"type": "json_schema", "json_schema": {"name": "status", "schema": STATUS_SCHEMA}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), STATUS_SCHEMA)


def test_a_resent_conversation_pays_only_for_its_new_tokens(client):
    """A client that resends the conversation with a follow-up reuses the cached prefix: image and first turn."""
    first = image_message("Name the colour", url=data_url((96, 64), (10, 90, 200)))
    reply = client.chat.completions.create(model="any", max_tokens=8, messages=[first])
    before = reply.model_extra["vlassist"]["stats"]
    follow_up = client.chat.completions.create(model="any", max_tokens=8, messages=[
        first, {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "And the shape?"}])
    stats = follow_up.model_extra["vlassist"]["stats"]
    assert stats["prompt_tokens"] > before["prompt_tokens"]
    # Everything the first request's prompt held (its visual tokens included) comes from the cache.
    assert stats["reused_tokens"] >= before["prompt_tokens"] > before["visual_tokens"] > 0


def test_a_stop_string_cuts_the_answer_before_it(client):
    """`stop` ends the answer just before the first stop string, with finish_reason "stop"."""
    body = {"model": "any", "max_tokens": 12, "extra_body": {"min_tokens": 12}, "messages": [image_message("Stop")]}
    whole = client.chat.completions.create(**body).choices[0].message.content
    stop = whole[4:6]
    cut = client.chat.completions.create(**body, stop=[stop]).choices[0]
    assert cut.message.content == whole[:whole.index(stop)] and cut.finish_reason == "stop"


def test_models_lists_the_loaded_checkpoint(client, tiny_qwen25):
    """GET /v1/models lists the checkpoint folder's name, owned by vlassist."""
    models = client.models.list().data
    assert [(m.id, m.owned_by) for m in models] == [(tiny_qwen25.name, "vlassist")]


def test_an_http_image_url_is_refused_because_nothing_is_fetched(client):
    """An http(s) image URL gets a 400 whose OpenAI-shaped body says the server never fetches anything."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="any", messages=[image_message("hi", "https://example.com/a.png")])
    error = caught.value.response.json()["error"]
    assert "never fetches" in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == "messages[0].content[0]"


@pytest.mark.parametrize("url,why", [("data:image/png;base64,%%%not-base64%%%", "not valid base64"),
                                     ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not a supported image")])
def test_garbage_base64_is_refused_with_the_reason(client, url, why):
    """Bad base64 or bytes that are no image get a 400 naming the reason."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="any", messages=[image_message("hi", url)])
    assert why in caught.value.response.json()["error"]["message"]


def test_base64_wrapped_in_lines_is_accepted(client):
    """An image whose base64 is wrapped in 76-character lines (as MIME tools write it) is answered."""
    head, payload = data_url().split(",", 1)
    wrapped = head + "," + "\r\n".join(payload[i:i + 76] for i in range(0, len(payload), 76))
    reply = client.chat.completions.create(model="any", max_tokens=2, messages=[image_message("hi", wrapped)])
    assert reply.usage.prompt_tokens > 0 and reply.choices[0].finish_reason in ("stop", "length")

def test_a_question_over_the_limit_gets_413(client):
    """A question longer than the server's limit is refused before queueing with 413 and the page's message."""
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "word " * 1000}])
    assert caught.value.status_code == 413
    assert caught.value.response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_missing_or_wrong_key_gets_401(server, key):
    """With VLASSIST_API_KEY set, a request without the right bearer key gets an OpenAI-shaped 401."""
    response = raw_post(server, {"messages": [{"role": "user", "content": "hi"}]}, key=key)
    body = json.loads(response.read())
    response.conn.close()
    assert response.status == 401 and body["error"]["code"] == "invalid_api_key"


def test_eight_concurrent_clients_are_all_answered_in_submission_order(client):
    """Eight clients at once all get answers of the length they asked, started in the order they arrived."""
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        results[i] = client.chat.completions.create(
            model="any", max_tokens=4 + i, extra_body={"min_tokens": 4 + i},
            messages=[image_message(f"Question {i}", data_url(color=(i * 30, 80, 80)))])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(120)
    assert sorted(results) == list(range(8))
    assert [results[i].usage.completion_tokens for i in range(8)] == [4 + i for i in range(8)]
    jobs = [results[i].model_extra["vlassist"]["stats"]["job"] for i in range(8)]
    by_arrival = sorted(jobs, key=lambda job: job["submitted"])
    assert [job["started"] for job in by_arrival] == sorted(job["started"] for job in jobs)
    for before, after in zip(by_arrival, by_arrival[1:]):  # one at a time: each starts after the previous ends
        assert after["started"] >= before["finished"]


def test_a_client_that_hangs_up_cancels_its_answer(server, client):
    """Closing a long streamed answer's connection frees the model within seconds for the next request."""
    response = raw_post(server, {"model": "any", "stream": True, "max_tokens": 3900, "min_tokens": 3900,
                                 "messages": [{"role": "user", "content": "Talk for a long time"}]})
    assert response.status == 200
    while b'"content":"' not in (line := response.readline()) or b'"content":""' in line:
        assert line, "the stream ended before any text"
    response.conn.sock.close()
    response.conn.close()
    started = time.monotonic()
    reply = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=20).chat.completions.create(
        model="any", max_tokens=2, messages=[{"role": "user", "content": "quick"}])
    job = reply.model_extra["vlassist"]["stats"]["job"]
    # 3900 forced tokens take far longer on the CPU: a short wait in the queue means the long answer was cancelled.
    assert job["started"] - job["submitted"] < 5 and time.monotonic() - started < 15


def test_stop_strings_are_cut_even_across_chunks():
    """The stop-string filter cuts at the first stop string, holding back text that may begin one."""
    cutter = StopCutter(["END", "##"])
    assert cutter.feed("abc E") == "abc "
    assert cutter.feed("N") == ""
    assert cutter.feed("D tail") == "" and cutter.hit
    free = StopCutter(["END"])
    assert free.feed("the EN") + free.flush() == "the EN" and not free.hit


def test_boxes_in_the_extension_are_mapped_to_original_pixels():
    """Qwen2.5-VL boxes (model-input pixels) come back in the original image's pixels, per image."""
    from vlassist.api.convert import boxes
    from vlassist.conversation import Stats
    from vlassist.images import Sizing

    stats = Stats(images=[Sizing((1000, 500), (500, 250), 160)])
    found = boxes('[{"bbox_2d": [10, 20, 110, 120], "label": "button"}]', "qwen2_5_vl", stats)
    assert found == [{"image": 0, "original_size": [1000, 500],
                      "boxes": [{"label": "button", "x1": 20.0, "y1": 40.0, "x2": 220.0, "y2": 240.0}]}]
    assert boxes("no boxes here", "qwen2_5_vl", stats) is None


def test_detail_and_temperature_map_to_generation_options():
    """detail low/high picks low-res mode or a larger budget; temperature 0 or unset (no top_p) is greedy."""
    from vlassist.api.convert import HIGH_DETAIL_TOKENS, to_options
    from vlassist.api.models import ChatRequest
    from vlassist.config import load_settings

    settings = load_settings({})
    body = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    assert to_options(body, ["low"], settings).low_res and to_options(body, ["auto"], settings).precise
    assert to_options(body, ["high", "low"], settings).max_image_tokens == HIGH_DETAIL_TOKENS
    sampled = to_options(ChatRequest(messages=body.messages, temperature=0.5, max_tokens=7), [], settings)
    assert not sampled.precise and sampled.temperature == 0.5 and sampled.max_new_tokens == 7
