"""SIGTERM while an answer streams: the page server and `vlassist serve` exit promptly and lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from deploy_support import free_port
from openai import OpenAI
from test_browser import CHROMIUM, ROOT, open_tab, stop
from test_browser_live import LONG, ask, conversation, set_length, start, wait_streaming

pytestmark = pytest.mark.enable_socket
EXIT_BOUND_S = 3  # the product's promise: a SIGTERM'd server is gone within this long, answer or not


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")
def test_sigterm_mid_answer_ends_the_page_server_and_stores_the_partial_answer(browser, tiny_qwen25, tmp_path):
    """SIGTERM while a page answer streams: the page server exits within 3 s, having stored the streamed part of
    the answer as a stopped partial answer (not left running for the next start to find)."""
    proc, url, log = start(tiny_qwen25, tmp_path)
    try:
        context, tab = open_tab(browser, url)
        set_length(tab, LONG)
        ask(tab, "Shut down while answering")
        wait_streaming(tab, 200)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the page server was still running {EXIT_BOUND_S} s after SIGTERM")
        context.close()
    finally:
        stop(proc, log)
    answer = conversation(tmp_path, "Shut down while answering").messages[-1]
    # "interrupted" with the stop recorded in its stats: the server stored it; an answer left running would be
    # marked interrupted at the next start with no stats at all.
    assert answer.status == "interrupted" and answer.stats is not None and answer.stats.stop_reason == "stopped"
    assert answer.text.strip()


def test_sigterm_mid_stream_ends_vlassist_serve(tiny_qwen25, tmp_path):
    """SIGTERM while an API answer streams: `vlassist serve` exits within 3 s and the client's stream ends with
    an error saying the answer was cancelled, not a hang."""
    port = free_port()
    env = {**os.environ, "VLASSIST_DEVICE": "cpu", "VLASSIST_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "vlassist", "serve", "--model", str(tiny_qwen25), "--port",
                             str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                model = client.models.list().data[0].id
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.3)
        chunks: list = []
        ended: list = []

        def read() -> None:
            try:
                stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                        stream=True, max_tokens=3000, extra_body={"min_tokens": 3000})
                chunks.extend(stream)
                ended.append(None)
            except Exception as exc:  # noqa: BLE001  the stream's end is what the test looks at
                ended.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while len(chunks) < 5 and not ended:
            time.sleep(0.05)
        assert not ended, ended
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"vlassist serve was still running {EXIT_BOUND_S} s after SIGTERM")
        reader.join(10)
        assert ended and "cancelled" in str(ended[0])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
