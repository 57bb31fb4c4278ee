"""Files waiting in the attach area stay with the conversation they were added in; pasted images get a name of
their own (the time they came), not the browser's "image.png"."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from conftest import ask_app, image_bytes, start_app, stored, use_app_env
from test_attach import attach_files, captions

from vlassist.ui.attach import pasted_name


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_qwen25):
    """The app on the tiny Qwen2.5-VL checkpoint with a fresh data folder."""
    return use_app_env(monkeypatch, tmp_path / "data", tiny_qwen25)


def _waiting(at, name: str) -> bool:
    return any(c.startswith(name) for c in captions(at))


def test_attached_files_stay_with_their_conversation(app_env):
    """A file left in the attach area of one conversation is not in a new one, and is back when it is reopened."""
    at = ask_app(start_app(), "first question")
    [conversation] = stored(app_env)
    at = attach_files(at, ("draft.png", image_bytes((90, 120)), "image/png"))
    assert _waiting(at, "draft.png")
    at.button(key="new_conversation").click().run()
    assert not _waiting(at, "draft.png")
    at = ask_app(at, "a question in the new conversation")
    new = [c for c in stored(app_env) if c.id != conversation.id][0]
    assert [m.images for m in new.messages if m.role == "user"] == [[]]  # the draft was not sent here
    at.button(key=f"open_{conversation.id}").click().run()
    assert _waiting(at, "draft.png")


def test_pasted_images_are_named_by_the_time_they_came():
    """The browser's paste name "image.png" becomes "Pasted <date> <time>.png"; real file names are kept."""
    assert pasted_name("image.png", datetime(2026, 12, 4, 23, 5, 9)) == "Pasted 2026-12-04 23.05.09.png"
    assert pasted_name("invoice.png") == "invoice.png"


def test_a_pasted_screenshot_is_stored_under_its_paste_time(app_env):
    """A screenshot pasted into the chat box (the browser calls it image.png) is stored as "Pasted …"."""
    ask_app(start_app(), "what is it?", ("image.png", image_bytes(), "image/png"))
    [conversation] = stored(app_env)
    [name] = [ref.name for ref in conversation.messages[0].images]
    assert re.fullmatch(r"Pasted \d{4}-\d\d-\d\d \d\d\.\d\d\.\d\d\.png", name), name
