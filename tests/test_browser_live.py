"""The live page while answers run in the answer service: Stop, a second send, reload, queues, a killed server.

Every check looks at the page as it is, without reloading, unless reloading is the point. Answers are forced
long (VLASSIST_MIN_ANSWER_TOKENS and the answer-length setting) so there is always something to interrupt.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from conftest import image_bytes
from test_browser import (  # noqa: F401  (set_length is shared from here too)
    ASSISTANT,
    CHROMIUM,
    TEXTAREA,
    TRAY_CAPTION,
    USER,
    open_from_sidebar,
    open_tab,
    paste,
    press_send,
    send,
    serve,
    set_length,
    stop,
    stored_answer,
)

from vlassist.store.history import History

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]

LONG = "2048"  # answer length in tokens: ~7 s on the tiny model with one free core, far longer under load
STOPPED = "Stopped — partial answer"
FINISHED = "tokens/s"  # the stats line of a stored, finished answer


def start(checkpoint, data):
    """The app with every answer forced to its full length: (process, url, log)."""
    return serve(checkpoint, data, VLASSIST_MIN_ANSWER_TOKENS="100000")


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """One app server for the tests that do not restart it: (url, data folder)."""
    data = tmp_path_factory.mktemp("live-data")
    proc, url, log = start(tiny_qwen25, data)
    yield url, data
    stop(proc, log)


def ask(tab, question: str, image: bool = True) -> None:
    """Type (and, with `image`, paste a picture into) the chat box and send."""
    if image:
        paste(tab, image_bytes((90, 60)))
    tab.locator(TEXTAREA).fill(question)
    press_send(tab)


# An answer's text in its bubble: the raw block while it streams (or when shown raw), else its rendered Markdown
# (a Markdown element, not a button's or switch's label).
ANSWER_TEXT = """m => {
  const code = [...m.querySelectorAll('[data-testid="stCode"] code')].find(c => c.offsetParent !== null);
  if (code) return code.innerText;
  const shown = m.querySelector('[data-testid="stMarkdown"] [data-testid="stMarkdownContainer"]');
  return shown ? shown.innerText : '';
}"""


def live_text(tab) -> str:
    """The text of the last answer on the page, as shown now."""
    return tab.locator(ASSISTANT).last.evaluate(f"m => ({ANSWER_TEXT})(m)")


def letters(text: str) -> str:
    """The letters and digits of a text: what survives the page's Markdown rendering of it.

    The random model's text holds backticks, asterisks and the like, which the page renders as formatting, so the
    shown text and the stored one are compared on these alone.
    """
    return re.sub(r"[\W_]", "", text)


def wait_streaming(tab, at_least: int = 40) -> None:
    """Wait until the last answer shows at least `at_least` characters of text."""
    tab.wait_for_function(
        f"""([sel, n]) => {{ const m = [...document.querySelectorAll(sel)].pop();
             return m && ({ANSWER_TEXT})(m).trim().length >= n; }}""", arg=[ASSISTANT, at_least])


def conversation(data, title: str):
    """The stored conversation with this title (local owner)."""
    history = History.open(data)
    try:
        store = history.for_owner("local")
        [summary] = [c for c in store.list_conversations() if c.title == title]
        return store.get_conversation(summary.id)
    finally:
        history.close()


def roles(conv) -> list[str]:
    return [m.role for m in conv.messages]


def test_stop_keeps_the_partial_answer_on_screen_marked_stopped(browser, server):
    """Stop mid-answer: within seconds the partial text stays on the live page with the stopped mark."""
    context, tab = open_tab(browser, server[0])
    set_length(tab, LONG)
    ask(tab, "Stop me while you write")
    wait_streaming(tab)
    tab.locator(ASSISTANT).last.get_by_role("button", name="Stop").click()
    tab.locator(ASSISTANT).last.get_by_text(STOPPED).wait_for(timeout=10_000)
    shown = live_text(tab).strip()
    assert shown, "the partial answer vanished"
    # One history entry (its tooltip keeps a hidden copy of the title: count what is shown)
    assert tab.locator('[data-testid="stSidebar"]').get_by_text("Stop me while you write").filter(
        visible=True).count() == 1
    stored = conversation(server[1], "Stop me while you write").messages[-1]
    assert stored.status == "interrupted" and letters(stored.text) == letters(shown)
    context.close()


def test_a_chosen_file_answer_stopped_mid_answer_is_kept_with_its_image(browser, server, tmp_path):
    """Attach through the file chooser, stop mid-answer: after a reload the partial answer is there, marked
    stopped, under the question with its one image; the store says interrupted."""
    title = "What is in the chosen screenshot?"
    picture = tmp_path / "chosen.png"
    picture.write_bytes(image_bytes((160, 90)))
    context, tab = open_tab(browser, server[0])
    set_length(tab, LONG)
    with tab.expect_file_chooser() as chooser:
        tab.locator('[data-testid="stChatInputFileUploadButton"] button').click()
    chooser.value.set_files(str(picture))
    tab.locator(TRAY_CAPTION, has_text="chosen.png").get_by_text("visual tokens").wait_for()  # shown before Send
    send(tab, title)
    wait_streaming(tab)
    tab.locator(ASSISTANT).last.get_by_role("button", name="Stop").click()
    tab.locator(ASSISTANT).last.get_by_text(STOPPED).wait_for()
    open_from_sidebar(tab, server, title)
    tab.locator(ASSISTANT).first.get_by_text(STOPPED).wait_for()
    tab.locator(USER).first.locator("img").first.wait_for()
    assert tab.locator(USER).first.locator("img").count() == 1
    answer = stored_answer(server[1], title).messages[-1]
    assert answer.status == "interrupted" and answer.text and answer.stats.stop_reason == "stopped"
    context.close()


def test_a_question_sent_mid_answer_waits_its_turn(browser, server):
    """A second question sent while an answer streams is queued and shown so; the history alternates."""
    context, tab = open_tab(browser, server[0])
    set_length(tab, LONG)
    ask(tab, "First of two questions")
    wait_streaming(tab)
    ask(tab, "Second of two questions", image=False)
    tab.get_by_text("position 1 in the queue").wait_for(timeout=20_000)
    assert tab.locator(USER).count() == 2
    tab.locator(ASSISTANT).nth(1).get_by_text(FINISHED).wait_for(timeout=180_000)
    assert tab.locator(ASSISTANT).nth(0).get_by_text(FINISHED).count() == 1
    conv = conversation(server[1], "First of two questions")
    assert roles(conv) == ["user", "assistant", "user", "assistant"]
    assert [m.status for m in conv.messages[1::2]] == ["complete", "complete"]
    context.close()


def test_reload_mid_answer_shows_it_streaming_then_complete(browser, server):
    """Reloading while an answer streams brings back the same conversation with the answer still growing."""
    context, tab = open_tab(browser, server[0])
    set_length(tab, LONG)
    ask(tab, "Keep going through a reload")
    wait_streaming(tab)
    tab.reload()
    tab.wait_for_selector(TEXTAREA)
    wait_streaming(tab, 1)
    before = len(live_text(tab))
    tab.wait_for_function(
        """([sel, n]) => { const m = [...document.querySelectorAll(sel)].pop();
             return m && m.innerText.length > n + 20; }""", arg=[ASSISTANT, before])
    tab.locator(ASSISTANT).last.get_by_text(FINISHED).wait_for(timeout=180_000)
    conv = conversation(server[1], "Keep going through a reload")
    assert roles(conv) == ["user", "assistant"] and conv.messages[-1].status == "complete"
    context.close()


def test_closing_the_tab_lets_the_answer_finish_and_be_stored(browser, server):
    """An answer whose tab was closed mid-stream is finished and stored."""
    context, tab = open_tab(browser, server[0])
    set_length(tab, "512")
    ask(tab, "Finish without me")
    wait_streaming(tab)
    context.close()
    deadline = time.monotonic() + 120
    while conversation(server[1], "Finish without me").messages[-1].status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert conversation(server[1], "Finish without me").messages[-1].status == "complete"


def test_four_sessions_are_served_in_the_order_they_asked(browser, server):
    """Four tabs sending in turn: the later ones show positions 1–3, and answers finish in sending order."""
    tabs = []
    for _ in range(4):
        context, tab = open_tab(browser, server[0])
        set_length(tab, LONG)  # the first answer must outlast the three sends after it
        tabs.append((context, tab))
    titles = [f"Session {i} asks" for i in range(4)]
    for position, ((_, tab), title) in enumerate(zip(tabs, titles)):
        ask(tab, title, image=False)
        tab.locator(ASSISTANT).last.wait_for()
        if position:  # checked as it is sent, while every earlier answer is still running or waiting
            tab.get_by_text(f"position {position} in the queue").wait_for(timeout=20_000)
    finished: list[str] = []
    deadline = time.monotonic() + 300
    while len(finished) < 4:
        assert time.monotonic() < deadline
        for title in titles:
            if title not in finished and conversation(server[1], title).messages[-1].status == "complete":
                finished.append(title)
        time.sleep(0.2)
    assert finished == titles
    for context, tab in tabs:
        tab.locator(ASSISTANT).last.get_by_text(FINISHED).wait_for(timeout=60_000)
        context.close()


def test_killed_server_keeps_the_partial_answer_marked_interrupted(browser, tiny_qwen25, tmp_path):
    """kill -9 mid-answer, restart: the conversation shows the streamed text up to about a second, stopped."""
    proc, url, log = start(tiny_qwen25, tmp_path)
    try:
        context, tab = open_tab(browser, url)
        set_length(tab, LONG)
        ask(tab, "Crash while answering")
        wait_streaming(tab, 800)
        shown = live_text(tab).rstrip(" ▍")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        context.close()
    finally:
        stop(proc, log)
    proc, url, log = start(tiny_qwen25, tmp_path)
    try:
        context, tab = open_tab(browser, url)
        tab.locator('[data-testid="stSidebar"] button', has_text="Crash while answering").first.click()
        tab.locator(ASSISTANT).last.get_by_text(STOPPED).wait_for()
        answer = conversation(tmp_path, "Crash while answering").messages[-1]
        assert answer.status == "interrupted"
        # What the page showed before the kill was stored, up to the last write (about a second behind).
        assert len(answer.text) >= len(shown) - 600 and shown.startswith(answer.text.strip()[:len(shown) - 600])
        context.close()
    finally:
        stop(proc, log)


def test_a_200k_character_question_is_refused_and_others_are_served(browser, tiny_qwen25, tmp_path):
    """Under an 8 GiB limit, one tab's 200k-character question gets a message and keeps its text; another is served."""
    import shutil

    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    proc, url, log = serve(tiny_qwen25, tmp_path, wrap=("prlimit", f"--as={8 * 2**30}"))
    try:
        (context_a, tab_a), (context_b, tab_b) = open_tab(browser, url), open_tab(browser, url)
        huge = "Describe every detail of this picture once more. " * 4100
        tab_a.locator(TEXTAREA).fill(huge)
        press_send(tab_a)
        tab_a.get_by_text("Not sent").wait_for(timeout=60_000)
        assert "over the limit" in tab_a.locator('[data-testid="stAlert"]').first.inner_text()
        assert tab_a.locator(TEXTAREA).input_value() == huge.strip()  # given back for editing
        ask(tab_b, "A short question", image=False)
        tab_b.locator(ASSISTANT).last.get_by_text(FINISHED).wait_for(timeout=120_000)
        assert proc.poll() is None
        context_a.close()
        context_b.close()
    finally:
        stop(proc, log)
