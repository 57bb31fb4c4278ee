"""Running the deployed pieces for real, on 127.0.0.1 only: the Streamlit app, nginx in front of it, Chromium.

Used by tests/test_deploy_*.py and by tests/deploy_netns_session.py (which runs inside a network namespace).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
AUDIT_DIR = Path(__file__).resolve().parent / "deploy_audit"


def nginx_binary() -> str | None:
    """Path of the nginx executable, or None."""
    found = shutil.which("nginx")
    return found or next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path | None, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages."""
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def http_get(port: int, path: str, headers: dict | None = None, tls: bool = False, method: str = "GET",
             body: bytes | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    """One request to 127.0.0.1:port; returns status, headers (lower-case names) and body."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                conn.putheader(name, item)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            conn.send(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def basic_auth(user: str, password: str) -> str:
    """An Authorization header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---- the Streamlit app ----

def app_env(model_dir: Path, data_dir: Path, user_header: str | None = None, extra: dict | None = None) -> dict:
    """Environment for `streamlit run qwen_vl_app.py` on the tiny checkpoint, CPU only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLASSIST_", "STREAMLIT_"))}
    env.update(VLASSIST_MODEL_DIR=str(model_dir), VLASSIST_DATA_DIR=str(data_dir), VLASSIST_DEVICE="cpu",
               VLASSIST_STREAM_TIMEOUT_S="120", VLASSIST_CPU_THREADS="1", PYTHONUNBUFFERED="1")
    if user_header:
        env["VLASSIST_USER_HEADER"] = user_header
    env.update(extra or {})
    return env


@contextmanager
def streamlit_app(port: int, env: dict, log: Path, python: str = sys.executable, timeout: float = 120):
    """`streamlit run qwen_vl_app.py` from the repository root (so .streamlit/config.toml applies)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, "-m", "vlassist.ui.launch", "--server.port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, timeout, proc, log)
        deadline = time.monotonic() + timeout
        while http_get(port, "/_stcore/health")[0] != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"app not healthy:\n{tail(log)}")
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a process we started (and its children), then kill it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=15)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            family = socket.AF_INET if size == 4 else socket.AF_INET6
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


# ---- nginx ----

def ssha_password(password: str, salt: bytes = b"vlassist") -> str:
    """An nginx auth_basic_user_file password in {SSHA} form (no htpasswd tool needed)."""
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 made with openssl."""
    crt, key = folder / "vlassist.crt", folder / "vlassist.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(crt)], check=True, capture_output=True)
    return crt, key


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"deploy/nginx.conf should contain {old!r} exactly once, found {count}")
    return text.replace(old, new)


def render_nginx_site(https_port: int, http_port: int, app_port: int, folder: Path,
                      users: dict[str, str]) -> Path:
    """deploy/nginx.conf with loopback ports, a test certificate and a password file; everything else as shipped."""
    crt, key = self_signed_cert(folder)
    htpasswd = folder / "htpasswd"
    htpasswd.write_text("".join(f"{u}:{ssha_password(p)}\n" for u, p in users.items()))
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    if "127.0.0.1:8501" not in site:
        raise AssertionError("deploy/nginx.conf does not point at the app on 127.0.0.1:8501")
    site = site.replace("127.0.0.1:8501", f"127.0.0.1:{app_port}")
    site = _replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = _replace_once(site, "listen [::]:443 ssl;\n", "")
    site = _replace_once(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = _replace_once(site, "listen [::]:80;\n", "")
    site = _replace_once(site, "ssl_certificate     /etc/nginx/tls/vlassist.crt;", f"ssl_certificate {crt};")
    site = _replace_once(site, "ssl_certificate_key /etc/nginx/tls/vlassist.key;", f"ssl_certificate_key {key};")
    site = _replace_once(site, "auth_basic_user_file /etc/nginx/vlassist.htpasswd;",
                         f"auth_basic_user_file {htpasswd};")
    path = folder / "vlassist.conf"
    path.write_text(site)
    return path


def nginx_main_conf(site: Path, folder: Path) -> Path:
    """A minimal nginx.conf that includes the site the way Debian's conf.d does (http context)."""
    temp = folder / "temp"
    temp.mkdir(exist_ok=True)
    conf = folder / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the test's private temp folder
    conf.write_text(
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {folder / 'access.log'};\n"
        f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
        "  default_type application/octet-stream;\n"
        f"  include {site};\n"
        "}\n")
    return conf


