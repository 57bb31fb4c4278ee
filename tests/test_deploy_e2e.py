"""The intranet deployment end to end: `streamlit run` on the tiny checkpoint behind deploy/nginx.conf (real nginx,
TLS, basic auth) and Debian's Chromium signing in through it. Everything runs on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

import deploy_support as ds
import pytest
from conftest import image_bytes

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(ds.nginx_binary() is None,
                       reason="nginx is not installed (scripts/test.sh installs it as root)"),
    pytest.mark.skipif(not os.path.exists(ds.CHROMIUM), reason="Debian chromium is not installed"),
]

HEADER = "X-Remote-User"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
QUESTION = "Alice's invoice question"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_qwen25):
    """The app in header mode on a loopback port, nginx with the shipped site in front of it."""
    folder = tmp_path_factory.mktemp("deploy")
    app_port, https_port, http_port = ds.free_port(), ds.free_port(), ds.free_port()
    env = ds.app_env(tiny_qwen25, folder / "data", user_header=HEADER)
    site = ds.render_nginx_site(https_port, http_port, app_port, folder, USERS)
    conf = ds.nginx_main_conf(site, folder)
    with ds.streamlit_app(app_port, env, folder / "app.log") as app, ds.nginx(conf, https_port):
        yield {"app": app, "app_port": app_port, "url": f"https://127.0.0.1:{https_port}", "data": folder / "data",
               "folder": folder}


def signed_in_page(browser, user: str, extra_headers: dict | None = None):
    """A fresh browser context that answers nginx's password prompt as `user`."""
    context = browser.new_context(http_credentials={"username": user, "password": USERS[user]},
                                  ignore_https_errors=True, extra_http_headers=extra_headers or {})
    return context, context.new_page()


@pytest.fixture(scope="module")
def alice_session(deployment, browser, tmp_path_factory):
    """Alice signs in through nginx, attaches an image, asks, waits for the answer and reloads; every request,
    failed request and console message of the page is recorded."""
    image = tmp_path_factory.mktemp("img") / "invoice.png"
    image.write_bytes(image_bytes((160, 120)))
    context, page = signed_in_page(browser, "alice")
    log = ds.record_page(page)
    shown = ds.browser_session(page, deployment["url"] + "/", QUESTION, image)
    context.close()
    return {**shown, **log}


def stored(data_dir, owner):
    """Every conversation of one owner, as the app stored it."""
    from vlassist.store.history import History

    history = History.open(data_dir)
    store = history.for_owner(owner)
    conversations = [store.get_conversation(c.id) for c in store.list_conversations()]
    history.close()
    return conversations


def test_signed_in_user_gets_a_streamed_answer_through_nginx(alice_session):
    """Through nginx the page shows the answer with its stats line (tokens, speed)."""
    assert ds.ANSWER_DONE.search(alice_session["answer"])


def test_answer_is_stored_under_the_signed_in_user(alice_session, deployment):
    """The question (with its image) and the finished answer are stored for alice, the name nginx vouched for."""
    (conversation,) = stored(deployment["data"], "alice")
    user, answer = conversation.messages
    assert (user.role, user.text, len(user.images)) == ("user", QUESTION, 1)
    assert (answer.role, answer.status) == ("assistant", "complete")


def test_conversation_is_in_the_sidebar_after_a_reload(alice_session):
    """After reloading the page through nginx, alice's conversation is listed in the sidebar."""
    assert QUESTION[:20] in alice_session["sidebar"]


def test_session_requests_stay_on_the_page_origin(alice_session, deployment):
    """Every request of the whole session (page, scripts, fonts, icon, websocket, upload) goes to the page's
    own origin."""
    requests = alice_session["requests"]
    assert any(url.startswith("wss://") for url in requests), "the websocket was not recorded"
    assert [url for url in requests if not ds.same_origin(url, deployment["url"])] == []


def test_page_breaks_no_content_security_policy_rule(alice_session):
    """Under nginx's same-origin CSP the page loads nothing that the policy has to block."""
    assert [m for m in alice_session["console"] if "Content Security Policy" in m] == []


def test_forged_user_header_cannot_read_another_users_history(alice_session, deployment, browser):
    """Bob, sending `X-Remote-User: alice` himself, gets his own empty history, never alice's."""
    context, page = signed_in_page(browser, "bob", {HEADER: "alice"})
    page.goto(deployment["url"] + "/", wait_until="domcontentloaded")
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("No conversations yet.").wait_for(timeout=120_000)
    text = sidebar.inner_text()
    context.close()
    assert QUESTION[:20] not in text
    assert stored(deployment["data"], "bob") == []


def test_unauthenticated_request_gets_no_page(deployment):
    """Without credentials nginx answers 401 and the app's page is never served."""
    port = int(deployment["url"].rsplit(":", 1)[1])
    status, _, body = ds.http_get(port, "/", tls=True)
    assert status == 401 and b"<script" not in body


def test_app_port_listens_on_loopback_only(deployment):
    """The app's only listening socket is on 127.0.0.1: other machines cannot reach it around nginx."""
    addresses = ds.listening_addresses(deployment["app"].pid)
    assert addresses and {address for address, _ in addresses} == {"127.0.0.1"}


def test_healthcheck_reports_the_running_app(deployment):
    """deploy/healthcheck.py exits 0 against the running app's port."""
    result = subprocess.run([sys.executable, str(ds.ROOT / "deploy" / "healthcheck.py"), "--port",
                             str(deployment["app_port"])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_answers():
    """deploy/healthcheck.py exits 1 when nothing listens on the port."""
    result = subprocess.run([sys.executable, str(ds.ROOT / "deploy" / "healthcheck.py"), "--port",
                             str(ds.free_port()), "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no healthy answer" in result.stderr
