"""The page on a read-only or full data folder: it opens, shows history, says what is wrong, keeps the question."""

from __future__ import annotations

import subprocess

import pytest
from conftest import image_bytes, start_app, stored, use_app_env
from test_storage_faults import _fill, mounted  # noqa: F401  (the small-tmpfs fixture)


@pytest.fixture
def app_on(mounted, tiny_qwen25, monkeypatch):  # noqa: F811
    """The app pointed at a small tmpfs data folder that already holds one conversation."""
    _fill(mounted)
    return use_app_env(monkeypatch, mounted, tiny_qwen25)


def send(at, question: str):
    """Type a question with an image into the chat box and send it."""
    at.chat_input(key="chat_input").set_value(question).upload("shot.png", image_bytes(), "image/png")
    at.run()
    assert not at.exception, at.exception
    return at


def test_read_only_folder_page_opens_with_history_and_a_notice(app_on):
    """On a read-only data folder the page opens, says history is read-only, and lists the stored conversation."""
    subprocess.run(["mount", "-o", "remount,ro", str(app_on)], check=True)
    at = start_app()
    assert any("read-only" in w.value for w in at.warning)
    assert any("Receipt" in b.label for b in at.sidebar.button)


def test_read_only_folder_keeps_the_question_for_a_retry(app_on):
    """Sending on a read-only folder gives a storage message and puts the question back in the box."""
    subprocess.run(["mount", "-o", "remount,ro", str(app_on)], check=True)
    at = send(start_app(), "Keep this question")
    assert any("Not sent" in e.value and str(app_on) in e.value for e in at.error)
    assert at.chat_input(key="chat_input").value == "Keep this question"
    assert any("shot.png" in c.value for c in at.caption)  # the image is held for the next send


def test_full_disk_keeps_the_question_and_stores_nothing_half(app_on):
    """On a full disk the question is refused with a message, kept for retry, and no half question is stored."""
    with open(app_on / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    at = send(start_app(), "Disk is full")
    assert any("Not sent" in e.value for e in at.error)
    assert at.chat_input(key="chat_input").value == "Disk is full"
    (app_on / "filler").unlink()
    [conversation] = stored(app_on)
    assert [m.role for m in conversation.messages] == ["user", "assistant"]
