"""The live page on an engine that decodes four answers together: four tabs stream at the same time."""

from __future__ import annotations

import os
import time

import pytest
from test_browser import ASSISTANT, CHROMIUM, USER, open_tab, serve, set_length, stop
from test_browser_live import ANSWER_TEXT, FINISHED, LONG, ask, conversation, letters, live_text, roles, wait_streaming

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """The app with four decode slots and every answer forced to its full length: (url, data folder)."""
    data = tmp_path_factory.mktemp("batch-data")
    # One torch thread: on a shared 2-core runner, several threads spin against each other on every small step.
    proc, url, log = serve(tiny_qwen25, data, VLASSIST_MIN_ANSWER_TOKENS="100000", VLASSIST_PARALLEL="4",
                           VLASSIST_CPU_THREADS="1")
    yield url, data
    stop(proc, log)


def shorter(tab, tokens: str) -> None:
    """Lower the answer-length slider of a tab whose settings are already open."""
    slider = tab.locator('[data-testid="stSlider"]', has_text="Answer length").get_by_role("slider")
    slider.focus()
    slider.press("Home")
    for _ in range(20):
        if slider.get_attribute("aria-valuetext") == tokens:
            return
        slider.press("ArrowRight")
    raise AssertionError(f"the answer-length slider has no {tokens}")


def finished(tab) -> bool:
    """True once the tab's last answer shows its stats line (it is stored complete)."""
    return tab.locator(ASSISTANT).last.get_by_text(FINISHED).count() > 0


def test_four_tabs_stream_at_the_same_time_and_each_is_stored_whole(browser, server):
    """Four tabs' answers grow at once (none queued); a follow-up waits for its own answer; all stored complete."""
    tabs = []
    for _ in range(4):
        context, tab = open_tab(browser, server[0])
        set_length(tab, LONG)
        tabs.append((context, tab))
    titles = [f"Tab {i} asks together" for i in range(4)]
    for (_, tab), title in zip(tabs, titles):
        ask(tab, title, image=False)
    for _, tab in tabs:
        wait_streaming(tab)  # every answer shows text before any of them has ended
    shown = [len(live_text(tab)) for _, tab in tabs]
    assert not any(finished(tab) for _, tab in tabs)
    assert all(tab.locator(ASSISTANT).get_by_text("in the queue").count() == 0 for _, tab in tabs)
    for (_, tab), before in zip(tabs, shown):  # and each keeps growing while the others do
        tab.wait_for_function(
            """([sel, n]) => { const m = [...document.querySelectorAll(sel)].pop();
                 return m && m.innerText.length > n + 20; }""", arg=[ASSISTANT, before])
    first = tabs[0][1]
    shorter(first, "128")
    ask(first, "A follow-up sent mid-answer", image=False)
    first.get_by_text("position 1 in the queue").wait_for(timeout=20_000)  # behind its own conversation's answer
    assert first.locator(USER).count() == 2
    deadline = time.monotonic() + 400
    while any(conversation(server[1], title).messages[-1].status != "complete" for title in titles):
        assert time.monotonic() < deadline, "an answer did not finish"
        time.sleep(0.5)
    for (context, tab), title in zip(tabs, titles):
        tab.locator(ASSISTANT).last.get_by_text(FINISHED).wait_for(timeout=180_000)
        conv = conversation(server[1], title)
        expected = ["user", "assistant", "user", "assistant"] if tab is first else ["user", "assistant"]
        assert roles(conv) == expected and all(m.status == "complete" for m in conv.messages[1::2])
        shown_text = tab.locator(ASSISTANT).nth(0).evaluate(f"m => ({ANSWER_TEXT})(m)")  # the answer, not its stats
        assert letters(conv.messages[1].text)[:200] == letters(shown_text)[:200]
        assert tab.locator(ASSISTANT).nth(0).get_by_text("decoded together with").count() == 1
        context.close()
