"""Streamlit app flows (AppTest) on the tiny checkpoint, and how answers are recorded."""

from __future__ import annotations

import pytest
from conftest import ask_app, image_bytes, shown_verbatim, start_app, stored, use_app_env
from sqlalchemy import text

from vlassist.answers.prompts import preset_prompt
from vlassist.store.history import History

SHORT = 48  # answer length for tests: enough to stream several chunks, quick on a CPU


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_qwen25):
    """Environment for the app: the tiny checkpoint on CPU and a fresh data folder."""
    return use_app_env(monkeypatch, tmp_path / "data", tiny_qwen25)




def test_upload_and_ask_streams_an_answer_and_stores_both_turns(app_env):
    """An image plus a question gives a streamed answer; both turns, the image and the stats are stored."""
    at = ask_app(start_app(), "What is shown?", ("shot.png", image_bytes((120, 80)), "image/png"))
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    [conversation] = stored(app_env)
    user, answer = conversation.messages
    assert (user.role, user.text, [i.name for i in user.images]) == ("user", "What is shown?", ["shot.png"])
    assert answer.role == "assistant" and answer.status == "complete" and answer.text
    assert answer.model_family == "qwen2_5_vl" and answer.stats.new_tokens > 0
    assert answer.stats.images[0].original_size == (120, 80)
    assert user.images[0].sizing == answer.stats.images[0]
    assert answer.options["max_new_tokens"] == 128
    assert any("tokens/s" in c.value for c in at.caption)


def test_conversation_reopens_in_a_fresh_app_run(app_env):
    """After a fresh app start, the sidebar lists the conversation and opening it shows its messages."""
    ask_app(start_app(), "Remember me", ("a.png", image_bytes(), "image/png"))
    at = start_app()
    [conversation] = stored(app_env)
    assert at.session_state["conversation_id"] is None
    at.button(key=f"open_{conversation.id}").click().run()
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert shown_verbatim(at.chat_message[0], "vl-question") == ["Remember me"]
    assert len(at.chat_message[0].image) == 1


def test_follow_up_continues_the_same_conversation_with_its_images(app_env):
    """A second question goes to the same conversation and the model sees the first turn's image again."""
    at = ask_app(start_app(), "First", ("a.png", image_bytes((64, 64)), "image/png"))
    ask_app(at, "And now?")
    [conversation] = stored(app_env)
    assert [m.role for m in conversation.messages] == ["user", "assistant", "user", "assistant"]
    follow_up = conversation.messages[-1].stats
    assert len(follow_up.images) == 1 and follow_up.visual_tokens > 0


def test_text_only_question_is_answered(app_env):
    """A question without images is answered and stored."""
    ask_app(start_app(), "Just text")
    [conversation] = stored(app_env)
    assert conversation.messages[-1].role == "assistant" and conversation.messages[-1].stats.visual_tokens == 0


def test_bad_file_is_refused_with_a_message_and_nothing_stored(app_env):
    """A file that is not an image is named in an error, nothing is stored, and the question is put back."""
    at = ask_app(start_app(), "Keep my words", ("notes.png", b"not an image", "image/png"))
    assert any("notes.png" in e.value for e in at.error)
    assert stored(app_env) == []
    assert at.chat_input(key="chat_input").value == "Keep my words"


def test_preset_fills_the_chat_box_and_is_stored_with_the_answer(app_env):
    """Clicking a preset puts its prompt in the chat box; the answer records which preset was used."""
    at = start_app()
    at.button(key="preset_ocr").click().run()
    assert at.chat_input(key="chat_input").value == preset_prompt("ocr")
    ask_app(at, preset_prompt("ocr"), ("a.png", image_bytes(), "image/png"))
    assert stored(app_env)[0].messages[-1].preset == "ocr"


def test_delete_from_sidebar_removes_rows_and_orphan_images(app_env):
    """Deleting the open conversation removes its messages and its images from the database."""
    at = ask_app(start_app(), "Delete me", ("a.png", image_bytes(), "image/png"))
    [conversation] = stored(app_env)
    at.checkbox(key=f"confirm_delete_{conversation.id}").check().run()
    at.button(key=f"delete_{conversation.id}").click().run()
    assert stored(app_env) == []
    history = History.open(app_env)
    with history.engine.connect() as conn:
        assert [conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("messages", "images", "message_images")] == [0, 0, 0]
    history.close()
    assert at.session_state["conversation_id"] is None


def test_rename_from_sidebar(app_env):
    """Editing the title in the sidebar renames the conversation."""
    at = ask_app(start_app(), "Old title")
    [conversation] = stored(app_env)
    at.text_input(key=f"rename_{conversation.id}").input("Better title").run()
    assert stored(app_env)[0].title == "Better title"


def test_sidebar_shows_only_this_owners_conversations(app_env):
    """Conversations of another owner in the same database never appear."""
    history = History.open(app_env)
    other = history.for_owner("someone-else").create_conversation("not yours")
    mine = history.for_owner("local").create_conversation("yours")
    history.close()
    at = start_app()
    keys = {b.key for b in at.sidebar.button}
    assert f"open_{mine}" in keys and f"open_{other}" not in keys


def test_header_mode_without_header_is_refused(app_env, monkeypatch):
    """With VLASSIST_USER_HEADER set and no such header, the page refuses and shows no history."""
    history = History.open(app_env)
    history.for_owner("local").create_conversation("local history")
    history.close()
    monkeypatch.setenv("VLASSIST_USER_HEADER", "X-Remote-User")
    at = start_app()
    assert any("X-Remote-User" in e.value for e in at.error)
    assert len(at.chat_input) == 0 and len(at.sidebar.button) == 0


def test_missing_model_shows_how_to_get_one(app_env, monkeypatch, tmp_path):
    """Without a model the page explains how to fetch one instead of crashing."""
    monkeypatch.setenv("VLASSIST_MODEL_DIR", str(tmp_path / "no-model-here"))
    at = start_app()
    assert any("fetch_model.py" in i.value for i in at.info)
    assert len(at.chat_input) == 0
