"""Drafts in a real browser (Debian's Chromium via Playwright, the real page server on the tiny checkpoint):
typed question text and attached files stay with the conversation they were made in."""

from __future__ import annotations

import test_browser
from conftest import image_bytes
from test_browser import ASSISTANT, TEXTAREA, press_send, stored_answer
from test_browser_attach import AREA, attach

pytestmark = test_browser.pytestmark
server, page = test_browser.server, test_browser.page  # its fixtures, reused (one server for the module)

NEW = ".st-key-new_conversation button"


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
