"""Paste, drop and the chat box's attach button in a real browser (Debian's Chromium via Playwright, the real page
server on the tiny checkpoint): every way in lands in the attach tray with its preview, original size,
model-input size and visual tokens before Send; a pasted screenshot is named after the time it was pasted."""

from __future__ import annotations

import base64
import re

import pytest
import test_browser
from conftest import image_bytes
from test_browser import ASSISTANT, TEXTAREA, TRAY, TRAY_CAPTION, open_tab, press_send, stored_answer

pytestmark = test_browser.pytestmark
server = test_browser.server  # its fixture, reused (one server for the module)

AREA = TRAY
CHIP = '[data-testid="stFileChip"]'  # the chat box's own file chip: it never holds a file now
PASTED = re.compile(r"^Pasted \d{4}-\d\d-\d\d \d\d\.\d\d\.\d\d\.png$")

# Put a PNG on the system clipboard as a screenshot tool does (an image, no file name): Ctrl+V then pastes it.
COPY_IMAGE = """async b64 => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  await navigator.clipboard.write([new ClipboardItem({'image/png': new Blob([bytes], {type: 'image/png'})})]);
}"""

# Drag files from the desktop onto an element: the events a real drop fires, with the files in their DataTransfer.
DROP = """(el, files) => {
  const data = new DataTransfer();
  for (const [b64, name, type] of files) {
    data.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type}));
  }
  for (const type of ['dragenter', 'dragover', 'drop']) {
    el.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true, composed: true}));
  }
}"""


@pytest.fixture
def tab(browser, server):
    """A fresh tab on the app that may use the clipboard (as a user's Ctrl+C / Ctrl+V do)."""
    context, page = open_tab(browser, server[0], permissions=["clipboard-read", "clipboard-write"])
    yield page
    context.close()


def tile(tab, name: str):
    """The tray caption of the file shown under `name`, once it shows what the model sees of it."""
    caption = tab.locator(TRAY_CAPTION, has_text=name)
    caption.get_by_text("visual tokens").wait_for()
    return caption


def tray_names(tab) -> list[str]:
    """The names of the files in the attach tray, in the order shown (each caption's first line)."""
    return [text.splitlines()[0].strip() for text in tab.locator(TRAY_CAPTION).all_inner_texts()]


def send_and_wait(tab, question: str) -> None:
    """Type a question, send it and wait for its finished answer."""
    tab.locator(TEXTAREA).fill(question)
    press_send(tab)
    tab.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for()


def test_a_pasted_screenshot_shows_its_sizes_before_send_named_by_the_time(tab, server):
    """Ctrl+V of a clipboard image puts it in the tray with preview, original size, model size and visual tokens
    (no bare chip in the chat box), named "Pasted <date time>.png"; Send stores it under that name."""
    tab.evaluate(COPY_IMAGE, base64.b64encode(image_bytes((150, 100), (30, 60, 200))).decode())
    tab.locator(TEXTAREA).click()
    tab.keyboard.press("Control+V")
    tab.locator(TRAY_CAPTION).get_by_text("visual tokens").wait_for()
    [name] = tray_names(tab)
    assert PASTED.match(name), name
    text = tile(tab, name).inner_text()
    assert "150×100 PNG" in text and "model sees" in text
    tab.locator(AREA).locator("img").first.wait_for()  # its preview
    assert tab.locator(CHIP).count() == 0
    assert tab.locator(TEXTAREA).input_value() == ""  # nothing of the image was typed into the box
    send_and_wait(tab, "What does the pasted screenshot show?")
    assert tab.locator(TRAY_CAPTION).count() == 0  # the tray empties on Send
    stored = stored_answer(server[1], "What does the pasted screenshot show?")
    [question] = [m for m in stored.messages if m.role == "user"]
    assert [ref.name for ref in question.images] == [name]
    assert question.images[0].size == (150, 100)


def test_pasted_text_still_goes_into_the_chat_box(tab):
    """Ctrl+V of text types it into the chat box as usual; nothing is attached."""
    tab.evaluate("text => navigator.clipboard.writeText(text)", "Total: 42 EUR")
    tab.locator(TEXTAREA).click()
    tab.keyboard.press("Control+V")
    tab.wait_for_function("sel => document.querySelector(sel).value === 'Total: 42 EUR'", arg=TEXTAREA)
    tab.wait_for_timeout(500)  # time for a wrongly routed paste to show in the tray
    assert tab.locator(TRAY_CAPTION).count() == 0 and tab.locator(CHIP).count() == 0


