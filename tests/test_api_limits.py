"""`vlassist serve` under cheap attacks, as a real process under a memory and descriptor cap: images, stops, sockets."""

from __future__ import annotations

import base64
import io
import json
import socket

import openai
import pytest
from api_support import API_KEY, image_message, start_serve, stop_serve
from conftest import ROOT
from PIL import Image

pytestmark = pytest.mark.enable_socket

MEMORY_CAP = 4 * 1024**3  # address space of the serve process: a few hundred-MB decodes too many and it fails
FILE_CAP = 1024  # the usual descriptor limit


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """One serve process under prlimit (address space and descriptors), with small limits: (process, URL)."""
    proc, url = start_serve(tiny_qwen25, tmp_path_factory.mktemp("limits") / "serve.log",
                            prefix=("prlimit", f"--as={MEMORY_CAP}", f"--nofile={FILE_CAP}"),
                            VLASSIST_API_KEY=API_KEY, VLASSIST_HEADER_TIMEOUT_S="2", VLASSIST_MAX_BODY_MB="8",
                            VLASSIST_MAX_IMAGE_TOKENS="64")  # the model input stays small: answers are quick
    yield proc, url
    stop_serve(proc)


@pytest.fixture(scope="module")
def client(server):
    """The openai client pointed at the server."""
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def rss(proc) -> int:
    """Resident memory of a process, in bytes."""
    with open(f"/proc/{proc.pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def _url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def cheap_49mp() -> str:
    """A ~2 KB WebP of 16383×3000 px (49 MP, under the 50 MP cap) that decodes to ~147 MB, as a data: URL."""
    buf = io.BytesIO()
    Image.new("RGB", (16383, 3000), (250, 250, 250)).save(buf, "WEBP", lossless=True)
    return _url(buf.getvalue(), "image/webp")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _refused_while_sending(url: str, head: bytes, chunks) -> tuple[bytes, int]:
    """Send `head` then chunks until the server answers or closes; (its reply, bytes we managed to send)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection on us: what we want
            pass
        sock.settimeout(10)
        reply = b""
        try:
            while part := sock.recv(65536):
                reply += part
        except OSError:
            pass
    return reply, sent


def test_forty_cheap_49_megapixel_images_are_refused_before_decoding(server, client, cheap_49mp):
    """One small request with 40 cheap 49 MP images gets a 413 naming the limit, and the server's memory stays flat."""
    proc, _ = server
    before = rss(proc)
    content = [{"type": "image_url", "image_url": {"url": cheap_49mp}} for _ in range(40)]
    content.append({"type": "text", "text": "?"})
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="any", max_tokens=1, messages=[{"role": "user", "content": content}])
    assert caught.value.status_code == 413
    assert "MP" in caught.value.response.json()["error"]["message"]
    assert rss(proc) - before < 50 * 1024**2


def test_a_large_image_is_kept_only_at_its_model_input_size_and_reported_at_its_own(client):
    """A 4000×3000 image is answered; its stats give the original size (boxes map to it) and a small input size."""
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (20, 120, 220)).save(buf, "JPEG", quality=80)
    reply = client.chat.completions.create(model="any", max_tokens=1,
                                           messages=[image_message("what?", _url(buf.getvalue(), "image/jpeg"))])
    sizing = reply.model_extra["vlassist"]["stats"]["images"][0]
    assert sizing["original_size"] == [4000, 3000]
    assert sizing["input_size"][0] * sizing["input_size"][1] < 4000 * 3000 / 4


def test_a_hundred_answered_image_requests_give_their_memory_back(server, client):
    """After 100 answered requests with a cheap 2 MP image each, the server's RSS is within 10 % of its start."""
    proc, _ = server
    buf = io.BytesIO()
    # 6 MB decoded each: the 20 finished jobs a server keeps readable would hold 120 MB if they kept their pixels.
    Image.new("RGB", (2000, 1000), (240, 240, 240)).save(buf, "PNG")
    message = image_message("?", _url(buf.getvalue(), "image/png"))
    client.chat.completions.create(model="any", max_tokens=1, messages=[message])  # warm: first-use allocations
    start = rss(proc)
    for _ in range(100):
        client.chat.completions.create(model="any", max_tokens=1, messages=[message])
    assert rss(proc) <= start * 1.10


