"""The page in a real browser: long names in the sidebar are readable, a question's images open full size."""

from __future__ import annotations

import os

import pytest
from conftest import image_bytes
from test_browser import CHROMIUM, TEXTAREA, USER, paste, press_send, serve, stop
from test_browser_models import open_model_section

from vlassist.store.history import History

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]

LONG_NAME = "qwen2.5-vl-7b-instruct-finetuned-on-invoices-and-receipts-checkpoint-final"
LONG_QUESTION = "Which of these supplier invoices from the third quarter were paid late and by how many days each"
BIG = (1600, 1200)  # far larger than a thumbnail


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """The app on the tiny checkpoint, placed in a models folder under a long name: (url, data folder)."""
    models = tmp_path_factory.mktemp("models")
    (models / LONG_NAME).symlink_to(tiny_qwen25, target_is_directory=True)
    data = tmp_path_factory.mktemp("layout-data")
    proc, url, log = serve(models / LONG_NAME, data)
    yield url, data
    stop(proc, log)


@pytest.fixture
def tab(browser, server):
    """A fresh tab on the app with the chat box ready."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(server[0])
    page.wait_for_selector(TEXTAREA)
    yield page
    context.close()


def stored_titles(data) -> list[str]:
    history = History.open(data)
    try:
        return [item.title for item in history.for_owner("local").list_conversations()]
    finally:
        history.close()


def test_a_long_checkpoint_name_is_readable_whole_in_the_model_picker(tab):
    """The picker's option for a long checkpoint name wraps instead of being clipped, and the picker's help
    tooltip names the picked model whole."""
    section = open_model_section(tab)
    section.get_by_role("combobox").first.click()
    option = tab.locator('[role="option"]', has_text=LONG_NAME)
    option.wait_for()
    text = option.locator("div").first
    assert LONG_NAME in text.inner_text()
    clipped = text.evaluate("e => [e.scrollWidth - e.clientWidth, e.scrollHeight - e.clientHeight]")
    assert clipped[0] <= 1 and clipped[1] <= 1, clipped
    # The option grows with its wrapped text rather than letting it spill over the next one.
    box, inner = option.bounding_box(), text.bounding_box()
    assert box["height"] >= inner["height"] - 1 and inner["height"] > 30
    tab.keyboard.press("Escape")
    tab.locator('.st-key-model_pick [data-testid="stTooltipIcon"]').hover()
    tab.locator('[data-testid="stTooltipContent"]', has_text=LONG_NAME).wait_for()


def test_a_long_title_is_one_left_aligned_line_cut_with_an_ellipsis_and_its_tooltip_has_it_whole(tab, server):
    """A long conversation title's history entry is a single left-aligned line ending in an ellipsis; hovering
    it shows the whole title."""
    tab.locator(TEXTAREA).fill(LONG_QUESTION)
    press_send(tab)
    entry = tab.locator(".st-key-history_list button", has_text="Which of these").first
    entry.wait_for()
    [title] = [t for t in stored_titles(server[1]) if t.startswith("Which of these")]
    line = entry.locator("p")
    style = line.evaluate("""e => { const s = getComputedStyle(e); return {overflow: s.textOverflow,
        space: s.whiteSpace, align: s.textAlign, height: e.getBoundingClientRect().height,
        lineHeight: parseFloat(s.lineHeight), cut: e.scrollWidth > e.clientWidth,
        left: e.getBoundingClientRect().left - e.closest('button').getBoundingClientRect().left}; }""")
    assert style["overflow"] == "ellipsis" and style["space"] in ("pre", "nowrap") and style["align"] == "left"
    assert style["cut"] and style["height"] <= style["lineHeight"] * 1.5, style
    assert style["left"] < 30, style  # starts at the button's left edge (padding only), not centred
    entry.hover()
    tab.locator('[data-testid="stTooltipContent"]', has_text=title).wait_for()


def test_a_question_image_is_a_thumbnail_whose_link_opens_it_full_size(tab):
    """A question's image is shown smaller than it is; its "Full size" link opens the stored image at its
    original size."""
    paste(tab, image_bytes(BIG))
    tab.locator(TEXTAREA).fill("What is in this big picture")
    press_send(tab)
    message = tab.locator(USER, has_text="What is in this big picture")
    link = message.get_by_role("link", name="Full size")
    link.wait_for()
    thumb = message.locator('[data-testid="stImage"] img')
    thumb.wait_for()
    tab.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    rendered = thumb.evaluate("img => [img.getBoundingClientRect().width, img.naturalWidth]")
    assert rendered[0] < BIG[0] and rendered[1] < BIG[0], rendered
    with tab.context.expect_page() as opened:
        link.click()
    full = opened.value
    full.wait_for_load_state()
    assert full.evaluate("() => [document.images[0].naturalWidth, document.images[0].naturalHeight]") == list(BIG)