def test_two_screenshots_pasted_in_turn_are_both_in_the_tray(tab, server):
    """Two different screenshots pasted one after the other are both shown (each with its sizes) and both sent."""
    for size, colour in (((90, 120), (200, 30, 30)), ((64, 48), (30, 200, 30))):
        tab.evaluate(COPY_IMAGE, base64.b64encode(image_bytes(size, colour)).decode())
        tab.locator(TEXTAREA).click()
        tab.keyboard.press("Control+V")
        tile(tab, f"{size[0]}×{size[1]} PNG")
    assert len(tray_names(tab)) == 2
    send_and_wait(tab, "Compare the two pasted screenshots")
    [question] = [m for m in stored_answer(server[1], "Compare the two pasted screenshots").messages
                  if m.role == "user"]
    assert sorted(ref.size for ref in question.images) == [(64, 48), (90, 120)]


def test_files_dropped_on_the_chat_box_land_in_the_tray(tab, server):
    """An image and a PDF dropped on the chat box show in the tray with their sizes (the PDF as its pages), keep
    their names, and go with the question."""
    from test_attach import make_pdf

    files = [(base64.b64encode(image_bytes((120, 80))).decode(), "dropped.png", "image/png"),
             (base64.b64encode(make_pdf(200, 300)).decode(), "memo.pdf", "application/pdf")]
    tab.locator(TEXTAREA).evaluate(DROP, files)
    tile(tab, "dropped.png")
    tile(tab, "memo.pdf p2.png")
    assert tab.locator(CHIP).count() == 0
    send_and_wait(tab, "What do the dropped files say?")
    [question] = [m for m in stored_answer(server[1], "What do the dropped files say?").messages if m.role == "user"]
    assert [ref.name for ref in question.images] == ["dropped.png", "memo.pdf p1.png", "memo.pdf p2.png"]


def test_a_file_dropped_anywhere_on_the_page_lands_in_the_tray(tab):
    """A file dropped on the page's heading (not a drop zone) is attached, not opened in the tab in its place."""
    url = tab.url
    tab.locator("h1").first.evaluate(DROP, [(base64.b64encode(image_bytes((70, 50))).decode(), "anywhere.png",
                                             "image/png")])
    assert "70×50 PNG" in tile(tab, "anywhere.png").inner_text()
    assert tab.url == url


def test_a_file_chosen_with_the_chat_box_button_lands_in_the_tray(tab, tmp_path):
    """The chat box's attach button opens the file chooser; the chosen file is shown in the tray with its sizes."""
    picture = tmp_path / "chosen.png"
    picture.write_bytes(image_bytes((160, 90)))
    with tab.expect_file_chooser() as chooser:
        tab.locator('[data-testid="stChatInputFileUploadButton"] button').click()
    chooser.value.set_files(str(picture))
    assert "160×90 PNG" in tile(tab, "chosen.png").inner_text()
    assert tab.locator(CHIP).count() == 0
    # The same file chosen again (after removing it) comes back: the chooser was left ready for it.
    tab.locator(AREA).get_by_role("button", name="Remove").click()
    tab.locator(TRAY_CAPTION).first.wait_for(state="detached")
    with tab.expect_file_chooser() as chooser:
        tab.locator('[data-testid="stChatInputFileUploadButton"] button').click()
    chooser.value.set_files(str(picture))
    tile(tab, "chosen.png")


def test_a_dropped_file_of_another_kind_is_refused_by_name_and_the_typed_question_stays(tab):
    """A text file dropped on the chat box is not attached: the page says it cannot take that kind of file, naming
    it, and the question typed so far stays in the box."""
    tab.locator(TEXTAREA).fill("Read this invoice")
    notes = base64.b64encode(b"just some notes\n").decode()
    tab.locator(TEXTAREA).evaluate(DROP, [(notes, "notes.txt", "text/plain")])
    tab.locator(AREA).get_by_text("notes.txt").first.wait_for()
    assert tab.locator(AREA).get_by_text(re.compile("not allowed|not supported", re.I)).count() >= 1
    assert tab.locator(TRAY_CAPTION).count() == 0
    assert tab.locator(TEXTAREA).input_value() == "Read this invoice"
