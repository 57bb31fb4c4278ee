"""The page as a user sees it at 1400 and 420 px (Debian's Chromium): labels, titles, the sidebar, icons.

Screenshots of both widths are saved under the test run's temporary folder (`screens/`, path printed) for a
person to look at.
"""

from __future__ import annotations

import re

import pytest
import test_browser
from conftest import image_bytes
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from test_browser import ASSISTANT, TEXTAREA, paste, press_send, serve, stop

pytestmark = test_browser.pytestmark

WIDTHS = {"wide": (1400, 900), "narrow": (420, 860)}
PRESETS = '.st-key-presets button[data-testid^="stBaseButton"]:visible'
SIDEBAR = '[data-testid="stSidebar"]'
# Pictographs that need an emoji font, which an offline Debian machine does not have (they draw as empty boxes).
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF]")


@pytest.fixture(scope="module")
def app(tiny_qwen25, tmp_path_factory):
    """The app on the tiny checkpoint, with short answers: (url, data folder, screenshot folder)."""
    data = tmp_path_factory.mktemp("ux-data")
    screens = tmp_path_factory.getbasetemp() / "screens"
    screens.mkdir(exist_ok=True)
    proc, url, log = serve(tiny_qwen25, data)
    print(f"\nscreenshots: {screens}")
    yield url, data, screens
    stop(proc, log)


def _tab(browser, url: str, width: str):
    w, h = WIDTHS[width]
    context = browser.new_context(viewport={"width": w, "height": h})
    tab = context.new_page()
    tab.set_default_timeout(120_000)
    tab.goto(url)
    tab.wait_for_selector(TEXTAREA)
    tab.wait_for_selector(PRESETS)
    return context, tab


def _ask(tab, question: str, name: str = "clipboard.png") -> None:
    paste(tab, image_bytes((90, 120)))
    if question:
        tab.locator(TEXTAREA).fill(question)
    press_send(tab)
    tab.locator(ASSISTANT).first.wait_for()


def _heading(tab) -> str:
    return tab.locator('h3').first.inner_text().strip()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_preset_labels_are_whole_and_clickable(browser, app, width):
    """Every preset button shows its whole label (nothing clipped) and is inside the window, at 1400 and 420 px."""
    context, tab = _tab(browser, app[0], width)
    try:
        buttons = tab.locator(PRESETS)
        assert buttons.count() == 7
        if width == "narrow":
            assert tab.locator(f'{SIDEBAR}[data-collapsed="true"]').count() == 1  # it starts closed there
        sizes = buttons.evaluate_all("""els => els.map(b => {
            const label = b.querySelector('[data-testid="stMarkdownContainer"]') || b;
            const r = b.getBoundingClientRect();
            return {text: b.innerText.trim(), scroll: label.scrollWidth, client: label.clientWidth,
                    left: r.left, right: r.right, width: window.innerWidth};
        })""")
        print(width, [(s["text"], s["scroll"], s["client"]) for s in sizes])
        for size in sizes:
            assert size["scroll"] <= size["client"], f"clipped at {width}: {size}"
            assert 0 <= size["left"] and size["right"] <= size["width"], f"outside the window at {width}: {size}"
        tab.screenshot(path=str(app[2] / f"presets-{width}.png"), full_page=True)
        buttons.nth(1).click()  # "Read text" fills the chat box
        tab.wait_for_function(f"() => document.querySelector('{TEXTAREA}').value.startsWith('Read all the text')")
    finally:
        context.close()


def test_choosing_find_objects_logs_no_streamlit_warning(browser, app):
    """Picking "Find objects" (which shows its Strict box list option) and sending with it writes no Streamlit
    warning about widget values into the server's log."""
    context, tab = _tab(browser, app[0], "wide")
    try:
        tab.locator(PRESETS, has_text="Find objects").click()
        tab.get_by_text("Strict box list").wait_for()
        _ask(tab, "")
        tab.locator(ASSISTANT).first.get_by_text("tokens/s").wait_for()
        log = (app[1] / "server.log").read_text(errors="replace")
        assert "Session State API" not in log and "Traceback" not in log, log[-3000:]
    finally:
        context.close()


