"""History store: migrations, owner scoping, images stored once, deletes, search."""

from __future__ import annotations

import io

import pytest
from conftest import image_bytes
from PIL import Image
from sqlalchemy import text

from vlassist.conversation import GenerationOptions, Stats
from vlassist.images import Sizing, load_image
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
                                options={"max_new_tokens": 64}, stats=Stats(new_tokens=7, stop_reason="stopped"),
                                model_family="qwen3_vl", model="models/tiny")
    messages = store.get_conversation(conversation).messages
    assert [(m.role, m.text, m.status) for m in messages] == [
        ("user", "question", "complete"), ("assistant", "partial", "interrupted")]
    ref = messages[0].images[0]
    assert (ref.name, ref.size, ref.format, ref.sha256) == ("shot.png", (90, 40), "PNG", image.loaded.sha256)
    assert messages[1].preset == "ocr"
    assert messages[1].options == {"max_new_tokens": 64}
    assert messages[1].stats == Stats(new_tokens=7, stop_reason="stopped")
    assert (messages[1].model_family, messages[1].model) == ("qwen3_vl", "models/tiny")


def test_unknown_status_is_refused(history):
    """A finished answer must be complete, interrupted or error; an update may also say running."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    for status in ("pending", "running"):
        with pytest.raises(ValueError):
            store.add_assistant_message(conversation, "x", status)
    answer = store.start_answer(conversation)
    with pytest.raises(ValueError):
        store.update_answer(answer, "x", status="failed")


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


# ---- answers written while they stream ----

def test_started_answer_is_running_and_empty_with_its_preset_options_and_model(history):
    """start_answer stores an empty "running" answer after the question, with what it was asked under."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    store.add_user_message(conversation, "q")
    options = GenerationOptions(max_new_tokens=64)
    answer = store.start_answer(conversation, preset="ocr", options=options, model_family="qwen3_vl",
                                model="models/tiny")
    message = store.get_conversation(conversation).messages[-1]
    assert (message.id, message.role, message.text, message.status) == (answer, "assistant", "", "running")
    assert message.preset == "ocr" and message.options["max_new_tokens"] == 64 and message.stats is None
    assert message.model_family == "qwen3_vl" and message.model == "models/tiny"


def test_update_answer_stores_text_then_final_status_and_stats(history):
    """Updates store the text so far, leaving it running; the last one sets the status and the stats."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    answer = store.start_answer(conversation)
    assert store.update_answer(answer, "Hel") is True
    message = store.get_conversation(conversation).messages[-1]
    assert (message.text, message.status, message.stats) == ("Hel", "running", None)
    before = store.get_conversation(conversation).updated_at
    stats = Stats(new_tokens=2, ttft_s=0.1, stop_reason="eos")
    assert store.update_answer(answer, "Hello", status="complete", stats=stats) is True
    finished = store.get_conversation(conversation)
    assert (finished.messages[-1].text, finished.messages[-1].status) == ("Hello", "complete")
    assert finished.messages[-1].stats == stats and finished.updated_at >= before


def test_update_answer_touches_only_this_owners_answers(history):
    """Another owner's answer, a question, or a deleted answer is not updated (False, nothing changed)."""
    ann, bob = history.for_owner("ann"), history.for_owner("bob")
    conversation = ann.create_conversation("t")
    question = ann.add_user_message(conversation, "q")
    answer = ann.start_answer(conversation)
    assert bob.update_answer(answer, "hijack", status="complete") is False
    assert ann.update_answer(question, "changed") is False
    assert [m.text for m in ann.get_conversation(conversation).messages] == ["q", ""]
    ann.delete(conversation)
    assert ann.update_answer(answer, "late", status="complete") is False


