"""Helpers for the API tests: a real `python -m vlassist serve` process on a free loopback port."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import ROOT, image_bytes

API_KEY = "test-key-123"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(checkpoint: Path, log_path: Path, prefix: tuple[str, ...] = (), **env_extra: str):
    """Start `python -m vlassist serve` on the tiny checkpoint; return (process, base URL) once /health answers.

    `prefix` runs it under another command, e.g. ("prlimit", "--as=...") for a memory cap.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update({"VLASSIST_MODEL_DIR": str(checkpoint), "VLASSIST_DEVICE": "cpu", "VLASSIST_STREAM_TIMEOUT_S": "60",
                **env_extra})
    log = open(log_path, "wb")
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "vlassist", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop_serve(proc)
                raise RuntimeError(log_path.read_text()[-3000:]) from None
            time.sleep(0.3)


def stop_serve(proc) -> None:
    """End a serve process started by start_serve."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.close()


def data_url(size=(64, 48), color=(200, 30, 30)) -> str:
    """A small PNG as a data: URL."""
    return "data:image/png;base64," + base64.b64encode(image_bytes(size, color)).decode()


def image_message(text: str, url: str | None = None, detail: str = "auto") -> dict:
    """A user message with one image part and one text part."""
    image = {"type": "image_url", "image_url": {"url": url or data_url(), "detail": detail}}
    return {"role": "user", "content": [image, {"type": "text", "text": text}]}
