"""Real browser (Debian's headless Chromium via Playwright) against `streamlit run` on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, image_bytes
from deploy_support import CHROMIUM
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from vlassist.store.history import History

TEXTAREA = '[data-testid="stChatInputTextArea"]'
ASSISTANT = '[data-testid="stChatMessage"]:has([aria-label="Chat message from assistant"])'
USER = '[data-testid="stChatMessage"]:has([aria-label="Chat message from user"])'

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]

PASTE = """(el, [b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type: 'image/png'}));
  el.focus();
  el.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
}"""
TRAY = ".st-key-attach_area"  # the attach area above the chat box
TRAY_CAPTION = f'{TRAY} [data-testid="stCaptionContainer"]'
TRAY_INPUT = f'{TRAY} [data-testid="stFileUploader"] input[type="file"]'  # its uploader's file input


def paste(tab, png: bytes, name: str = "clipboard.png", shown: str | None = None) -> None:
    """Paste a PNG into the chat box as Ctrl+V does; wait until the attach tray shows it (as `shown`) with its
    sizes, as the user sees before Send."""
    tab.locator(TEXTAREA).evaluate(PASTE, [base64.b64encode(png).decode(), name])
    tab.locator(TRAY_CAPTION, has_text=shown or name).get_by_text("visual tokens").wait_for()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(checkpoint, data, wrap: tuple[str, ...] = (), **env_extra):
    """Start the app on a free loopback port (under `wrap`, e.g. prlimit); return (process, url, log file)."""
    port = free_port()
    env = {**os.environ, "VLASSIST_MODEL_DIR": str(checkpoint), "VLASSIST_DEVICE": "cpu",
           "VLASSIST_DATA_DIR": str(data), "VLASSIST_STREAM_TIMEOUT_S": "60", **env_extra}
    if "VLASSIST_USER_HEADER" not in env_extra:
        env.pop("VLASSIST_USER_HEADER", None)
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen(
        [*wrap, sys.executable, "-m", "vlassist.ui.launch", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return proc, url, log
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop(proc, log)
                raise RuntimeError((data / "server.log").read_text()[-2000:]) from None
            time.sleep(0.3)


def stop(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """The app on the tiny checkpoint with one local owner: (url, data folder)."""
    data = tmp_path_factory.mktemp("browser-data")
    proc, url, log = serve(tiny_qwen25, data)
    yield url, data
    stop(proc, log)


@pytest.fixture
def page(browser, server):
    """A fresh browser tab on the app, with the chat box ready (the model loads on the first visit)."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(120_000)
    tab.goto(server[0])
    tab.wait_for_selector(TEXTAREA)
    yield tab
    context.close()


def press_send(tab) -> None:
    """Press Enter in the chat box once it can send: not while an attachment is still uploading, when Enter
    does nothing (a slow upload on a loaded machine would otherwise lose the question)."""
    tab.wait_for_selector('[data-testid="stChatInputSubmitButton"]:enabled')
    tab.locator(TEXTAREA).press("Enter")


def set_length(tab, tokens: str) -> None:
    """Set the answer-length slider in the sidebar's settings."""
    tab.get_by_text("Settings", exact=True).click()
    slider = tab.locator('[data-testid="stSlider"]', has_text="Answer length").get_by_role("slider")
    slider.focus()
    slider.press("Home")  # the shortest length, then step up to the one wanted
    for _ in range(20):
        if slider.get_attribute("aria-valuetext") == tokens:
            return
        slider.press("ArrowRight")
        tab.wait_for_timeout(50)
    raise AssertionError(f"the answer-length slider has no {tokens}")


def send(page, question: str) -> None:
    page.locator(TEXTAREA).fill(question)
    press_send(page)


def open_from_sidebar(page, server, title: str) -> None:
    page.reload()
    page.wait_for_selector(TEXTAREA)
    page.locator('[data-testid="stSidebar"] button', has_text=title).first.click()
    page.locator(ASSISTANT).first.wait_for()


def stored_answer(data, title: str):
    history = History.open(data)
    store = history.for_owner("local")
    [summary] = [c for c in store.list_conversations() if c.title == title]
    conversation = store.get_conversation(summary.id)
    history.close()
    return conversation


