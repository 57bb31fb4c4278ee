"""Stored facts stay (Debian's Chromium): an old conversation shows the image sizes stored with it, and the user's
settings come back after a reload, from the history."""

from __future__ import annotations

import time

import pytest
import test_browser
from conftest import image_bytes
from test_browser import USER, serve, set_length, stop

from vlassist.conversation import Stats
from vlassist.images import Sizing, load_image
from vlassist.store.history import History, NewImage

pytestmark = test_browser.pytestmark
STORED_INPUT = (56, 84)  # what an earlier model was shown: not what the tiny model would make of 90×120 now


@pytest.fixture(scope="module")
def app(tiny_qwen25, tmp_path_factory):
    """The app over a history with one old answer whose image sizes were stored: (url, data, conversation id)."""
    data = tmp_path_factory.mktemp("stored-data")
    picture = image_bytes((90, 120))
    loaded = load_image(picture, "old.png")
    history = History.open(data)
    store = history.for_owner("local")
    conversation = store.create_conversation("old conversation")
    store.add_user_message(conversation, "what is this?", [NewImage(picture, loaded, "old.png")])
    store.add_assistant_message(conversation, "a picture", "complete", preset="describe", options={},
                                stats=Stats(stop_reason="eos", new_tokens=2,
                                            images=[Sizing((90, 120), STORED_INPUT, 6)]),
                                model_family="qwen3_vl", model="/models/another")
    history.close()
    proc, url, log = serve(tiny_qwen25, data)
    yield url, data, conversation
    stop(proc, log)


def _tab(browser, url: str):
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(120_000)
    tab.goto(url)
    tab.wait_for_selector(test_browser.TEXTAREA)
    return context, tab


def _wait_saved(data, length: int) -> None:
    """Wait until the history holds the answer length the page sent (it is saved by the change's rerun)."""
    deadline = time.monotonic() + 120
    while True:
        history = History.open(data)
        try:
            if history.for_owner("local").get_settings().get("opt_max_new_tokens") == length:
                return
        finally:
            history.close()
        assert time.monotonic() < deadline, "the setting was never saved"
        time.sleep(0.2)


def test_old_conversation_shows_the_sizes_stored_with_its_image(browser, app):
    """The image caption of an old question gives the model-input size and visual tokens stored with it."""
    url, _, conversation = app
    context, tab = _tab(browser, f"{url}/?c={conversation}")
    try:
        caption = tab.locator(USER).locator('[data-testid="stImageCaption"], [data-testid="stCaptionContainer"]')
        caption.first.wait_for()
        text = " ".join(caption.all_inner_texts())
        assert "old.png · 90×120 PNG → model saw 56×84 (6 visual tokens)" in text, text
    finally:
        context.close()


def test_settings_come_back_after_a_reload(browser, app):
    """An answer length chosen in Settings is the one shown after the page is reloaded in a new browser session."""
    url, data, _ = app
    context, tab = _tab(browser, url)
    try:
        set_length(tab, "256")
        _wait_saved(data, 256)
    finally:
        context.close()
    context, tab = _tab(browser, url)
    try:
        tab.get_by_text("Settings", exact=True).click()
        slider = tab.locator('[data-testid="stSlider"]', has_text="Answer length").get_by_role("slider")
        assert slider.get_attribute("aria-valuetext") == "256"
    finally:
        context.close()
