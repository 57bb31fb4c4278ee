"""A damaged, foreign or newer history file is never written: it opens read-only with a message naming the file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import image_bytes, start_app, use_app_env

from vlassist.errors import StorageError
from vlassist.images import load_image
from vlassist.store.history import DB_NAME, History, NewImage

PAGE = 4096  # SQLite's default page size, which vlassist keeps


def _filled(folder: Path, conversations: int = 12) -> Path:
    """A healthy history with a few conversations and images (several pages), closed; its file's path."""
    history = History.open(folder)
    store = history.for_owner("local")
    for i in range(conversations):
        cid = store.create_conversation(f"Receipt {i}")
        data = image_bytes((64 + i, 48), (i * 20 % 255, 30, 30))
        store.add_user_message(cid, "What is the total? " * 50, [NewImage(data, load_image(data), f"r{i}.png")])
        store.add_assistant_message(cid, f"{i}.50 " * 100, "complete")
    history.close()
    return folder / DB_NAME


def _truncate(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)


def _flip(path: Path) -> None:
    with path.open("r+b") as file:  # the b-tree page header of page 2: its type, cell count and pointers
        file.seek(PAGE)
        head = file.read(12)
        file.seek(PAGE)
        file.write(bytes(b ^ 0xFF for b in head))


def _zero_page(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(2 * PAGE)
        file.write(b"\0" * PAGE)


def _garbage_wal(path: Path) -> None:
    path.with_name(path.name + "-wal").write_bytes(os.urandom(8192))


def _newer(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()


def _foreign(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('not a history')")
    conn.close()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGES = {"truncated": (_truncate, "damaged"), "flipped bytes": (_flip, "damaged"),
           "zeroed page": (_zero_page, "damaged"), "garbage -wal": (_garbage_wal, "write-ahead log"),
           "another app's file": (_foreign, "not a vlassist history"), "newer user_version": (_newer, "newer"),
           "0-byte file": (_empty, "0 bytes")}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_or_foreign_history_opens_read_only_and_is_never_written(tmp_path, damage):
    """Each damage opens read-only with a message naming the file and the way out; no byte of it changes."""
    spoil, words = DAMAGES[damage]
    path = _filled(tmp_path)
    spoil(path)
    before = _digest(tmp_path)
    history = History.open(tmp_path)
    assert history.read_only
    assert str(path) in history.read_only_reason and words in history.read_only_reason
    assert "nothing will be written" in history.read_only_reason
    store = history.for_owner("local")
    with pytest.raises(StorageError):
        store.create_conversation("new")
    history.close()
    after = _digest(tmp_path)
    assert {name: after[name] for name in before if not name.endswith("-shm")} == \
        {name: digest for name, digest in before.items() if not name.endswith("-shm")}
    # Reading may add SQLite's empty side files, nothing else.
    assert all(name.endswith(("-shm", "-wal")) and (tmp_path / name).stat().st_size in (0, 32768)
               for name in set(after) - set(before))


def test_a_newer_history_stays_readable(tmp_path):
    """A history from a newer vlassist is shown (read-only), not hidden."""
    _newer(_filled(tmp_path, conversations=2))
    history = History.open(tmp_path)
    assert history.read_only and len(history.for_owner("local").list_conversations()) == 2
    history.close()


def test_a_healthy_history_opens_for_writing(tmp_path):
    """The check passes a healthy history: it opens writable, with nothing to say."""
    _filled(tmp_path, conversations=1)
    history = History.open(tmp_path)
    assert not history.read_only and history.read_only_reason == ""
    history.close()


def test_a_deleted_conversations_id_is_never_reused(tmp_path):
    """Deleting the newest conversation and creating another gives a new id, not the deleted one's."""
    history = History.open(tmp_path)
    store = history.for_owner("local")
    first = store.create_conversation("a")
    second = store.create_conversation("b")
    store.delete(second)
    assert store.create_conversation("c") > second > first
    history.close()


def test_an_upgraded_history_does_not_reuse_ids_either(tmp_path):
    """A history made before ids were kept unique is rebuilt once, keeping its messages, and no longer reuses ids."""
    path = _filled(tmp_path, conversations=2)
    with sqlite3.connect(path) as conn:  # as written before: no AUTOINCREMENT, schema 3
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'conversations'").fetchone()[0]
        conn.execute("PRAGMA legacy_alter_table=ON")  # the messages' foreign key keeps naming `conversations`
        conn.execute("ALTER TABLE conversations RENAME TO old_conversations")
        conn.execute(sql.replace(" AUTOINCREMENT", ""))
        conn.execute("INSERT INTO conversations SELECT * FROM old_conversations")
        conn.execute("DROP TABLE old_conversations")
        conn.execute("DELETE FROM migrations WHERE name LIKE '004%'")
        conn.execute("DELETE FROM sqlite_sequence")
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    history = History.open(tmp_path)
    store = history.for_owner("local")
    ids = sorted(c.id for c in store.list_conversations())
    assert all(len(store.get_conversation(i).messages) == 2 for i in ids)
    store.delete(ids[-1])
    assert store.create_conversation("new") > ids[-1]
    history.close()


def test_the_page_on_an_empty_history_file_says_so_and_names_the_file(tmp_path, tiny_qwen25, monkeypatch):
    """The page opens on a 0-byte history file read-only, with a warning naming the file and what to do."""
    folder = use_app_env(monkeypatch, tmp_path / "data", tiny_qwen25)
    folder.mkdir()
    (folder / DB_NAME).write_bytes(b"")
    at = start_app()
    warning = next(w.value for w in at.warning if "read-only" in w.value)
    assert str(folder.resolve() / DB_NAME) in warning and "delete" in warning
    assert (folder / DB_NAME).stat().st_size == 0