def test_title_is_the_typed_question(browser, app):
    """A new conversation is titled with the words the user typed, in the sidebar and above the chat."""
    context, tab = _tab(browser, app[0], "wide")
    try:
        _ask(tab, "What does the red gauge read?")
        tab.wait_for_function("() => document.querySelector('h3')?.innerText.includes("
                              "'What does the red gauge read?')")
        assert _heading(tab) == "What does the red gauge read?"
        tab.locator(f"{SIDEBAR} button", has_text="What does the red gauge read?").first.wait_for()
    finally:
        context.close()


def test_preset_without_typing_is_titled_with_its_name_and_the_file(browser, app):
    """A preset sent as filled in (not the user's words) titles the chat "<preset> · <first file name>"."""
    context, tab = _tab(browser, app[0], "wide")
    try:
        tab.locator(PRESETS, has_text="Read text").click()
        tab.wait_for_function(f"() => document.querySelector('{TEXTAREA}').value.startsWith('Read all the text')")
        _ask(tab, "")
        tab.wait_for_function("() => document.querySelector('h3')?.innerText.includes("
                              "'Read text')")
        assert _heading(tab) == "Read text · clipboard.png"
        assert "Read all the text" not in tab.locator(SIDEBAR).inner_text()
    finally:
        context.close()


def _pick(tab, button: str, heading: str, shot=None) -> None:
    """Open the sidebar (screenshot to `shot`), click `button` in it and wait for the page to show `heading`."""
    tab.locator('[data-testid="stExpandSidebarButton"]').first.click()
    tab.wait_for_selector(f'{SIDEBAR}[data-collapsed="false"]', state="attached")
    if shot:
        tab.screenshot(path=str(shot))
    tab.locator(button).click()
    tab.wait_for_function("h => document.querySelector('h3')?.innerText.trim() === h", arg=heading)


COVERED = """el => {
    const r = el.getBoundingClientRect();
    const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return !(top === el || el.contains(top));
}"""


def _uncovered(tab) -> bool:
    """Whether nothing lies over the middle of the chat box (an open sidebar would) once the sidebar has slid
    away: it slides for a moment after it is marked collapsed."""
    try:
        tab.locator(TEXTAREA).element_handle().wait_for_element_state("visible")
        tab.wait_for_function(f"el => !({COVERED})(el)", arg=tab.locator(TEXTAREA).element_handle(), timeout=5_000)
    except PlaywrightTimeout:
        return False
    return True


def test_picking_a_chat_on_a_narrow_screen_closes_the_sidebar(browser, app):
    """At 420 px the sidebar, opened to pick a conversation, closes after each pick so the page can be used."""
    context, tab = _tab(browser, app[0], "narrow")
    try:
        _ask(tab, "Narrow screen question")
        _pick(tab, f'{SIDEBAR} button:has-text("New conversation")', "New conversation")
        tab.wait_for_selector(f'{SIDEBAR}[data-collapsed="true"]', state="attached")
        assert _uncovered(tab)
        tab.locator(TEXTAREA).click(timeout=10_000)
        _pick(tab, '.st-key-history_list button:visible:has-text("Narrow screen question")', "Narrow screen question",
              app[2] / "sidebar-open-narrow.png")
        tab.wait_for_selector(f'{SIDEBAR}[data-collapsed="true"]', state="attached")
        tab.screenshot(path=str(app[2] / "after-pick-narrow.png"))
        assert _uncovered(tab)
        tab.locator(TEXTAREA).click(timeout=10_000)  # nothing covers the chat box any more
        tab.locator(TEXTAREA).fill("typed after the pick")
        assert tab.locator(TEXTAREA).input_value() == "typed after the pick"
    finally:
        context.close()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_no_emoji_glyphs_on_the_page(browser, app, width):
    """Nothing on the page needs an emoji font: icons are Material ligatures Streamlit ships."""
    context, tab = _tab(browser, app[0], width)
    try:
        _ask(tab, f"Glyph check {width}")
        tab.locator(ASSISTANT).last.get_by_text("tokens").first.wait_for()
        if width == "wide":
            tab.locator('[data-testid="stPopover"] button').first.click()  # the conversation's actions menu
            tab.get_by_text("Export JSON").first.wait_for()
        text = tab.evaluate("() => document.body.innerText")
        assert not EMOJI.findall(text), sorted(set(EMOJI.findall(text)))
        tab.screenshot(path=str(app[2] / f"page-{width}.png"), full_page=True)
    finally:
        context.close()
