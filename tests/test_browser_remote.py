"""The page on a remote OpenAI-compatible server (a second `vlassist serve` process) instead of a local model."""

from __future__ import annotations

import json
import os

import pytest
from api_support import start_serve, stop_serve
from conftest import image_bytes
from test_browser import ASSISTANT, CHROMIUM, open_tab, paste, press_send, serve, stop
from test_browser_live import STOPPED, ask, conversation, set_length, wait_streaming

from vlassist.answers.parsing import parse_boxes
from vlassist.answers.schemas import boxes_schema

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


@pytest.fixture(scope="module")
def remote_page(tiny_qwen25, tmp_path_factory):
    """A `vlassist serve` process and the page pointed at it (no model of its own): (page URL, data folder)."""
    logs = tmp_path_factory.mktemp("remote")
    api, api_url = start_serve(tiny_qwen25, logs / "serve.log")
    data = tmp_path_factory.mktemp("remote-data")
    proc, url, log = serve(logs / "no-model-here", data, VLASSIST_BACKEND_URL=api_url,
                           VLASSIST_BACKEND_FAMILY="qwen2_5_vl", VLASSIST_MIN_ANSWER_TOKENS="100000")
    yield url, data
    stop(proc, log)
    stop_serve(api)


def test_page_answers_through_the_remote_server_and_stops(browser, remote_page):
    """The page streams an answer from the remote server, and Stop keeps the partial text marked stopped."""
    context, tab = open_tab(browser, remote_page[0])
    tab.get_by_text("Model status", exact=True).click()
    tab.get_by_text("remote").first.wait_for()
    set_length(tab, "2048")
    ask(tab, "Answer from far away")
    wait_streaming(tab)
    tab.locator(ASSISTANT).last.get_by_role("button", name="Stop").click()
    tab.locator(ASSISTANT).last.get_by_text(STOPPED).wait_for(timeout=20_000)
    answer = conversation(remote_page[1], "Answer from far away").messages[-1]
    assert answer.status == "interrupted" and answer.text and answer.model_family == "qwen2_5_vl"
    context.close()


@pytest.fixture(scope="module")
def remote_json_page(tiny_qwen25, tmp_path_factory):
    """A `vlassist serve` process and a page on it whose answers end when the model ends them: (URL, data)."""
    logs = tmp_path_factory.mktemp("remote-json")
    api, api_url = start_serve(tiny_qwen25, logs / "serve.log")
    data = tmp_path_factory.mktemp("remote-json-data")
    proc, url, log = serve(logs / "no-model-here", data, VLASSIST_BACKEND_URL=api_url,
                           VLASSIST_BACKEND_FAMILY="qwen2_5_vl")
    yield url, data
    stop(proc, log)
    stop_serve(api)


def test_json_view_on_a_remote_server_shows_the_constrained_fields(browser, remote_json_page):
    """Extract JSON with named fields through the remote server: the answer follows the schema (sent as
    response_format) and the page shows it as a field table, with the raw text folded away."""
    context, tab = open_tab(browser, remote_json_page[0])
    tab.locator('.st-key-presets button:visible', has_text="Extract JSON").click()
    tab.locator('input[aria-label^="Fields"]').fill("total:number, paid:boolean")
    tab.locator('input[aria-label^="Fields"]').press("Enter")
    tab.get_by_text("valid against this schema").wait_for()
    paste(tab, image_bytes((90, 60)))
    press_send(tab)  # the preset's prompt as filled in
    tab.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for(timeout=180_000)
    answer = tab.locator(ASSISTANT).last
    answer.locator('[data-testid="stDataFrame"]').wait_for()
    assert answer.get_by_text("Answer text").count() == 1  # the raw JSON sits folded under the table
    [stored] = [m for m in conversation(remote_json_page[1], "Extract JSON · clipboard.png").messages
                if m.role == "assistant"]
    value = json.loads(stored.text)
    assert set(value) == {"total", "paid"} and stored.model_family == "qwen2_5_vl"
    context.close()


def test_boxes_view_on_a_remote_server_draws_the_listed_boxes(browser, remote_json_page):
    """Find objects through the remote server: the box list schema goes as response_format, and the page draws
    every box the answer lists on the image, with the box table and its downloads."""
    context, tab = open_tab(browser, remote_json_page[0])
    tab.locator('.st-key-presets button:visible', has_text="Find objects").click()
    tab.get_by_text("Strict box list").wait_for()
    paste(tab, image_bytes((200, 150), (255, 255, 255)))
    press_send(tab)
    tab.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for(timeout=180_000)
    [stored] = [m for m in conversation(remote_json_page[1], "Find objects · clipboard.png").messages
                if m.role == "assistant"]
    assert stored.model_family == "qwen2_5_vl" and json.loads(stored.options["json_schema"]) == boxes_schema(
        "qwen2_5_vl")
    [sizing] = stored.stats.images
    boxes = parse_boxes(stored.text, "qwen2_5_vl", sizing.input_size, sizing.original_size)
    assert boxes, f"the random model listed no boxes: {stored.text!r}"
    answer = tab.locator(ASSISTANT).last
    answer.get_by_text(f"{len(boxes)} found").wait_for()
    answer.locator('[data-testid="stImage"] img').first.wait_for()  # the image with the boxes drawn
    answer.locator('[data-testid="stDataFrame"]').wait_for()  # the box table
    for name in ("JSON", "CSV", "COCO"):  # the downloads, one of each
        answer.get_by_role("button", name=name, exact=True).wait_for()
    context.close()
