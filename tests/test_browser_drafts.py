"""Drafts in a real browser (Debian's Chromium via Playwright, the real page server on the tiny checkpoint):
typed question text and attached files stay with the conversation they were made in."""

from __future__ import annotations

import pytest
import test_browser
from conftest import image_bytes
from test_browser import ASSISTANT, TEXTAREA, press_send, stored_answer
from test_browser_attach import AREA, attach

from vlassist.ui import text_drafts

pytestmark = test_browser.pytestmark
server, page = test_browser.server, test_browser.page  # its fixtures, reused (one server for the module)

NEW = ".st-key-new_conversation button"
STAND_IN = "http://vlassist.invalid/"  # answered inside the browser (page.route): nothing reaches a network


def ask_plain(page, question: str) -> None:
    """Send a question without images and wait for its finished answer."""
    before = page.locator(ASSISTANT).count()
    page.locator(TEXTAREA).fill(question)
    press_send(page)
    page.locator(ASSISTANT).nth(before).get_by_text("tokens/s").wait_for()


def box_holds(page, text: str) -> None:
    """Wait until the chat box holds exactly `text`."""
    page.wait_for_function("([sel, text]) => document.querySelector(sel)?.value === text", arg=[TEXTAREA, text])


def new_conversation(page) -> None:
    """Open a new conversation and wait until the page shows it (the previous one's messages are gone)."""
    page.locator(NEW).click()
    # The old messages stay on screen (faded) until the rerun ends: counting them would count the old chat.
    page.wait_for_function("sel => document.querySelectorAll(sel).length === 0", arg=ASSISTANT)


def open_conversation(page, title: str) -> None:
    """Open a conversation from the sidebar's history by its title."""
    page.locator('[data-testid="stSidebar"] button', has_text=title).first.click()
    page.locator(ASSISTANT).first.wait_for()


def test_unsent_text_stays_with_its_conversation(page, server):
    """Text typed in one conversation leaves the box for a new one, is not sent there, and is back on return."""
    ask_plain(page, "Draft text conversation one")
    draft = "half-typed question for conversation one"
    page.locator(TEXTAREA).fill(draft)
    page.wait_for_timeout(400)  # the draft is kept a moment after typing, like a real user pausing
    new_conversation(page)
    box_holds(page, "")
    ask_plain(page, "Draft text conversation two")
    box_holds(page, "")
    open_conversation(page, "Draft text conversation one")
    box_holds(page, draft)
    two = stored_answer(server[1], "Draft text conversation two")
    assert [m.text for m in two.messages if m.role == "user"] == ["Draft text conversation two"]
    one = stored_answer(server[1], "Draft text conversation one")
    assert [m.text for m in one.messages if m.role == "user"] == ["Draft text conversation one"]
    open_conversation(page, "Draft text conversation two")
    box_holds(page, "")  # the other conversation's draft does not follow


def test_attached_files_stay_with_their_conversation(page, server):
    """A file in the attach tray (with its sizes and tokens) is not in a new conversation and is back on return."""
    ask_plain(page, "Draft files conversation one")
    attach(page, ("waiting.png", image_bytes((90, 120)), "image/png"))
    tile = page.locator(AREA).locator('[data-testid="stCaptionContainer"]', has_text="waiting.png")
    tile.get_by_text("visual tokens").wait_for()
    new_conversation(page)
    tile.wait_for(state="detached")
    ask_plain(page, "Draft files conversation two")
    two = stored_answer(server[1], "Draft files conversation two")
    assert [m.images for m in two.messages if m.role == "user"] == [[]]  # the draft was not sent here
    open_conversation(page, "Draft files conversation one")
    tile.get_by_text("visual tokens").wait_for()
    assert "90×120 PNG" in tile.inner_text() and "model sees" in tile.inner_text()


# The page script alone, on a stand-in page with the chat box's textarea. Here the test decides when the address
# changes and when the box is cleared relative to the script's poll, which the live page leaves to chance.

@pytest.fixture
def box_page(browser):
    """A tab on a stand-in page holding a chat-box textarea and the drafts script, at a new conversation."""
    context = browser.new_context()
    tab = context.new_page()
    body = f'<textarea data-testid="stChatInputTextArea"></textarea>{text_drafts.script()}'
    tab.route(STAND_IN + "**", lambda route: route.fulfill(content_type="text/html", body=body))
    tab.goto(STAND_IN)
    yield tab
    context.close()


def type_in_box(tab, text: str) -> None:
    """Type into the box (an input event, as a keyboard gives)."""
    tab.locator("textarea").fill(text)


def address(tab, query: str) -> None:
    """Change the address the way Streamlit does when a rerun opens a conversation (history.pushState)."""
    tab.evaluate("q => history.pushState({}, '', '/' + q)", query)


def settle(tab) -> None:
    """Let the script's poll run a few times."""
    tab.wait_for_timeout(4 * text_drafts.POLL_MS)


def test_a_sent_question_is_no_draft_when_a_new_conversation_opens(box_page):
    """A question typed in a new conversation and sent is not put back in the box by the next New conversation,
    even when the conversation's address arrives before the script's poll saw the box emptied."""
    type_in_box(box_page, "Question already sent")
    settle(box_page)  # the poll has seen the typed text
    box_page.evaluate("""() => {  // in one turn of the page's event loop: no poll in between
        document.querySelector('textarea').value = '';  // as Send empties it: no input event
        history.pushState({}, '', '/?c=7');
    }""")
    settle(box_page)
    address(box_page, "")  # New conversation
    settle(box_page)
    assert box_page.locator("textarea").input_value() == ""


def test_text_typed_right_after_opening_a_conversation_stays_in_the_box(box_page):
    """Text typed at once after another conversation opens is kept (not replaced by that conversation's draft)."""
    type_in_box(box_page, "draft of the new one")
    box_page.evaluate("""() => {  // the address changes and the user types before any poll runs
        history.pushState({}, '', '/?c=3');
        const box = document.querySelector('textarea');
        box.value = 'typed in conversation 3';
        box.dispatchEvent(new Event('input', {bubbles: true}));
    }""")
    settle(box_page)
    assert box_page.locator("textarea").input_value() == "typed in conversation 3"
    address(box_page, "")
    settle(box_page)
    assert box_page.locator("textarea").input_value() == "draft of the new one"
    address(box_page, "?c=3")
    settle(box_page)
    assert box_page.locator("textarea").input_value() == "typed in conversation 3"


def test_a_reload_puts_the_open_conversations_draft_back(box_page):
    """The draft of the open conversation is back in the box after the tab reloads."""
    address(box_page, "?c=5")
    type_in_box(box_page, "half a question")
    settle(box_page)
    box_page.reload()
    settle(box_page)
    assert box_page.locator("textarea").input_value() == "half a question"
