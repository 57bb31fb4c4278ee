"""A database written by the schema-version-1 code opens with today's History, upgraded with nothing lost."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from vlassist.conversation import Stats
from vlassist.images import Sizing
from vlassist.store.history import DB_NAME, MIGRATIONS, SCHEMA_VERSION, History, schema_version

V1_SQL = Path(__file__).parent / "data" / "history_v1.sql"
RED, GREEN, BLUE = ("34a1aa8684853ac67c2f37a0da37ce1dca1b760836351e66541bcdd99b831558",
                    "a8e32168c489b8cc43d1380ce9b2089a381f1ee219ba1ad7e479e4f304ef3566",
                    "79d3876cc31f23d3fe7758dd95dce334cb257236f39b4b4e1d19739eeee94917")


def version_1_database(folder: Path) -> Path:
    """Write the version-1 fixture (DDL and rows as the old code wrote them) to `folder`/history.sqlite3."""
    folder.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(folder / DB_NAME)
    connection.executescript(V1_SQL.read_text())
    connection.close()
    return folder


def old_bytes(sha256: str) -> bytes:
    with sqlite3.connect(":memory:") as connection:
        connection.executescript(V1_SQL.read_text())
        return connection.execute("SELECT data FROM images WHERE sha256 = ?", (sha256,)).fetchone()[0]


@pytest.fixture
def upgraded(tmp_path):
    """The version-1 database opened (and so upgraded) by today's History."""
    history = History.open(version_1_database(tmp_path / "old"))
    yield history
    history.close()


def shape(history: History) -> dict:
    """Each table's columns (name, nullable), indexes, primary key and foreign keys (with their ON DELETE)."""
    with history.engine.connect() as conn:
        inspector = inspect(conn)
        # PRAGMA, not the inspector, for foreign keys: it reads ON DELETE however the DDL spelled it.
        return {table: ([(c["name"], c["nullable"] and not c.get("primary_key")) for c in inspector.get_columns(table)],
                        sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
                        inspector.get_pk_constraint(table)["constrained_columns"],
                        sorted(tuple(row[2:7]) for row in conn.exec_driver_sql(f"PRAGMA foreign_key_list({table})")))
                for table in inspector.get_table_names()}


def test_upgrade_applies_the_later_migrations_and_advances_the_version(upgraded):
    """Opening a version-1 database runs every later migration once and records the latest version."""
    assert schema_version(upgraded.engine) == SCHEMA_VERSION > 1
    with upgraded.engine.connect() as conn:
        names = [row[0] for row in conn.execute(text("SELECT name FROM migrations ORDER BY name"))]
    assert names == [name for name, _ in MIGRATIONS]


def test_upgraded_database_has_the_shape_of_a_new_one(upgraded, tmp_path):
    """Upgraded and freshly created databases have the same tables, columns and indexes (one schema source)."""
    fresh = History.open(tmp_path / "new")
    assert shape(upgraded) == shape(fresh)
    fresh.close()


def test_every_message_and_stat_is_still_readable(upgraded):
    """Messages keep their order, text, status, preset and options; stats come back typed, model in its place."""
    conversation = upgraded.for_owner("ann").get_conversation(1)
    assert conversation.title == "Find the gauges" and conversation.updated_at == 1700000400.0
    assert [(m.id, m.role, m.status) for m in conversation.messages] == [
        (1, "user", "complete"), (2, "assistant", "complete"), (3, "user", "complete"),
        (4, "assistant", "interrupted"), (5, "user", "complete"), (6, "assistant", "error"),
        (7, "user", "complete"), (8, "assistant", "complete")]
    boxes, stopped, failed = (conversation.messages[i] for i in (1, 3, 5))
    assert boxes.text == '[{"bbox_2d": [1, 2, 20, 14], "label": "gauge"}]' and boxes.preset == "grounding"
    assert boxes.options["max_image_tokens"] == 1280 and boxes.options["seed"] is None
    assert boxes.stats == Stats(prompt_tokens=40, visual_tokens=4, new_tokens=17, ttft_s=0.25, total_s=1.5,
                                tokens_per_s=11.3, images=[Sizing((40, 30), (56, 28), 2),
                                                           Sizing((30, 40), (28, 56), 2)])
    assert (boxes.model_family, boxes.model) == ("qwen2_5_vl", "models/Qwen2.5-VL-7B-Instruct")
    # Written by older code with keys missing and one unknown: read with defaults, the unknown one ignored.
    assert stopped.stats.stop_reason == "stopped" and stopped.stats.new_tokens == 5 and stopped.stats.ttft_s == 0
    assert stopped.text == "The second gauge reads" and stopped.model_family == "qwen2_5_vl"
    assert stopped.model is None and stopped.options == {"max_new_tokens": 128}
    assert failed.text == "" and failed.stats.error == "CUDA out of memory" and failed.options == {}
    assert conversation.messages[2].stats is None and conversation.messages[2].options is None


