"""deploy/nginx.conf as shipped, run by Debian's nginx on 127.0.0.1 in front of an upstream that echoes requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import deploy_support as ds
import pytest

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(ds.nginx_binary() is None,
                       reason="nginx is not installed (scripts/test.sh installs it as root)"),
]

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
MIB = 1024 * 1024


class Echo(BaseHTTPRequestHandler):
    """Answers every request with the headers (all copies, as received) and the body length it got."""

    seen: list[dict] = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, MIB)))
        record = {"path": self.path, "headers": [[k, v] for k, v in self.headers.items()], "body": length}
        Echo.seen.append(record)
        data = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """nginx with the shipped site (loopback ports, test certificate, two users) in front of the echo upstream."""
    folder = tmp_path_factory.mktemp("nginx")
    upstream = ThreadingHTTPServer((ds.LOOPBACK, 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    https_port, http_port = ds.free_port(), ds.free_port()
    site = ds.render_nginx_site(https_port, http_port, upstream.server_address[1], folder, USERS)
    conf = ds.nginx_main_conf(site, folder)
    try:
        with ds.nginx(conf, https_port):
            yield {"https": https_port, "http": http_port, "app": upstream.server_address[1], "conf": conf}
    finally:
        upstream.shutdown()


def get(proxy, path="/", user="bob", headers=None, **kw):
    """A request through nginx over TLS, signed in as `user` (None: no credentials)."""
    headers = dict(headers or {})
    if user:
        headers["Authorization"] = ds.basic_auth(user, USERS[user])
    Echo.seen.clear()
    status, response_headers, body = ds.http_get(proxy["https"], path, headers, tls=True, **kw)
    return status, response_headers, body


def upstream_headers(body: bytes, name: str) -> list[str]:
    """Every value the upstream received for one header (case-insensitive)."""
    return [v for k, v in json.loads(body)["headers"] if k.lower() == name.lower()]


def test_nginx_accepts_the_shipped_configuration(proxy):
    """`nginx -t` passes on the shipped site inside a plain http block."""
    result = ds.nginx_test_config(proxy["conf"])
    assert result.returncode == 0, result.stderr


def test_request_without_password_is_refused(proxy):
    """No credentials: 401 and the app is never reached."""
    status, headers, _ = get(proxy, user=None)
    assert status == 401 and "basic" in headers["www-authenticate"].lower()
    assert Echo.seen == []


def test_wrong_password_is_refused(proxy):
    """A wrong password gets 401 and the app is never reached."""
    status, _, _ = get(proxy, user=None, headers={"Authorization": ds.basic_auth("alice", "wrong")})
    assert status == 401 and Echo.seen == []


def test_signed_in_user_reaches_the_app_named_in_the_user_header(proxy):
    """The app receives the authenticated name in X-Remote-User."""
    status, _, body = get(proxy, user="alice")
    assert status == 200
    assert upstream_headers(body, "X-Remote-User") == ["alice"]


def test_forged_user_header_is_replaced_by_the_signed_in_name(proxy):
    """Copies of X-Remote-User sent by the client, in any letter case, never reach the app."""
    forged = {"X-Remote-User": ["alice", "root"], "x-remote-user": "admin", "X-REMOTE-USER": "alice"}
    status, _, body = get(proxy, user="bob", headers=forged)
    assert status == 200
    assert upstream_headers(body, "X-Remote-User") == ["bob"]


def test_user_header_spelled_with_underscores_is_dropped(proxy):
    """X_Remote_User (which some frameworks read as X-Remote-User) is not passed on."""
    _, _, body = get(proxy, user="bob", headers={"X_Remote_User": "alice"})
    assert upstream_headers(body, "X_Remote_User") == []


def test_password_is_not_passed_to_the_app(proxy):
    """The Authorization header stays at the proxy."""
    _, _, body = get(proxy, user="bob")
    assert upstream_headers(body, "Authorization") == []


def test_websocket_upgrade_is_passed_to_the_app(proxy):
    """A websocket handshake reaches the app with Upgrade and Connection: upgrade."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    _, _, body = get(proxy, "/_stcore/stream", headers=headers)
    assert upstream_headers(body, "Upgrade") == ["websocket"]
    assert upstream_headers(body, "Connection") == ["upgrade"]


def test_cross_site_origin_is_refused(proxy):
    """A request whose Origin is another site gets 403 and never reaches the app."""
    status, _, _ = get(proxy, "/_stcore/stream", headers={"Origin": "https://attacker.example"})
    assert status == 403 and Echo.seen == []


def test_same_site_origin_reaches_the_app_as_its_own_address(proxy):
    """The page's own Origin passes, and the app sees Host and Origin as its loopback address."""
    origin = f"https://127.0.0.1:{proxy['https']}"
    status, _, body = get(proxy, headers={"Origin": origin, "Host": f"127.0.0.1:{proxy['https']}"})
    assert status == 200
    app = f"127.0.0.1:{proxy['app']}"
    assert upstream_headers(body, "Host") == [app]
    assert upstream_headers(body, "Origin") == [f"http://{app}"]


def test_content_security_policy_allows_only_the_same_origin(proxy):
    """Every response carries a CSP whose sources are this origin (or inline data), never another host."""
    for user in ("bob", None):
        _, headers, _ = get(proxy, user=user)
        policy = headers["content-security-policy"]
        directives = dict((d.split()[0], d.split()[1:]) for d in policy.split(";") if d.strip())
        assert directives["default-src"] == ["'self'"]
        for sources in directives.values():
            assert set(sources) <= {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}, policy


def test_upload_of_the_apps_largest_file_passes(proxy):
    """A 50 MiB file in a multipart body (the app's own limit) gets through to the app."""
    body = b"x" * (50 * MIB + 4096)
    status, _, answer = get(proxy, "/_stcore/upload_file/s/f", method="PUT", body=body, timeout=120)
    assert status == 200 and json.loads(answer)["body"] == len(body)


def test_upload_over_the_limit_is_refused(proxy):
    """A body over client_max_body_size gets 413 before the app sees it."""
    status, _, _ = get(proxy, "/_stcore/upload_file/s/f", method="PUT", headers={"Content-Length": str(52 * MIB)})
    assert status == 413 and Echo.seen == []


def test_plain_http_redirects_to_https(proxy):
    """Port 80 only redirects to HTTPS; nothing is served without TLS."""
    status, headers, _ = ds.http_get(proxy["http"], "/", {"Host": "vlassist.example.internal"})
    assert status == 301
    assert headers["location"].startswith("https://vlassist.example.internal/")
