"""`vlassist serve` on loopback through the openai SDK: sampling parameters, logprobs, output grammars, the 400s
a request gets before it is queued, /v1/models/{id}, /tokenize, /detokenize and /metrics."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections import Counter

import jsonschema
import openai
import pytest
from api_support import API_KEY, image_message, start_serve, stop_serve

from vlassist.config import load_settings
from vlassist.remote import RemoteAnswerer

pytestmark = pytest.mark.enable_socket

MODEL = "house-model"  # a folder name that does not say which family it is
QUESTION = [{"role": "user", "content": "Say something"}]


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """One serve process, with an API key, on the tiny Qwen2.5-VL checkpoint under a name that hides its family."""
    folder = tmp_path_factory.mktemp("named") / MODEL
    folder.symlink_to(tiny_qwen25, target_is_directory=True)
    proc, url = start_serve(folder, tmp_path_factory.mktemp("api") / "serve.log", VLASSIST_API_KEY=API_KEY)
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def client(server):
    """The openai client on the server, with the key."""
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def call(server: str, path: str, body: dict | None = None, key: str | None = API_KEY) -> tuple[int, bytes]:
    """GET (no body) or POST JSON to the server: (status, body bytes)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{server}{path}", json.dumps(body).encode() if body is not None else None,
                                     headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def refused(client, **body) -> dict:
    """The error object of a request that must get a 400."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, **{"messages": QUESTION, "max_tokens": 4, **body})
    return caught.value.response.json()["error"]


def token_id(server: str, text: str) -> int:
    """The one token id of `text`, through /tokenize."""
    status, body = call(server, "/tokenize", {"prompt": text, "add_special_tokens": False})
    tokens = json.loads(body)["tokens"]
    assert status == 200 and len(tokens) == 1
    return tokens[0]


def test_logprobs_come_back_per_token_with_top_alternatives(client):
    """logprobs + top_logprobs give one entry per answer token, each with 3 alternatives, bytes joining to the text."""
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6,
                                           extra_body={"min_tokens": 6}, logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens == 6
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 3 for e in entries)
    assert all(e.top_logprobs[0].logprob >= e.logprob for e in entries)
    assert bytes(b for e in entries for b in e.bytes).decode("utf-8", "replace") == reply.choices[0].message.content


def test_streamed_logprobs_match_the_whole_answer(client):
    """Streamed chunks carry logprobs that add up to the same tokens as the non-streamed answer."""
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 6, "extra_body": {"min_tokens": 6},
            "logprobs": True, "top_logprobs": 1}
    whole = client.chat.completions.create(**body).choices[0].logprobs.content
    streamed = [e for chunk in client.chat.completions.create(**body, stream=True)
                for choice in chunk.choices if choice.logprobs and choice.logprobs.content
                for e in choice.logprobs.content]
    assert [(e.token, e.bytes, round(e.logprob, 4)) for e in streamed] == \
           [(e.token, e.bytes, round(e.logprob, 4)) for e in whole]


def test_a_huge_logit_bias_forces_a_token(server, client):
    """logit_bias +100 on the token "a" makes every greedy answer token "a"."""
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5,
                                           logit_bias={str(token_id(server, "a")): 100})
    assert reply.choices[0].message.content == "aaaaa"


def test_frequency_and_presence_penalties_spread_the_answer_over_more_tokens(server, client):
    """With three tokens forced by bias, the penalties keep the answer from repeating one of them as often."""
    bias = {str(token_id(server, c)): 100 for c in "abc"}
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 6, "logit_bias": bias}
    plain = client.chat.completions.create(**body).choices[0].message.content
    spread = client.chat.completions.create(**body, frequency_penalty=2, presence_penalty=2).choices[0].message.content
    assert set(plain) <= set("abc") and set(spread) <= set("abc")
    assert max(Counter(spread).values()) < max(Counter(plain).values())


def test_vllm_sampling_extras_are_accepted_and_min_tokens_holds(client):
    """top_k, min_p, repetition_penalty and min_tokens in the body are used: a sampled answer of the forced length."""
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0.8, seed=3,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3, "min_tokens": 5})
    assert reply.usage.completion_tokens == 5 and reply.choices[0].finish_reason == "length"


def test_structured_outputs_json_gives_valid_json(client):
    """structured_outputs.json constrains the answer to the schema."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=40,
                                           extra_body={"structured_outputs": {"json": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


@pytest.mark.parametrize("extra", [{"structured_outputs": {"regex": "[0-9]{3}-[a-c]{2}"}},
                                   {"guided_regex": "[0-9]{3}-[a-c]{2}"}])
def test_a_regex_constrains_the_answer(client, extra):
    """structured_outputs.regex and its guided_regex alias hold the answer to the pattern."""
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, extra_body=extra)
    assert re.fullmatch("[0-9]{3}-[a-c]{2}", reply.choices[0].message.content)


@pytest.mark.parametrize("extra", [{"structured_outputs": {"choice": ["yes", "no", 'maybe "so"']}},
                                   {"guided_choice": ["yes", "no", 'maybe "so"']}])
def test_a_choice_list_gives_one_of_its_strings(client, extra):
    """structured_outputs.choice and guided_choice answer with exactly one of the strings."""
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, extra_body=extra)
    assert reply.choices[0].message.content in ("yes", "no", 'maybe "so"')


