"""Shared fixtures: tiny real checkpoints built once per session, loaded engines, image bytes."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _make_tiny_model():
    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "scripts" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_qwen25(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2.5-VL checkpoint folder."""
    return _make_tiny_model().build(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen3-VL checkpoint folder."""
    return _make_tiny_model().build(tmp_path_factory.mktemp("tiny") / "qwen3_vl", "qwen3_vl")


def _engine(folder: Path):
    from vlassist.config import load_settings
    from vlassist.engine import load_engine

    return load_engine(load_settings({"VLASSIST_MODEL_DIR": str(folder), "VLASSIST_DEVICE": "cpu",
                                      "VLASSIST_STREAM_TIMEOUT_S": "60"}))


@pytest.fixture(scope="session")
def engine25(tiny_qwen25):
    """An engine on the tiny Qwen2.5-VL checkpoint."""
    return _engine(tiny_qwen25)


@pytest.fixture(scope="session")
def engine3(tiny_qwen3):
    """An engine on the tiny Qwen3-VL checkpoint."""
    return _engine(tiny_qwen3)


@pytest.fixture(params=["qwen2_5_vl", "qwen3_vl"])
def engine(request):
    """Each tiny engine in turn."""
    return request.getfixturevalue({"qwen2_5_vl": "engine25", "qwen3_vl": "engine3"}[request.param])


def image_bytes(size=(64, 48), color=(200, 30, 30), fmt="PNG", mode="RGB", **save) -> bytes:
    """Encode a solid-colour image in memory."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


@pytest.fixture
def png_file(tmp_path) -> Path:
    """A small PNG on disk."""
    path = tmp_path / "screen.png"
    path.write_bytes(image_bytes((96, 64)))
    return path


def pytest_configure(config):
    """Register the suite's own markers."""
    config.addinivalue_line("markers", "wheelhouse: the air-gapped install proof (scripts/test.sh runs it; heavy)")


def use_app_env(monkeypatch, data_dir: Path, model_dir: Path) -> Path:
    """Point the app at a tiny checkpoint on the CPU and a fresh data folder; return the data folder."""
    monkeypatch.setenv("VLASSIST_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("VLASSIST_DEVICE", "cpu")
    monkeypatch.setenv("VLASSIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("VLASSIST_STREAM_TIMEOUT_S", "60")
    monkeypatch.delenv("VLASSIST_USER_HEADER", raising=False)
    return data_dir


def stored(data_dir: Path, owner: str = "local") -> list:
    """Every conversation of one owner as the app stored it, read through a fresh connection."""
    from vlassist.store.history import History

    history = History.open(data_dir)
    store = history.for_owner(owner)
    conversations = [store.get_conversation(c.id) for c in store.list_conversations()]
    history.close()
    return conversations


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def static_engine(request):
    """A tiny engine decoding through preallocated (static) buffers on the CPU: the CUDA path without graphs."""
    from vlassist.config import load_settings
    from vlassist.engine import load_engine

    folder = request.getfixturevalue({"qwen2_5_vl": "tiny_qwen25", "qwen3_vl": "tiny_qwen3"}[request.param])
    return load_engine(load_settings({"VLASSIST_MODEL_DIR": str(folder), "VLASSIST_DEVICE": "cpu",
                                      "VLASSIST_COMPILE": "static", "VLASSIST_DECODE_CONTEXT": "256"}))


def start_app():
    """Run qwen_vl_app.py once under Streamlit's AppTest and check it raised nothing."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "qwen_vl_app.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    return at


def running_answers(data_dir: Path) -> int:
    """How many stored answers (any owner) the answer service is still writing."""
    import sqlite3

    from vlassist.store.history import DB_NAME

    with sqlite3.connect(data_dir / DB_NAME) as db:
        return db.execute("SELECT count(*) FROM messages WHERE status = 'running'").fetchone()[0]


def finish_answers(at, timeout: float = 120):
    """Wait until the answer service has written every answer, then run the page again to show them stored."""
    import os
    import time

    from vlassist.store.history import DB_NAME

    data_dir = Path(os.environ["VLASSIST_DATA_DIR"])
    if not (data_dir / DB_NAME).exists() or not running_answers(data_dir):
        return at  # nothing was queued (a refusal): keep the page as the send left it
    deadline = time.monotonic() + timeout
    while running_answers(data_dir):
        assert time.monotonic() < deadline, "an answer is still running"
        time.sleep(0.05)
    at.run()
    assert not at.exception, at.exception
    return at


def ask_app(at, question: str, *files: tuple[str, bytes, str], length: int = 128):
    """Send a question (with attached files) under an answer-length limit and wait until its answer is stored."""
    at.select_slider(key="opt_max_new_tokens").set_value(length)
    box = at.chat_input(key="chat_input").set_value(question)
    for name, data, mime in files:
        box.upload(name, data, mime)
    at.run()
    assert not at.exception, at.exception
    return finish_answers(at)


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright, one per test module; skipped where it is not installed."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from deploy_support import CHROMIUM, launch_chromium

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)")
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def shown_verbatim(block, css_class: str) -> list[str]:
    """The texts a page or block shows verbatim as `css_class` elements ("vl-title", "vl-question"), unescaped."""
    import html
    import re

    found = []
    for element in block.get("html"):
        match = re.fullmatch(rf'<(\w+) class="{css_class}"[^>]*>(.*)</\1>', element.value, re.S)
        if match:
            found.append(html.unescape(match.group(2)))
    return found
