"""History store: migrations, owner scoping, images stored once, deletes, search."""

from __future__ import annotations

import io

import pytest
from conftest import image_bytes
from PIL import Image
from sqlalchemy import text

from vlassist.images import load_image
from vlassist.store.history import (
    MIGRATIONS,
    SCHEMA_VERSION,
    THUMBNAIL_SIDE,
    History,
    NewImage,
    make_title,
    migrate,
    schema_version,
)


def new_image(size=(64, 48), color=(200, 30, 30), name="shot.png") -> NewImage:
    data = image_bytes(size, color)
    return NewImage(data, load_image(data, name), name)


def count(history: History, table: str) -> int:
    with history.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.fixture
def history(tmp_path):
    """A fresh history database."""
    h = History.open(tmp_path / "data")
    yield h
    h.close()


def test_new_database_is_at_the_latest_schema_version(history):
    """Opening a new database applies every migration and records the schema version."""
    assert schema_version(history.engine) == SCHEMA_VERSION == len(MIGRATIONS)
    with history.engine.connect() as conn:
        names = [row[0] for row in conn.execute(text("SELECT name FROM migrations ORDER BY name"))]
    assert names == [name for name, _ in MIGRATIONS]


def test_reopening_applies_no_migration_twice_and_keeps_data(tmp_path):
    """A second open of the same database runs no migration again and finds earlier conversations."""
    first = History.open(tmp_path)
    conversation = first.for_owner("ann").create_conversation("kept")
    first.close()
    second = History.open(tmp_path)
    assert migrate(second.engine) == []
    assert [c.id for c in second.for_owner("ann").list_conversations()] == [conversation]
    second.close()


def test_database_uses_wal_and_foreign_keys(history):
    """Connections run in WAL mode with foreign keys enforced."""
    with history.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_same_image_in_two_messages_is_stored_once(history):
    """Images are keyed by the sha256 of their bytes, so re-attaching one adds no second copy."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    image = new_image()
    store.add_user_message(conversation, "first", [image])
    store.add_user_message(conversation, "again", [image, new_image(color=(0, 0, 255), name="b.png")])
    assert count(history, "images") == 2
    assert count(history, "message_images") == 3
    assert store.image_data(image.loaded.sha256) == image.data


def test_thumbnail_is_small_jpeg(history):
    """Each stored image gets a JPEG thumbnail no larger than the thumbnail side."""
    store = history.for_owner("ann")
    image = new_image(size=(1200, 300))
    store.add_user_message(store.create_conversation("t"), "q", [image])
    thumb = Image.open(io.BytesIO(store.thumbnail(image.loaded.sha256)))
    assert thumb.format == "JPEG" and max(thumb.size) == THUMBNAIL_SIDE


def test_messages_come_back_in_order_with_images_and_answer_details(history):
    """A conversation returns its messages in order with image refs and the answer's preset, options, stats."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    image = new_image(size=(90, 40))
    store.add_user_message(conversation, "question", [image])
    store.add_assistant_message(conversation, "partial", "interrupted", preset="ocr",
                                options={"max_new_tokens": 64}, stats={"model_family": "qwen3_vl"})
    messages = store.get_conversation(conversation).messages
    assert [(m.role, m.text, m.status) for m in messages] == [
        ("user", "question", "complete"), ("assistant", "partial", "interrupted")]
    ref = messages[0].images[0]
    assert (ref.name, ref.size, ref.format, ref.sha256) == ("shot.png", (90, 40), "PNG", image.loaded.sha256)
    assert messages[1].preset == "ocr"
    assert messages[1].options == {"max_new_tokens": 64}
    assert messages[1].stats == {"model_family": "qwen3_vl"}


def test_unknown_status_is_refused(history):
    """An assistant message must be complete, interrupted or error."""
    store = history.for_owner("ann")
    with pytest.raises(ValueError):
        store.add_assistant_message(store.create_conversation("t"), "x", "pending")


def test_other_owner_sees_nothing(history):
    """Every read and write is scoped: another owner cannot list, open, rename, delete or add to it."""
    ann, bob = history.for_owner("ann"), history.for_owner("bob")
    conversation = ann.create_conversation("ann's")
    image = new_image()
    ann.add_user_message(conversation, "secret text", [image])
    assert bob.list_conversations() == [] and bob.list_conversations("secret") == []
    assert bob.get_conversation(conversation) is None
    assert bob.image_data(image.loaded.sha256) is None and bob.thumbnail(image.loaded.sha256) is None
    assert bob.rename(conversation, "mine") is False
    assert bob.delete(conversation) is False
    with pytest.raises(LookupError):
        bob.add_user_message(conversation, "intrude")
    assert ann.get_conversation(conversation).title == "ann's"
    assert len(ann.get_conversation(conversation).messages) == 1


def test_list_is_newest_first_by_last_activity(history):
    """Conversations are listed by their last message, newest first."""
    store = history.for_owner("ann")
    older = store.create_conversation("older")
    newer = store.create_conversation("newer")
    store.add_user_message(older, "bump")
    assert [c.id for c in store.list_conversations()] == [older, newer]


def test_search_matches_title_or_message_text(history):
    """Search finds conversations by title or by any message's text, case-insensitively."""
    store = history.for_owner("ann")
    by_title = store.create_conversation("Invoice March")
    by_text = store.create_conversation("other")
    store.add_assistant_message(by_text, "the INVOICE total is 12", "complete")
    store.create_conversation("unrelated")
    assert {c.id for c in store.list_conversations("invoice")} == {by_title, by_text}


def test_search_treats_wildcards_literally(history):
    """A % or _ typed in the search box matches only itself."""
    store = history.for_owner("ann")
    store.create_conversation("plain")
    percent = store.create_conversation("50% off")
    assert [c.id for c in store.list_conversations("%")] == [percent]
    assert store.list_conversations("_") == []


def test_rename_changes_title(history):
    """Renaming stores the new title with whitespace collapsed; an empty title is refused."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("old")
    assert store.rename(conversation, "  new   name ") is True
    assert store.get_conversation(conversation).title == "new name"
    with pytest.raises(ValueError):
        store.rename(conversation, "   ")


def test_delete_removes_messages_and_orphan_images_only(history):
    """Deleting a conversation removes its messages and the images no other conversation uses."""
    store = history.for_owner("ann")
    shared, own = new_image(), new_image(color=(1, 2, 3), name="own.png")
    doomed = store.create_conversation("doomed")
    kept = store.create_conversation("kept")
    store.add_user_message(doomed, "q", [shared, own])
    store.add_assistant_message(doomed, "a", "complete")
    store.add_user_message(kept, "q", [shared])
    assert store.delete(doomed) is True
    assert store.get_conversation(doomed) is None
    assert count(history, "messages") == 1 and count(history, "message_images") == 1
    assert store.image_data(shared.loaded.sha256) == shared.data
    with history.engine.connect() as conn:
        shas = {row[0] for row in conn.execute(text("SELECT sha256 FROM images"))}
    assert shas == {shared.loaded.sha256}


def test_title_is_first_line_shortened():
    """A title is the question's first non-empty line, cut with an ellipsis when long."""
    assert make_title("\n  Read this\nmore") == "Read this"
    assert make_title("") == "Image question"
    long = make_title("x" * 500)
    assert len(long) == 80 and long.endswith("…")