def test_pasted_image_gets_a_streamed_answer_that_is_in_the_sidebar_after_reload(page, server, tmp_path):
    """Paste an image, ask, watch the answer stream, reload, and reopen it from the sidebar with its image."""
    title = "Describe the chosen file"
    paste(page, image_bytes((90, 120), (20, 120, 220)))
    send(page, title)
    answer = page.locator(ASSISTANT).last.locator('[data-testid="stMarkdownContainer"]').first
    answer.wait_for()
    page.wait_for_function("el => el.innerText.trim().length > 0", arg=answer.element_handle())
    page.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for()  # finished and redrawn from history
    open_from_sidebar(page, server, title)
    page.locator(USER).first.locator("img").first.wait_for()
    assert page.locator(USER).first.locator("img").count() == 1
    assert page.locator(ASSISTANT).first.get_by_text("tokens/s").count() == 1
    conversation = stored_answer(server[1], title)
    assert [m.images[0].name for m in conversation.messages if m.role == "user"] == ["clipboard.png"]
    assert conversation.messages[-1].status == "complete"


def test_users_named_by_header_see_only_their_own_history(browser, tiny_qwen25, tmp_path):
    """Behind a proxy's user header each user sees only their conversations; no header gets a refusal."""
    history = History.open(tmp_path)
    history.for_owner("ann").create_conversation("Ann's invoice")
    history.for_owner("bob").create_conversation("Bob's diagram")
    history.close()
    proc, url, log = serve(tiny_qwen25, tmp_path, VLASSIST_USER_HEADER="X-Remote-User")
    try:
        seen = {}
        for user in ("ann", "bob", None):
            context = browser.new_context(extra_http_headers={"X-Remote-User": user} if user else {})
            tab = context.new_page()
            tab.set_default_timeout(120_000)
            tab.goto(url)
            if user is None:
                tab.get_by_text("Not signed in").wait_for()
                seen[user] = tab.locator(TEXTAREA).count()
            else:
                tab.wait_for_selector(TEXTAREA)
                tab.get_by_text("Model status").wait_for()  # drawn after the conversation list
                own = {"ann": "Ann's invoice", "bob": "Bob's diagram"}[user]
                try:  # the list may come with a later rerun than the first frame: wait for the user's own entry
                    tab.locator('[data-testid="stSidebar"]').get_by_text(own).first.wait_for(timeout=30_000)
                except PlaywrightTimeout:
                    pass  # not shown: the assertion below reports it
                sidebar = tab.locator('[data-testid="stSidebar"]').inner_text()
                seen[user] = ("Ann's invoice" in sidebar, "Bob's diagram" in sidebar)
            context.close()
        assert seen == {"ann": (True, False), "bob": (False, True), None: 0}
    finally:
        stop(proc, log)


def open_tab(browser, url, **context_args):
    """A new browser context (made with `context_args`) and tab on the app, with the chat box ready: (context, tab)."""
    context = browser.new_context(**context_args)
    tab = context.new_page()
    tab.set_default_timeout(120_000)
    tab.goto(url)
    tab.wait_for_selector(TEXTAREA)
    return context, tab


def test_conversation_survives_a_server_restart(browser, tiny_qwen25, tmp_path):
    """A pasted-image conversation is in the sidebar, image and answer included, after the server restarts."""
    title = "Read the pasted panel"
    proc, url, log = serve(tiny_qwen25, tmp_path)
    try:
        context, tab = open_tab(browser, url)
        paste(tab, image_bytes((100, 70), (200, 90, 10)))
        send(tab, title)
        tab.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for()
        context.close()
    finally:
        stop(proc, log)
    proc, url, log = serve(tiny_qwen25, tmp_path)  # a new server process on the same data folder
    try:
        context, tab = open_tab(browser, url)
        open_from_sidebar(tab, (url, tmp_path), title)
        tab.locator(USER).first.locator("img").first.wait_for()
        assert tab.locator(USER).first.locator("img").count() == 1
        assert tab.locator(ASSISTANT).first.get_by_text("tokens/s").count() == 1
        context.close()
    finally:
        stop(proc, log)
