"""Per-user mode: an image the page shows one user is not served to another who has its `/media/` URL."""

from __future__ import annotations

import http.client
import os

import pytest
from conftest import image_bytes
from deploy_support import CHROMIUM
from test_browser import TEXTAREA, USER, serve, stop

from vlassist.images import load_image
from vlassist.store.history import History, NewImage

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


def _get(url: str, path: str, user: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"X-Remote-User": user})
    status = conn.getresponse().status
    conn.close()
    return status


def test_another_user_cannot_fetch_a_thumbnail_by_its_media_url(browser, tiny_qwen25, tmp_path):
    """Ann's thumbnail URL, and her full-size image's, answer Ann (200) and not Bob (404), while Ann's tab shows
    them."""
    history = History.open(tmp_path)
    store = history.for_owner("ann")
    cid = store.create_conversation("Ann's receipt")
    data = image_bytes((96, 64), (10, 160, 90))
    store.add_user_message(cid, "What is the total?", [NewImage(data, load_image(data), "r.png")])
    store.add_assistant_message(cid, "12.50", "complete")
    history.close()
    proc, url, log = serve(tiny_qwen25, tmp_path, VLASSIST_USER_HEADER="X-Remote-User")
    context = browser.new_context(extra_http_headers={"X-Remote-User": "ann"})
    try:
        tab = context.new_page()
        tab.set_default_timeout(120_000)
        tab.goto(url)
        tab.wait_for_selector(TEXTAREA)
        tab.locator('[data-testid="stSidebar"] button', has_text="Ann's receipt").first.click()
        picture = tab.locator(f"{USER} img").first
        picture.wait_for()
        path = "/" + picture.get_attribute("src").split("://", 1)[-1].split("/", 1)[-1].lstrip("/")
        assert "/media/" in path
        assert _get(url, path, "ann") == 200
        assert _get(url, path, "bob") == 404
        full = "/" + tab.locator(USER).get_by_role("link", name="Full size").get_attribute("href").lstrip("/")
        assert "/media/" in full and full != path
        assert _get(url, full, "ann") == 200
        assert _get(url, full, "bob") == 404
    finally:
        context.close()
        stop(proc, log)
