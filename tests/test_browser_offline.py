"""An answer or title with a Markdown image of another host makes the browser fetch nothing (page on its own port)."""

from __future__ import annotations

import http.client
import http.server
import os
import threading

import pytest
from conftest import image_bytes
from deploy_support import CHROMIUM
from test_browser import ASSISTANT, TEXTAREA, free_port, serve, stop

from vlassist.images import load_image
from vlassist.store.history import History, NewImage
from vlassist.ui.launch import PAGE_CSP

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a 1-pixel PNG and notes the path (the "outside" server an answer points at)."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802  (http.server's name)
        type(self).seen.append(self.path)
        body = image_bytes((1, 1))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def leak_server():
    """A loopback HTTP server on another port that records what is asked of it: its port."""
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Recorder)
    _Recorder.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page_server(tiny_qwen25, tmp_path_factory, leak_server):
    """The page on its own port over a history whose answer and title hold images of the leak server: its URL."""
    data_dir = tmp_path_factory.mktemp("offline-page")
    leak = f"http://127.0.0.1:{leak_server}/leak"
    history = History.open(data_dir)
    store = history.for_owner("local")
    cid = store.create_conversation("Leak check")
    data = image_bytes()
    store.add_user_message(cid, "What does it say?", [NewImage(data, load_image(data), "a.png")])
    store.add_assistant_message(cid, f"It says ![x]({leak}?secret) and ![y]({leak}?more)", "complete")
    store.rename(cid, f"Leak check ![t]({leak}?title)")
    history.close()
    proc, url, log = serve(tiny_qwen25, data_dir)
    yield url
    stop(proc, log)


def test_an_answer_with_an_outside_image_makes_no_request(browser, page_server):
    """A stored answer and title with `![x](http://127.0.0.1:PORT/leak?secret)` are shown; the server sees nothing."""
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.set_default_timeout(120_000)
        response = tab.goto(page_server)
        assert response.headers.get("content-security-policy") == PAGE_CSP
        tab.wait_for_selector(TEXTAREA)
        tab.locator('[data-testid="stSidebar"] button', has_text="Leak check").first.click()
        tab.locator(ASSISTANT, has_text="It says").first.wait_for()
        tab.wait_for_load_state("networkidle")
        assert _Recorder.seen == []
    finally:
        context.close()


def test_the_pages_trailing_slash_redirect_does_not_reflect_the_host(page_server):
    """GET /_stcore/health/ with a forged Host is redirected by path, with the policy, never to that host."""
    port = int(page_server.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/_stcore/health/", headers={"Host": "evil.example"})
    reply = conn.getresponse()
    conn.close()
    assert 300 <= reply.status < 400 and reply.getheader("location") == "/_stcore/health"
    assert reply.getheader("content-security-policy") == PAGE_CSP


def test_the_page_and_nginx_send_the_same_policy():
    """The policy the app sends is the one deploy/nginx.conf adds: the direct port is as closed as the proxied one."""
    from conftest import ROOT

    assert f'add_header Content-Security-Policy "{PAGE_CSP}" always;' in (ROOT / "deploy" / "nginx.conf").read_text()
