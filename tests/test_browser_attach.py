"""The attach area in a real browser (Debian's Chromium via Playwright): sizes before Send, refusals, PDF pages."""

from __future__ import annotations

import test_browser
from conftest import image_bytes
from test_attach import make_pdf, rendered_size
from test_browser import ASSISTANT, TEXTAREA, TRAY, TRAY_INPUT, paste, send, stored_answer

pytestmark = test_browser.pytestmark
server, page = test_browser.server, test_browser.page  # its fixtures, reused

AREA = TRAY
UPLOADER = TRAY_INPUT


def attach(page, *files: tuple[str, bytes, str]) -> None:
    """Drop files on the attach area's uploader, as the file chooser would hand them over."""
    page.locator(UPLOADER).set_input_files([{"name": n, "mimeType": m, "buffer": b} for n, b, m in files])


def test_attached_image_shows_its_sizes_and_visual_tokens_before_send(page, server):
    """An attached image appears at once with original size, model-input size and visual tokens; nothing is sent."""
    attach(page, ("shot.png", image_bytes((90, 120)), "image/png"))
    tile = page.locator(AREA).locator('[data-testid="stCaptionContainer"]', has_text="shot.png")
    tile.get_by_text("visual tokens").wait_for()
    text = tile.inner_text()
    assert "90×120 PNG" in text and "model sees" in text
    page.locator(AREA).locator("img").first.wait_for()  # the preview may arrive a moment after its caption
    assert page.locator(AREA).locator("img").count() == 1
    assert page.locator(ASSISTANT).count() == 0


def test_damaged_file_is_refused_beside_the_chat_box_and_the_typed_text_stays(page, server):
    """A damaged file dropped with a good one: the refusal shows in view just above the chat box, text kept."""
    typed = "Words typed before attaching"
    page.locator(TEXTAREA).fill(typed)
    attach(page, ("broken.png", b"\x89PNG\r\n\x1a\n not really", "image/png"),
           ("good.png", image_bytes((64, 48)), "image/png"))
    refusal = page.get_by_text("Not attached — broken.png")
    refusal.wait_for()
    page.locator(AREA).get_by_text("good.png").wait_for()
    page.locator(AREA).locator("img").first.wait_for()
    boxes = None
    for _ in range(20):  # the layout moves while previews arrive: measure once it stands still
        now = (refusal.bounding_box(), page.locator(TEXTAREA).bounding_box())
        if now == boxes:
            break
        boxes = now
        page.wait_for_timeout(300)
    error_box, chat_box = boxes
    viewport = page.viewport_size
    assert 0 <= error_box["y"] and error_box["y"] + error_box["height"] <= viewport["height"]
    assert 0 <= chat_box["y"] - (error_box["y"] + error_box["height"]) < 250  # just above the chat box
    assert page.locator(TEXTAREA).input_value() == typed
    assert page.locator(AREA).get_by_text("broken.png", exact=False).count() == 1  # only the refusal names it


def test_pdf_pages_show_with_sizes_and_are_asked_about(page, server):
    """A 3-page PDF shows three pages with their sizes; Send asks about them (with a pasted image) and stores all."""
    title = "What do these pages say?"
    attach(page, ("report.pdf", make_pdf(200, 300, 400), "application/pdf"))
    pages = page.locator(AREA).locator('[data-testid="stCaptionContainer"]', has_text="report.pdf p")
    pages.nth(2).get_by_text("visual tokens").wait_for()
    assert pages.count() == 3
    for n, width in enumerate((200, 300, 400)):
        assert f"{rendered_size(width)}×{rendered_size(300)} PDF page" in pages.nth(n).inner_text()
    paste(page, image_bytes((80, 60), (10, 200, 90)))
    send(page, title)
    page.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for()
    assert page.locator(AREA).locator('[data-testid="stCaptionContainer"]').count() == 0  # the area is empty
    question = stored_answer(server[1], title).messages[0]
    assert [ref.name for ref in question.images] == [  # in the tray's order: images, then PDF pages
        "clipboard.png", "report.pdf p1.png", "report.pdf p2.png", "report.pdf p3.png"]
    sizes = [(rendered_size(w), rendered_size(300)) for w in (200, 300, 400)]
    assert [ref.size for ref in question.images][1:] == sizes
