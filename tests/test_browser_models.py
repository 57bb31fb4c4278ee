"""The page's Model section in a real browser: load progress, the models folder listed, Load switching the model."""

from __future__ import annotations

import os
import re

import pytest
from api_support import start_serve, stop_serve
from test_browser import ASSISTANT, CHROMIUM, TEXTAREA, serve, stop
from test_browser_live import LONG, ask, conversation, set_length, wait_streaming

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]

SIDEBAR = '[data-testid="stSidebar"]'
PROGRESS = '[data-testid="stProgress"]'


@pytest.fixture(scope="module")
def models_server(tiny_qwen25, tiny_qwen3, tmp_path_factory):
    """The app on the Qwen2.5-VL checkpoint of a models folder that also holds Qwen3-VL: (url, data folder)."""
    models = tmp_path_factory.mktemp("models")
    (models / "qwen25").symlink_to(tiny_qwen25, target_is_directory=True)
    (models / "qwen3").symlink_to(tiny_qwen3, target_is_directory=True)
    (models / "notes").mkdir()  # not a checkpoint: never offered
    data = tmp_path_factory.mktemp("models-data")
    # Answers run to their full length, so a switch has a running answer to wait for while the page watches.
    proc, url, log = serve(models / "qwen25", data, VLASSIST_MIN_ANSWER_TOKENS="100000")
    yield url, data
    stop(proc, log)


def open_model_section(tab):
    """Open the sidebar's Model section; return it."""
    summary = tab.locator(SIDEBAR).locator("summary").filter(has_text=re.compile(r"Model$"))
    section = tab.locator(f'{SIDEBAR} [data-testid="stExpander"]', has_text="In use")
    if section.locator("details[open]").count() == 0:  # a click on an open section (kept open) would close it
        summary.click()
    section.get_by_text("In use").wait_for()
    # The expander grows open for about half a second with an inline height; a dropdown clicked while it grows
    # is closed again when it settles, so wait for the inline height to go.
    section.locator("details").first.wait_for()
    tab.wait_for_function("el => !el.style.height", arg=section.locator("details").first.element_handle())
    return section


def listed(tab, section) -> list[str]:
    """The models the section's list offers (its dropdown opened and closed again)."""
    section.get_by_role("combobox").first.click()  # the models list (the Weights choice is the second)
    options = tab.locator('[role="option"]')
    options.first.wait_for()
    names = [text.strip() for text in options.all_inner_texts()]
    tab.keyboard.press("Escape")
    return names


def test_a_visit_during_the_load_shows_its_progress_then_the_chat_box(browser, tiny_qwen25, tmp_path):
    """A visit while the model loads draws the title, "Loading model…" and a progress bar with its stage and
    seconds, then the chat box (the model is copied into place after the server started without one)."""
    later = tmp_path / "model"  # nothing there yet: the load at server start finds no model
    data = tmp_path / "data"
    data.mkdir()
    proc, url, log = serve(later, data)
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.set_default_timeout(180_000)
        tab.goto(url)
        tab.get_by_text("No model found").wait_for()
        later.symlink_to(tiny_qwen25, target_is_directory=True)  # the model is copied into place
        tab.reload()  # the visit starts the load again; the page follows it
        tab.get_by_text("Loading model…").wait_for()
        tab.locator(PROGRESS).wait_for()
        assert tab.locator("h1", has_text="vlassist").count() >= 1
        # What happens now and for how long, e.g. "Reading weights: 0.01 of 0.02 GiB · 12 s".
        tab.wait_for_function("sel => /· \\d+ s/.test(document.querySelector(sel)?.innerText || '')",
                              arg=PROGRESS)
        tab.wait_for_selector(TEXTAREA)
        assert tab.locator(PROGRESS).count() == 0  # the progress view is gone once the model is ready
    finally:
        context.close()
        stop(proc, log)