@pytest.mark.parametrize("status", ["complete", "interrupted", "error"])
def test_update_answer_accepts_each_final_status(history, status):
    """An answer ends complete, interrupted or error."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    answer = store.start_answer(conversation)
    store.update_answer(answer, "x", status=status, stats=Stats(stop_reason="error", error="boom"))
    assert store.get_conversation(conversation).messages[-1].status == status


def test_running_answer_of_a_previous_process_is_interrupted_after_reopening(tmp_path):
    """A server that ended mid-answer leaves it running; the next start marks it interrupted, text kept."""
    first = History.open(tmp_path)
    store = first.for_owner("ann")
    conversation = store.create_conversation("t")
    store.add_user_message(conversation, "q")
    running = store.start_answer(conversation)
    store.update_answer(running, "half an ans")
    done = store.start_answer(conversation)
    store.update_answer(done, "whole", status="complete")
    first.close()  # the process ends without finishing the first answer

    second = History.open(tmp_path)
    assert second.mark_running_interrupted() == 1
    messages = {m.id: m for m in second.for_owner("ann").get_conversation(conversation).messages}
    assert (messages[running].status, messages[running].text) == ("interrupted", "half an ans")
    assert (messages[done].status, messages[done].text) == ("complete", "whole")
    assert second.mark_running_interrupted() == 0
    second.close()


# ---- the size each image was shown to the model at, stored with the image ----

def sizing(image: NewImage, input_size: tuple[int, int], tokens: int) -> Sizing:
    """The sizing an engine would report for `image` at `input_size`."""
    return Sizing(image.loaded.size, input_size, tokens)


def test_answer_stats_give_each_question_image_its_own_size(history):
    """The answer's stats list the conversation's images in order; each image row gets its own sizing."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    first, wide, tall = new_image((64, 48)), new_image((200, 50), (0, 0, 9)), new_image((50, 200), (0, 9, 0))
    store.add_user_message(conversation, "one", [first])
    answer = store.start_answer(conversation)
    store.update_answer(answer, "a", status="complete", stats=Stats(images=[sizing(first, (56, 56), 4)]))
    store.add_user_message(conversation, "two", [wide, tall])
    answer = store.start_answer(conversation)
    stats = Stats(images=[sizing(first, (56, 56), 4), sizing(wide, (224, 56), 16), sizing(tall, (56, 224), 16)])
    store.update_answer(answer, "b", status="complete", stats=stats)
    messages = store.get_conversation(conversation).messages
    assert [ref.sizing for ref in messages[0].images] == [sizing(first, (56, 56), 4)]
    assert [ref.sizing for ref in messages[2].images] == [sizing(wide, (224, 56), 16), sizing(tall, (56, 224), 16)]


def test_image_keeps_the_size_of_its_first_answer(history):
    """A later answer that saw an image at another size does not change the size its own answer used."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    image = new_image((64, 48))
    store.add_user_message(conversation, "q", [image])
    store.add_assistant_message(conversation, "a", "complete", stats=Stats(images=[sizing(image, (56, 56), 4)]))
    store.add_user_message(conversation, "follow-up")
    store.add_assistant_message(conversation, "b", "complete", stats=Stats(images=[sizing(image, (112, 84), 12)]))
    assert store.get_conversation(conversation).messages[0].images[0].sizing == sizing(image, (56, 56), 4)


def test_image_of_a_failed_answer_is_sized_by_the_next_one(history):
    """An answer that failed before sizing leaves its images unsized until a later answer lists them."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    image = new_image((64, 48))
    store.add_user_message(conversation, "q", [image])
    failed = store.start_answer(conversation)
    store.update_answer(failed, "", status="error", stats=Stats(stop_reason="error", error="boom"))
    assert store.get_conversation(conversation).messages[0].images[0].sizing is None
    store.add_user_message(conversation, "again")
    store.add_assistant_message(conversation, "ok", "complete", stats=Stats(images=[sizing(image, (56, 56), 4)]))
    assert store.get_conversation(conversation).messages[0].images[0].sizing == sizing(image, (56, 56), 4)


def test_sizes_are_matched_from_the_question_backwards(history):
    """If an earlier image was missing when the answer was made, the question's images still get theirs."""
    store = history.for_owner("ann")
    conversation = store.create_conversation("t")
    lost, mine = new_image((64, 48)), new_image((80, 40), (1, 1, 1))
    store.add_user_message(conversation, "first", [lost])
    store.add_user_message(conversation, "second", [mine])
    store.add_assistant_message(conversation, "a", "complete", stats=Stats(images=[sizing(mine, (84, 42), 6)]))
    first, second = store.get_conversation(conversation).messages[:2]
    assert first.images[0].sizing is None and second.images[0].sizing == sizing(mine, (84, 42), 6)


def test_stats_from_dict_tolerates_old_and_unknown_keys():
    """Stats read back from any version: missing keys default, unknown keys and bad image entries are skipped."""
    stats = Stats.from_dict({"new_tokens": 3, "model_family": "qwen2_5_vl", "future": [1],
                             "images": [{"original_size": [4, 3], "input_size": [28, 28], "visual_tokens": 1},
                                        {"original_size": [4], "input_size": [28, 28]}, "junk"]})
    assert stats == Stats(new_tokens=3, images=[Sizing((4, 3), (28, 28), 1)])
    assert Stats.from_dict(None) == Stats() == Stats.from_dict(["not", "a", "dict"])
    assert Stats.from_dict(stats.to_dict()) == stats