def test_guided_json_alias_gives_valid_json(client):
    """guided_json (vLLM's older name) constrains the answer like structured_outputs.json."""
    schema = {"type": "object", "properties": {"k": {"enum": ["x", "y"]}}, "required": ["k"]}
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=20,
                                           extra_body={"guided_json": schema})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


@pytest.mark.parametrize("extra,param", [({"best_of": 2}, "best_of"), ({"audio": {"voice": "x"}}, "audio"),
                                         ({"reasoning_effort": "high"}, "reasoning_effort"),
                                         ({"structured_outputs": {"grammar": "root ::= x"}},
                                          "structured_outputs.grammar"),
                                         ({"store": True}, "store")])
def test_an_unsupported_parameter_is_a_400_naming_it(client, extra, param):
    """A field the server does not act on is refused with a 400 whose param names it, never answered."""
    error = refused(client, extra_body=extra)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split(".")[-1] in error["message"]


def test_caller_labels_are_accepted(client):
    """user and metadata only label a request: they are accepted."""
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2, user="u1",
                                           extra_body={"metadata": {"k": "v"}})
    assert reply.usage.completion_tokens > 0


def test_top_logprobs_without_logprobs_is_a_400(client):
    """top_logprobs needs logprobs: true."""
    assert refused(client, top_logprobs=2)["param"] == "top_logprobs"