def test_load_switches_the_model_and_answers_are_stored_with_it(browser, models_server):
    """Both checkpoints are listed; Load shows the switch's progress while the running answer ends on the old
    model, and the next answer is stored as Qwen3-VL's."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(180_000)
    tab.goto(models_server[0])
    tab.wait_for_selector(TEXTAREA)
    section = open_model_section(tab)
    assert "qwen25" in section.locator("p", has_text="In use").inner_text()
    assert listed(tab, section) == ["qwen25 · qwen2_5_vl (in use)", "qwen3 · qwen3_vl"]
    section.get_by_role("combobox").first.click()
    tab.locator('[role="option"]', has_text="qwen3 ").click()
    set_length(tab, LONG)
    ask(tab, "Written by the first model")
    wait_streaming(tab)
    section.get_by_role("button", name="Load").click()
    tab.get_by_text("Switching the model to").wait_for()
    tab.locator(PROGRESS).wait_for()
    tab.get_by_text("Waiting for the running answer to finish").first.wait_for()
    tab.locator(PROGRESS).wait_for(state="detached")  # the switch is done and the page drawn again
    tab.wait_for_selector(TEXTAREA)
    first = conversation(models_server[1], "Written by the first model").messages[-1]
    assert first.status == "complete" and first.model_family == "qwen2_5_vl"
    section = open_model_section(tab)
    assert "qwen3" in section.locator("p", has_text="In use").inner_text()
    if tab.locator('[data-testid="stSlider"]', has_text="Answer length").is_visible():
        tab.get_by_text("Settings", exact=True).click()  # set_length opens the settings again
    set_length(tab, "128")
    ask(tab, "Which model answers now")
    # A follow-up in the open conversation: the switch keeps the page on it; the new answer names the new model.
    tab.locator(ASSISTANT).nth(1).get_by_text("tokens/s").wait_for()
    messages = conversation(models_server[1], "Written by the first model").messages
    assert len(messages) == 4
    answer = messages[-1]
    assert answer.status == "complete" and answer.model_family == "qwen3_vl"
    assert answer.model.endswith("qwen3")
    context.close()


def test_weights_choice_reloads_the_model_in_use_as_int4(browser, models_server):
    """Choosing int4 under Weights and pressing Load reloads the model in use quantized; In use says int4."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(180_000)
    tab.goto(models_server[0])
    tab.wait_for_selector(TEXTAREA)
    section = open_model_section(tab)
    in_use = section.locator("p", has_text="In use").inner_text()
    assert "int4" not in in_use
    load = section.get_by_role("button", name="Load")
    assert load.is_disabled()  # the model in use, as stored: nothing to load
    section.get_by_role("combobox").nth(1).click()
    tab.locator('[role="option"]', has_text="int4 (quantized at load)").click()
    # A running answer holds the reload back while the page watches (the tiny model alone reloads in a blink).
    set_length(tab, LONG)
    ask(tab, "Written before the reload")
    wait_streaming(tab)
    load.click()
    tab.locator(PROGRESS).wait_for()
    tab.get_by_text("Waiting for the running answer to finish").first.wait_for()
    tab.locator(PROGRESS).wait_for(state="detached")
    tab.wait_for_selector(TEXTAREA)
    section = open_model_section(tab)
    after = section.locator("p", has_text="In use").inner_text()
    assert "int4" in after and after.split(" · ")[0] == in_use.split(" · ")[0]  # the same checkpoint
    context.close()


@pytest.fixture(scope="module")
def remote_models_page(tiny_qwen25, tmp_path_factory):
    """The page on a `vlassist serve` process (no model of its own): its URL."""
    logs = tmp_path_factory.mktemp("remote-models")
    api, api_url = start_serve(tiny_qwen25, logs / "serve.log")
    data = tmp_path_factory.mktemp("remote-models-data")
    proc, url, log = serve(logs / "no-model-here", data, VLASSIST_BACKEND_URL=api_url)
    yield url
    stop(proc, log)
    stop_serve(api)


def test_remote_page_lists_the_servers_models(browser, remote_models_page):
    """With a remote backend the Model section lists what the server's /v1/models names, not local folders."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(180_000)
    tab.goto(remote_models_page)
    tab.wait_for_selector(TEXTAREA)
    section = open_model_section(tab)
    section.get_by_text("Models on the server").wait_for()
    assert listed(tab, section) == ["qwen2_5_vl · qwen2_5_vl (in use)"]
    context.close()