def nginx_test_config(conf: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on a configuration."""
    return subprocess.run([nginx_binary(), "-t", "-p", str(conf.parent), "-c", str(conf)],
                          capture_output=True, text=True)


@contextmanager
def nginx(conf: Path, https_port: int):
    """Run nginx in the foreground on a configuration until the block ends."""
    log = conf.parent / "nginx.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(https_port, 30, proc, conf.parent / "error.log")
        yield proc
    finally:
        stop(proc)


# ---- the browser ----

def launch_chromium(playwright):
    """Debian's Chromium, headless, with its own background traffic switched off."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def same_origin(url: str, origin: str) -> bool:
    """Whether a request URL belongs to the page's origin (data: and blob: URLs are local by construction)."""
    if url.startswith(("data:", "blob:" + origin)):
        return True
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}" == origin


# The stats line under a finished answer: "first token … · N tokens · prompt P (V visual) · …".
ANSWER_DONE = re.compile(r"\d+ tokens · prompt \d+")


def browser_session(page, url: str, question: str, image: Path | None, timeout_ms: int = 180_000) -> dict:
    """Open the app, attach an image, ask, wait for the streamed answer to finish, reload and return what the
    page showed: the answer text, the sidebar text after the reload."""
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    box = page.get_by_test_id("stChatInputTextArea")
    box.wait_for(timeout=timeout_ms)
    if image is not None:
        page.locator("[data-testid='stChatInput'] input[type='file']").set_input_files(str(image))
        # The file goes to the attach area, which shows it with its sizes once the server has it.
        page.locator(".st-key-attach_area [data-testid='stCaptionContainer']", has_text=image.name) \
            .get_by_text("visual tokens").wait_for(timeout=60_000)
    box.fill(question)
    # Send with the button once it is enabled (it is not while an attachment is still uploading).
    submit = page.get_by_test_id("stChatInputSubmitButton")
    deadline = time.monotonic() + 60
    while not submit.is_enabled():
        if time.monotonic() > deadline:
            raise AssertionError("the chat input's send button never became enabled")
        page.wait_for_timeout(200)
    submit.click()
    page.get_by_test_id("stChatMessage").first.wait_for(timeout=timeout_ms)
    # The answer is complete when its stats line ("… N tokens …") is drawn after the rerun.
    done = page.get_by_test_id("stChatMessage").filter(has_text=ANSWER_DONE)
    try:
        done.first.wait_for(timeout=timeout_ms)
    except Exception as exc:
        raise AssertionError(f"no finished answer on the page; it shows:\n{page.inner_text('body')[:3000]}") from exc
    answer = done.last.inner_text()
    page.reload(wait_until="domcontentloaded")
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("button").first.wait_for(timeout=timeout_ms)
    page.wait_for_timeout(500)
    return {"answer": answer, "sidebar": sidebar.inner_text()}


def record_page(page) -> dict:
    """Collect every request URL, failed request and console message of a page as it happens."""
    log = {"requests": [], "failed": [], "console": []}
    page.on("request", lambda r: log["requests"].append(r.url))
    page.on("requestfailed", lambda r: log["failed"].append(f"{r.url} {r.failure}"))
    page.on("console", lambda m: log["console"].append(f"{m.type}: {m.text}"))
    page.on("websocket", lambda ws: log["requests"].append(ws.url))
    return log


def offending_events(audit_log: Path) -> list[dict]:
    """Network events from the audit log (deploy_audit/sitecustomize.py) that leave the loopback interface."""
    if not audit_log.exists():
        return []
    bad = []
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        if not is_loopback_target(event.get("host")):
            bad.append(event)
    return bad


def is_loopback_target(host) -> bool:
    """Whether a connect/lookup target stays on this machine (loopback address, localhost or a unix socket)."""
    if host is None:
        return True  # unix socket path or socketpair
    host = str(host).strip("[]").lower()
    return host in ("localhost", "::1", "") or bool(re.fullmatch(r"127(\.\d{1,3}){3}", host))
