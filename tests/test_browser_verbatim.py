"""Stored text reaches the user unchanged (Debian's Chromium): question, answer, title and sidebar entry show
exactly what is stored, and an answer's copy button puts exactly the stored answer on the clipboard."""

from __future__ import annotations

import pytest
import test_browser
from test_browser import ASSISTANT, USER, serve, stop

from vlassist.conversation import Stats
from vlassist.store.history import History

pytestmark = test_browser.pytestmark

# What a Markdown renderer (and Streamlit's extensions) would change: emphasis, lists, colour directives, HTML,
# maths, escapes, wide characters, tabs, runs of spaces.
TRICKY = ["2*3*4", "1) first", "- x", ":red[x]", "<b>x</b>", "$x$", "back\\slash \\* \\\\ end", "中文：表格｜数据",
          "col1\tcol2\tcol3", "a  b   _c_ `d` # e"]
ANSWER = "  leading spaces\n" + "\n".join(TRICKY) + "\n\ttab-indented line\n\n|a|b|\n|-|-|\n|1|2|\n"
TITLE = '.vl-title'
SIDEBAR = '[data-testid="stSidebar"]'


@pytest.fixture(scope="module")
def app(tiny_qwen25, tmp_path_factory):
    """The app over a history with one conversation titled by each tricky string and one asking them all.

    Yields (url, {conversation id: its title}, id of the one asking every string, id of the multi-line one).
    """
    data = tmp_path_factory.mktemp("verbatim-data")
    history = History.open(data)
    store = history.for_owner("local")
    stats = Stats(stop_reason="eos", new_tokens=3)
    titled = {}
    for text in TRICKY:
        titled[store.create_conversation(text)] = text
    every = store.create_conversation("every string")
    for text in TRICKY:
        store.add_user_message(every, text)
        store.add_assistant_message(every, text, "complete", preset="ocr", options={}, stats=stats,
                                    model_family="qwen2_5_vl")
    multi = store.create_conversation("multi-line answer")
    store.add_user_message(multi, ANSWER)
    for preset in ("ocr", "describe"):
        store.add_assistant_message(multi, ANSWER, "complete", preset=preset, options={}, stats=stats,
                                    model_family="qwen2_5_vl")
    history.close()
    proc, url, log = serve(tiny_qwen25, data)
    yield url, titled, every, multi
    stop(proc, log)


@pytest.fixture
def tab(browser):
    """A browser tab allowed to read and write the clipboard."""
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"], viewport={"width": 1400,
                                                                                               "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    yield page
    context.close()


def _open(tab, url: str, conversation: int) -> None:
    tab.goto(f"{url}/?c={conversation}")
    tab.locator(ASSISTANT).first.locator('[data-testid="stCode"]').first.wait_for()


def _copy(tab, answer) -> str:
    """Press the copy button of an answer's text block; return what the clipboard then holds."""
    tab.evaluate("() => navigator.clipboard.writeText('(nothing copied)')")
    block = answer.locator('[data-testid="stCode"]').first
    block.scroll_into_view_if_needed()
    tab.mouse.move(0, 0)  # the copy button shows when the pointer enters the block: leave it first
    block.hover()  # the block's toolbar (its copy button) is shown while the pointer is over it
    # The button's own click handler, also when the toolbar fades out between the hover and the press.
    block.locator('button[aria-label="Copy to clipboard"]').dispatch_event("click")
    tab.wait_for_function("() => navigator.clipboard.readText().then(t => t !== '(nothing copied)')")
    return tab.evaluate("() => navigator.clipboard.readText()")


def test_question_answer_title_and_sidebar_show_the_stored_text(tab, app):
    """For each tricky string: the question, answer, title and sidebar entry on the page are the stored text."""
    url, titled, every, _ = app
    _open(tab, url, every)
    assert tab.locator(USER).locator(".vl-question").all_inner_texts() == TRICKY
    assert tab.locator(ASSISTANT).locator('[data-testid="stCode"] code').all_inner_texts() == TRICKY
    for conversation, text in titled.items():
        entry = tab.locator(f"{SIDEBAR} .st-key-open_{conversation} button:visible")  # not the tooltip's hidden copy
        assert entry.inner_text().split("  ·  ")[0] == text
        entry.click()
        tab.wait_for_function("t => document.querySelector('.vl-title')?.innerText === t", arg=text)


def test_copy_button_copies_the_stored_answer_byte_for_byte(tab, app):
    """The copy button of a raw answer puts exactly the stored text on the clipboard (spaces, tabs, newlines)."""
    url, _, every, multi = app
    _open(tab, url, multi)
    assert tab.locator(USER).locator(".vl-question").inner_text() == ANSWER
    assert _copy(tab, tab.locator(ASSISTANT).first) == ANSWER
    _open(tab, url, every)
    for i, text in enumerate(TRICKY):
        assert _copy(tab, tab.locator(ASSISTANT).nth(i)) == text


def test_prose_answer_switches_to_rendered_and_back_and_its_copy_is_exact(tab, app):
    """A prose answer starts raw; "Rendered" reads it as Markdown with the exact text one fold away; "Raw" again
    shows the stored text."""
    url, _, _, multi = app
    _open(tab, url, multi)
    described = tab.locator(ASSISTANT).last
    assert described.locator('[data-testid="stCode"] code').first.inner_text() == ANSWER
    described.locator("[data-testid=stButtonGroup] button", has_text="Rendered").click()
    described.locator('[data-testid="stMarkdownContainer"] table').wait_for()  # rendered Markdown
    described.locator("summary", has_text="Copy text").click()
    described.locator('[data-testid="stCode"]').first.wait_for()
    assert _copy(tab, described) == ANSWER
    described.locator("[data-testid=stButtonGroup] button", has_text="Raw").click()
    tab.wait_for_function("sel => [...document.querySelectorAll(sel)].pop().querySelectorAll('table').length == 0",
                          arg=ASSISTANT)
    assert described.locator('[data-testid="stCode"] code').first.inner_text() == ANSWER
