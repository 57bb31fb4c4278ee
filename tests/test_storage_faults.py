"""Storage faults: a read-only or full data folder keeps history readable and writes raise StorageError."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import image_bytes

from vlassist.errors import StorageError
from vlassist.images import load_image
from vlassist.store.history import History, NewImage


def _mount(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (chmod does not stop root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def mounted(tmp_path):
    """A folder on its own small tmpfs (1 MiB), unmounted afterwards."""
    path = tmp_path / f"data-{uuid.uuid4().hex[:8]}"
    _mount(path, "size=1m,mode=0755")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> None:
    history = History.open(folder)
    store = history.for_owner("local")
    cid = store.create_conversation("Receipt")
    store.add_user_message(cid, "What is the total?", [NewImage(image_bytes(), load_image(image_bytes()), "r.png")])
    store.add_assistant_message(cid, "12.50", "complete")
    history.close()


def test_read_only_folder_opens_read_only_with_history(mounted):
    """A data folder remounted read-only opens with read_only set; history reads, writes raise StorageError."""
    _fill(mounted)
    subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
    history = History.open(mounted)
    assert history.read_only
    store = history.for_owner("local")
    [summary] = store.list_conversations()
    assert [m.text for m in store.get_conversation(summary.id).messages] == ["What is the total?", "12.50"]
    with pytest.raises(StorageError, match=rf"{mounted}.*read-only.*VLASSIST_DATA_DIR"):
        store.add_user_message(summary.id, "again?")
    with pytest.raises(StorageError):
        store.create_conversation("new")
    history.close()


def test_read_only_folder_without_a_database_gives_an_empty_history(mounted):
    """A read-only, empty data folder opens as an empty read-only history instead of failing."""
    subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
    history = History.open(mounted / "sub")  # cannot even be created
    assert history.read_only and history.for_owner("local").list_conversations() == []
    history.close()


def test_full_disk_write_raises_storage_error_and_reads_work(mounted):
    """On a full tmpfs a write raises StorageError saying the disk is full; stored history still reads."""
    _fill(mounted)
    history = History.open(mounted)
    store = history.for_owner("local")
    [summary] = store.list_conversations()
    with open(mounted / "filler", "wb") as filler:  # take every free byte
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    big = os.urandom(600_000)  # incompressible and larger than anything left
    with pytest.raises(StorageError, match=rf"{mounted}.*full disk.*free some space"):
        for _ in range(50):
            store.update_answer(store.get_conversation(summary.id).messages[-1].id, big.hex())
    assert store.get_conversation(summary.id).messages[0].text == "What is the total?"
    (mounted / "filler").unlink()
    cid = store.create_conversation("after space was freed")  # writes work again once space is back
    assert cid > summary.id
    history.close()


def test_unwritable_database_error_is_a_storage_error(tmp_path):
    """A database path that is a folder raises StorageError naming the folder, not a SQLAlchemy error."""
    (tmp_path / "history.sqlite3").mkdir()
    with pytest.raises(StorageError, match=str(tmp_path)):
        History.open(tmp_path)
