"""The model loads with the server and /_vlassist/ready says how far it is: unit checks on the slot's states and
the real server (Streamlit process on loopback, Debian's Chromium) ready before any page is visited."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import test_browser
from conftest import ROOT
from test_browser import TEXTAREA, serve, stop

from vlassist.config import load_settings
from vlassist.service.models import ModelSlot
from vlassist.ui.readiness import readiness

LOADING = re.compile(r"loading \((start|read|weights|device|warmup|ready), \d{1,3} %\)")


def _slot(tiny_qwen25, loader) -> ModelSlot:
    settings = load_settings({"VLASSIST_MODEL_DIR": str(tiny_qwen25), "VLASSIST_DEVICE": "cpu"})
    return ModelSlot(settings, loader=loader, admission=lambda answerer, settings: [])


def test_readiness_says_loading_with_stage_and_percent_then_ready(engine25, tiny_qwen25):
    """While the load runs the endpoint's text is "loading (stage, NN %)" (503); once loaded, "ready" (200)."""
    release = threading.Event()

    def loader(settings, progress):
        progress("weights", 0.4, "Reading weights")
        release.wait(60)
        return engine25

    slot = _slot(tiny_qwen25, loader)
    assert readiness(slot)[0] == 503
    slot.start_load(by="test")
    deadline = time.monotonic() + 60
    while slot.state.stage != "weights" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert readiness(slot) == (503, "loading (weights, 40 %)")
    release.set()
    slot.wait(60)
    assert readiness(slot) == (200, "ready")


def test_readiness_names_a_failed_load(tiny_qwen25):
    """A load that failed is "failed: <why>" (503), never ready."""
    def loader(settings, progress):
        raise OSError("disk unplugged")

    slot = _slot(tiny_qwen25, loader)
    slot.start_load()
    slot.wait(60)
    assert readiness(slot) == (503, "failed: disk unplugged")


def _ready_text(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/_vlassist/ready", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@test_browser.pytestmark[0]
@test_browser.pytestmark[1]
def test_server_is_ready_before_any_visit_and_the_page_never_waits(browser, tiny_qwen25, tmp_path):
    """The model loads at server start with no page open; readiness goes loading → ready; the start check
    (healthcheck.py --ready) passes; the first page then opens straight to the chat box."""
    proc, url, log = serve(tiny_qwen25, tmp_path)
    try:
        said = []
        deadline = time.monotonic() + 300
        while True:
            status, text = _ready_text(url)
            said.append(text)
            if status == 200:
                break
            assert status == 503 and LOADING.fullmatch(text), text
            assert time.monotonic() < deadline, said[-1]
            time.sleep(0.2)
        assert said[-1] == "ready"
        port = url.rsplit(":", 1)[1]
        check = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"), "--port", port, "--ready",
                                "--wait", "5"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        context = browser.new_context()
        tab = context.new_page()
        tab.set_default_timeout(120_000)
        tab.goto(url)
        tab.wait_for_selector(TEXTAREA)
        assert tab.get_by_text("Loading model").count() == 0
        context.close()
    finally:
        stop(proc, log)


@test_browser.pytestmark[0]
def test_start_check_fails_while_nothing_is_ready():
    """healthcheck.py --ready exits 1 naming why when no server answers the readiness endpoint."""
    port = test_browser.free_port()
    check = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"), "--port", str(port), "--ready"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "not ready" in check.stderr
