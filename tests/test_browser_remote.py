"""The page on a remote OpenAI-compatible server (a second `vlassist serve` process) instead of a local model."""

from __future__ import annotations

import os

import pytest
from api_support import start_serve, stop_serve
from test_browser import ASSISTANT, CHROMIUM, open_tab, serve, stop
from test_browser_live import STOPPED, ask, browser, conversation, set_length, wait_streaming  # noqa: F401

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


def test_page_answers_through_the_remote_server_and_stops(browser, remote_page):  # noqa: F811
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
