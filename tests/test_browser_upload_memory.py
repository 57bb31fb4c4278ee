"""Uploads in the page do not pile up in the server's memory: a tiny file of a huge, plain image (49 MP, ~2 KB
as WebP, ~147 MB decoded) is kept only at its model-input size, and its decode goes back to the system.

The real page server under an address-space cap, sessions in Debian's Chromium one after another.
"""

from __future__ import annotations

import pytest
import test_browser
from PIL import Image
from test_api_limits import rss
from test_browser import ASSISTANT, TEXTAREA, TRAY_CAPTION, TRAY_INPUT, open_tab, press_send, serve, stop

pytestmark = test_browser.pytestmark

ADDRESS_SPACE = 6 * 1024**3  # the page server's cap: a few kept decodes too many and it fails
SESSIONS = 5


def rss_mb(proc) -> int:
    """Resident memory of a process, in MB."""
    return rss(proc) // 2**20


@pytest.fixture
def server(tiny_qwen25, tmp_path):
    """The page server under prlimit, with a small model input so answers are quick: (process, url)."""
    proc, url, log = serve(tiny_qwen25, tmp_path, wrap=("prlimit", f"--as={ADDRESS_SPACE}"),
                           VLASSIST_MAX_IMAGE_TOKENS="64")
    yield proc, url
    stop(proc, log)


def ask_with(browser, url: str, question: str, image=None) -> None:
    """One session: open the page, attach `image` in the tray (if any), send, wait for the answer, close."""
    context, tab = open_tab(browser, url)
    tab.set_default_timeout(180_000)
    if image is not None:
        tab.locator(TRAY_INPUT).set_input_files(str(image))
        tab.locator(TRAY_CAPTION).get_by_text("visual tokens").wait_for()
    tab.locator(TEXTAREA).fill(question)
    press_send(tab)
    tab.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for()
    context.close()


def test_sessions_sending_cheap_49_megapixel_images_leave_the_servers_memory_flat(browser, server, tmp_path):
    """Five sessions, each attaching and sending a different ~2 KB WebP of 16383×3000 px, then closing: the server
    grows by less than one such decode (it grew ~200 MB a session and kept it when each decode stayed whole)."""
    proc, url = server
    ask_with(browser, url, "warm up")  # first-answer allocations are not what this measures
    start = rss_mb(proc)
    for i in range(SESSIONS):
        image = tmp_path / f"wide{i}.webp"
        Image.new("RGB", (16383, 3000), (250, 240 - 20 * i, 250)).save(image, "WEBP", lossless=True)
        assert image.stat().st_size < 4096
        ask_with(browser, url, f"What is in picture {i}?", image)
    grown = rss_mb(proc) - start
    assert grown < 100, f"the page server grew by {grown} MB over {SESSIONS} sessions"
