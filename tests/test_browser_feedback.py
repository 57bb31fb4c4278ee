"""Feedback in a real browser: a refused send is reported next to the chat box even deep in a long conversation,
and an answer's bubble says "Thinking…" from the send until its first token.

Answers are forced to their full length (VLASSIST_MIN_ANSWER_TOKENS) so a few turns fill more than a screen.
"""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image
from test_browser import ASSISTANT, CHROMIUM, TEXTAREA, USER, open_tab, paste, press_send, serve, stop
from test_browser_live import FINISHED, ask, set_length

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]

MAX_QUESTION_CHARS = 400
# Visual tokens per image: with a 128-token answer this nearly fills the tiny model's 4096-token context, so the
# prompt takes seconds to read on a CPU — long enough to see the bubble before its first token.
IMAGE_TOKENS = "3600"
NEAR_PX = 300  # how far above the chat box a refusal may be drawn and still count as next to it
STREAMING = "▍"  # the cursor after a live answer's text


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """The app with long answers, a short question limit and detailed images: (url, data folder)."""
    data = tmp_path_factory.mktemp("feedback-data")
    proc, url, log = serve(tiny_qwen25, data, VLASSIST_MIN_ANSWER_TOKENS="100000",
                           VLASSIST_MAX_QUESTION_CHARS=str(MAX_QUESTION_CHARS), VLASSIST_MAX_IMAGE_TOKENS=IMAGE_TOKENS)
    yield url, data
    stop(proc, log)


# True when the refusal lies wholly inside the viewport and ends at most `near` px above the chat box.
NEAR_CHAT_BOX = """near => {
  const alert = [...document.querySelectorAll('[data-testid="stAlert"]')].find(a => a.innerText.includes("Not sent"));
  const box = document.querySelector('[data-testid="stChatInput"]');
  if (!alert || !box) return false;
  const a = alert.getBoundingClientRect(), b = box.getBoundingClientRect();
  return a.height > 0 && a.top >= 0 && a.bottom <= innerHeight && a.bottom <= b.top && b.top - a.bottom <= near;
}"""


def big_png(color: tuple[int, int, int]) -> bytes:
    """A 3000×2000 single-colour PNG: small to paste, thousands of visual tokens to read."""
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), color).save(buf, "PNG")
    return buf.getvalue()


def test_refused_send_is_shown_next_to_the_chat_box_in_a_long_conversation(browser, server):
    """Several long answers in, a too-long question's refusal is on screen just above the chat box (and nowhere
    else: no toast), and the question is back in the box."""
    context, tab = open_tab(browser, server[0])
    set_length(tab, "512")
    for turn in range(3):
        ask(tab, f"Long answer number {turn + 1}", image=False)
        tab.locator(ASSISTANT).nth(turn).get_by_text(FINISHED).wait_for(timeout=240_000)
    assert tab.locator(USER).first.bounding_box()["y"] < 0, "the conversation does not fill more than a screen"
    question = "Describe every detail of this picture once more. " * (MAX_QUESTION_CHARS // 40)
    assert len(question.strip()) > MAX_QUESTION_CHARS
    tab.locator(TEXTAREA).fill(question)
    press_send(tab)
    refusal = tab.locator('[data-testid="stAlert"]', has_text="Not sent")
    refusal.wait_for(timeout=60_000)
    assert "over the limit" in refusal.inner_text()
    assert tab.locator('[data-testid="stToast"]').count() == 0  # one place for the error: no toast on top
    # The page scrolls smoothly to its new end: wait (bounded) for the message to settle where it belongs.
    tab.wait_for_function(NEAR_CHAT_BOX, arg=NEAR_PX, timeout=15_000)
    assert tab.locator(TEXTAREA).input_value() == question.strip()
    context.close()


def test_bubble_says_thinking_from_send_until_the_first_token(browser, server):
    """After Send the answer's bubble is on screen saying "Thinking…" with no text; the first tokens replace it."""
    context, tab = open_tab(browser, server[0])
    set_length(tab, "128")
    paste(tab, big_png((30, 140, 90)))
    tab.locator(TEXTAREA).fill("What does this panel show?")
    press_send(tab)
    tab.wait_for_function(
        """([sel, cursor]) => { const m = document.querySelector(sel);
             if (!m || !m.innerText.includes("Thinking…") || m.innerText.includes(cursor)) return false;
             const r = m.getBoundingClientRect();
             return r.height > 0 && r.bottom > 0 && r.top < innerHeight; }""", arg=[ASSISTANT, STREAMING],
        timeout=60_000)
    tab.wait_for_function(
        """([sel, cursor]) => { const m = document.querySelector(sel);
             return m && !m.innerText.includes("Thinking…") &&
                    (m.innerText.includes(cursor) || m.innerText.includes("tokens/s")); }""",
        arg=[ASSISTANT, STREAMING], timeout=120_000)
    tab.locator(ASSISTANT).first.get_by_text(FINISHED).wait_for(timeout=120_000)
    assert tab.locator(ASSISTANT).first.get_by_text("Thinking…").count() == 0
    context.close()