@pytest.mark.parametrize("schema,path,words", [
    ({"type": "object", "properties": {"code": {"type": "string", "pattern": "^x{1,30000}$"}}},
     "$.properties.code.pattern", "over the limit of 2,000"),
    ({"enum": [f"v{i}" for i in range(5000)]}, "$.enum", "5,000 values"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}},
     "$", "$ref loop"),
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}, "$.properties.x", "points to nothing"),
    ({"type": "object", "properties": {"n": {"type": "integr"}}}, "$.properties.n.type", "not a valid JSON Schema"),
])
def test_a_schema_over_a_limit_or_broken_is_a_400_with_its_path(client, schema, path, words):
    """Bad or too costly schemas are refused at admission with invalid_schema and the JSON path of the problem."""
    error = refused(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert error["code"] == "invalid_schema" and error["param"] == "response_format"
    assert path in error["message"] and words in error["message"]


def test_a_deeply_nested_schema_is_a_400(client):
    """A schema nested 500 levels deep (past the schema validator's recursion) is a 400 naming the depth, not a 500."""
    schema: dict = {"type": "string"}
    for _ in range(500):
        schema = {"type": "array", "items": schema}
    error = refused(client, extra_body={"guided_json": schema})
    assert error["code"] == "invalid_schema" and "nested more than 64 levels" in error["message"]
    assert "/project/" not in error["message"] and ".cc:" not in error["message"]


def test_a_logit_bias_outside_the_vocabulary_is_a_400(client):
    """logit_bias naming a token id the model does not have is refused, naming logit_bias."""
    error = refused(client, logit_bias={"99999999": 5})
    assert error["param"] == "logit_bias" and "vocabulary" in error["message"]


def test_a_prompt_over_the_context_is_400_context_length_exceeded(client):
    """A prompt the context cannot hold gets OpenAI's 400 context_length_exceeded with both token counts."""
    error = refused(client, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=15000)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert re.search(r"needs [\d,]+ tokens .* limit of [\d,]+", error["message"])


def test_an_audio_part_is_refused_by_name(client):
    """An input_audio part gets a 400 naming the part and saying what to send instead."""
    error = refused(client, messages=[{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}])
    assert error["param"] == "messages[0].content[1]"
    assert "input_audio parts are not supported; send" in error["message"] and "image_url data URLs" in error["message"]


def test_models_carry_family_and_context_and_can_be_fetched_by_id(server, client):
    """/v1/models entries name the family and context length; /v1/models/{id} returns it, an unknown id 404s."""
    listed = client.models.list().data[0]
    assert listed.id == MODEL and listed.model_extra["family"] == "qwen2_5_vl"
    assert listed.model_extra["max_model_len"] > 0
    assert client.models.retrieve(MODEL).model_extra == listed.model_extra
    status, body = call(server, "/v1/models/other-model")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"


def test_tokenize_counts_a_chat_with_its_image_as_the_answer_does(server, client):
    """/tokenize on chat messages counts the image's visual tokens: the same count as the completion's usage."""
    messages = [image_message("What is this?")]
    status, body = call(server, "/tokenize", {"model": MODEL, "messages": messages})
    counted = json.loads(body)
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert status == 200 and counted["count"] == len(counted["tokens"]) == reply.usage.prompt_tokens
    assert counted["max_model_len"] > counted["count"]


def test_detokenize_reverses_tokenize(server):
    """/detokenize turns /tokenize's ids of a text back into the text."""
    _, body = call(server, "/tokenize", {"prompt": "hello world", "add_special_tokens": False})
    status, text = call(server, "/detokenize", {"tokens": json.loads(body)["tokens"]})
    assert status == 200 and json.loads(text) == {"prompt": "hello world"}


def test_detokenize_refuses_ids_outside_the_vocabulary(server):
    """/detokenize with an id the tokenizer does not have is a 400 naming tokens."""
    status, body = call(server, "/detokenize", {"tokens": [1, 10**9]})
    assert status == 400 and json.loads(body)["error"]["param"] == "tokens"


def metric(text: str, name: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_a_request_and_need_the_key(server, client):
    """/metrics (Prometheus text) counts an answered request and its tokens; without the key it is a 401."""
    before = call(server, "/metrics")[1].decode()
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3, extra_body={"min_tokens": 3})
    refused(client, extra_body={"best_of": 3})
    status, after = call(server, "/metrics")
    after = after.decode()
    assert status == 200
    assert metric(after, 'vlassist_requests_total{outcome="complete"}') == \
           metric(before, 'vlassist_requests_total{outcome="complete"}') + 1
    assert metric(after, "vlassist_completion_tokens_total") == metric(before, "vlassist_completion_tokens_total") + 3
    assert metric(after, 'vlassist_errors_total{code="unsupported_parameter",status="400"}') >= 1
    assert metric(after, "vlassist_time_to_first_token_seconds_count") >= 1
    assert "vlassist_queue_length 0.0" in after and "vlassist_running_answers" in after
    assert call(server, "/metrics", key=None)[0] == 401


def test_a_remote_backend_takes_the_family_from_the_model_list(server):
    """A RemoteAnswerer on a serve whose model name hides the family needs no VLASSIST_BACKEND_FAMILY."""
    remote = RemoteAnswerer(load_settings({"VLASSIST_BACKEND_URL": server, "VLASSIST_BACKEND_KEY": API_KEY}))
    assert remote.info.family == "qwen2_5_vl" and remote.context_tokens > 0


def test_a_remote_backend_forwards_bias_and_returns_logprobs(server):
    """Options the page or CLI set reach the server through the remote backend: bias applied, logprobs back."""
    from vlassist.conversation import GenerationOptions, Turn

    remote = RemoteAnswerer(load_settings({"VLASSIST_BACKEND_URL": server, "VLASSIST_BACKEND_KEY": API_KEY}))
    options = GenerationOptions(max_new_tokens=4, logit_bias=((token_id(server, "a"), 100.0),), logprobs=1)
    reply = remote.stream([Turn("user", "Say something")], options)
    assert reply.consume() == "aaaa"
    assert [e.token for e in reply.logprobs] == ["a"] * 4 and all(len(e.top) == 1 for e in reply.logprobs)