def test_an_over_long_stop_string_is_a_400_not_a_stall(client):
    """A 1 MB stop string is refused with a 400 naming the limit (it used to freeze every client for ~a minute)."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="any", max_tokens=4, stop=["ab" * 500_000],
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.json()["error"]["param"] == "stop[0]"


def test_a_seed_past_64_bits_is_a_400(client):
    """seed = 2^63 is a client error (400 naming seed), not a server error."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="any", max_tokens=1, seed=2**63,
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.json()["error"]["param"] == "seed"


def test_a_lone_surrogate_is_a_json_400(server):
    """A question holding an unpaired surrogate (valid JSON, invalid Unicode) gets an OpenAI-shaped 400."""
    body = b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}], "max_tokens": 1}'
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    reply, _ = _refused_while_sending(server[1], head + body, [])
    status, _, rest = reply.partition(b"\r\n")
    error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert b" 400 " in status and error["code"] == "invalid_encoding" and "surrogate" in error["message"]


def test_a_lower_case_bearer_scheme_is_accepted(client, server):
    """`Authorization: bearer KEY` is accepted: the scheme is case-insensitive."""
    lower = openai.OpenAI(base_url=f"{server[1]}/v1", api_key="unused", max_retries=0, timeout=60,
                          default_headers={"Authorization": f"bearer {API_KEY}"})
    assert lower.chat.completions.create(model="any", max_tokens=1,
                                         messages=[{"role": "user", "content": "hi"}]).choices


def test_a_100_mb_header_is_refused_early_without_memory_growth(server):
    """A 100 MB header gets a 431 after a few MB at most, and the server's memory does not grow."""
    proc, url = server
    before = rss(proc)
    chunk = b"a" * 65536
    reply, sent = _refused_while_sending(url, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ",
                                         (chunk for _ in range(100 * 16)))
    assert reply.startswith(b"HTTP/1.1 431") and b"header_too_large" in reply
    assert sent < 100 * 2**20 and rss(proc) - before < 30 * 1024**2


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_early_with_413(server, declared):
    """A 100 MB body (declared, or chunked without a length) gets an OpenAI-shaped 413 with no memory growth."""
    proc, url = server
    before = rss(proc)
    chunk = b"a" * 65536
    length = f"Content-Length: {100 * 2**20}" if declared else "Transfer-Encoding: chunked"
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\n{length}\r\n\r\n").encode()
    framed = chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk)
    reply, sent = _refused_while_sending(url, head, (framed for _ in range(100 * 16)))
    assert reply.startswith(b"HTTP/1.1 413") and b"request_too_large" in reply
    assert sent < 100 * 2**20 and rss(proc) - before < 30 * 1024**2


def test_eleven_hundred_idle_sockets_do_not_lock_out_a_client(server, client):
    """With 1,100 idle connections open (more than the 1,024 descriptors the server has), a client is answered."""
    idle = []
    try:
        for _ in range(1100):
            try:
                idle.append(socket.create_connection(("127.0.0.1", _port(server[1])), timeout=10))
            except OSError:  # the kernel's backlog is full: as many as it takes are held
                break
        assert len(idle) >= 1000
        reply = client.chat.completions.create(model="any", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices
    finally:
        for sock in idle:
            sock.close()


def test_the_trailing_slash_redirect_does_not_reflect_the_host_header(server):
    """GET /health/ with a forged Host is redirected to the path /health, not to http://that-host/health."""
    reply, _ = _refused_while_sending(server[1], b"GET /health/ HTTP/1.1\r\nHost: evil.example\r\n"
                                                 b"Connection: close\r\n\r\n", [])
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 30") and b"\r\nlocation: /health\r\n" in head + b"\r\n"
    assert b"evil" not in head


def test_the_service_unit_raises_the_descriptor_limit():
    """The systemd unit gives the server far more than the usual 1,024 descriptors."""
    unit = (ROOT / "deploy" / "vlassist.service").read_text()
    assert int(unit.split("LimitNOFILE=", 1)[1].split()[0]) >= 65536


@pytest.mark.parametrize("message", [
    "failed in /usr/lib/python3/dist-packages/xgrammar/compiler.py line 3",
    r"cannot open C:\Users\me\vlassist\engine\core.py",
])
def test_error_messages_for_clients_carry_no_server_paths(message):
    """A server-side failure's message reaches the client with its file paths replaced."""
    from vlassist.api.validate import public_message

    public = public_message(message)
    assert "<path>" in public and "compiler.py" not in public and "core.py" not in public