def test_stats_json_is_kept_as_written(upgraded):
    """The upgrade copies the model out of the stats JSON but rewrites none of it (unknown keys survive)."""
    with upgraded.engine.connect() as conn:
        raw = json.loads(conn.execute(text("SELECT stats FROM messages WHERE id = 4")).scalar())
    assert raw["legacy_field"] == 1 and raw["model_family"] == "qwen2_5_vl"


def test_images_keep_their_bytes_and_get_the_sizes_their_answers_used(upgraded):
    """Every image is still attached and readable; each attachment now holds the size its first answer used."""
    ann = upgraded.for_owner("ann")
    messages = ann.get_conversation(1).messages
    panel, detail = messages[0].images
    [zoom] = messages[4].images
    assert [(r.name, r.sha256, r.size, r.format, r.nbytes) for r in (panel, detail, zoom)] == [
        ("panel.png", RED, (40, 30), "PNG", 101), ("detail.png", GREEN, (30, 40), "PNG", 100),
        ("zoom-gauge.png", BLUE, (20, 10), "PNG", 80)]
    # The stopped follow-up saw the first two at another size: they keep the size their boxes answer used.
    assert panel.sizing == Sizing((40, 30), (56, 28), 2) and detail.sizing == Sizing((30, 40), (28, 56), 2)
    # The zoom's own answer failed before sizing; the retry's answer, listing all three, sized it.
    assert zoom.sizing == Sizing((20, 10), (28, 28), 1)
    for sha in (RED, GREEN, BLUE):
        assert ann.image_data(sha) == old_bytes(sha) and ann.thumbnail(sha) == old_bytes(sha)
    [bobs] = upgraded.for_owner("bob").get_conversation(2).messages[0].images
    assert bobs.sha256 == RED and bobs.sizing == Sizing((40, 30), (32, 32), 1)


def test_upgraded_database_lists_searches_and_takes_new_messages(upgraded):
    """Listing, search and new writes work on the upgraded database, owners still apart."""
    ann = upgraded.for_owner("ann")
    assert [c.id for c in ann.list_conversations()] == [1]
    assert [c.id for c in ann.list_conversations("second gauge")] == [1]
    assert [c.id for c in upgraded.for_owner("bob").list_conversations()] == [2]
    question = ann.add_user_message(1, "One more")
    answer = ann.start_answer(1, preset="ocr")
    assert ann.update_answer(answer, "done", status="complete", stats=Stats(new_tokens=1))
    messages = ann.get_conversation(1).messages
    assert [m.id for m in messages[-2:]] == [question, answer] and question > 10
    assert messages[-1].text == "done" and messages[-1].stats.new_tokens == 1


def test_reopening_an_upgraded_database_changes_nothing(tmp_path):
    """A second open of an upgraded database applies no migration and reads the same conversations."""
    folder = version_1_database(tmp_path / "old")
    first = History.open(folder)
    before = first.for_owner("ann").get_conversation(1)
    first.close()
    second = History.open(folder)
    assert second.for_owner("ann").get_conversation(1) == before
    second.close()
