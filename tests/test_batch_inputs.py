"""Batch inputs that are not plain files: FIFOs, devices, link loops, links out, unreadable folders, a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, image_bytes
from test_storage_faults import _mount

from vlassist.batch.inputs import _hash, expand, plan_items
from vlassist.batch.rows import RowLog
from vlassist.errors import StorageError


def _plan(inputs: list[str]) -> dict[str, str | None]:
    """expand + plan_items on a worker thread (a FIFO read would block forever): {file name: error or None}."""
    result: dict = {}

    def work():
        refused: dict = {}
        result["items"] = plan_items(expand(inputs, refused), None, refused)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "planning the inputs blocked"
    return {Path(item.source).name: item.error for item in result["items"]}


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """A folder with one good image, a FIFO and a link to /dev/zero named like images, and a link loop."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes(image_bytes())
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "self.png").symlink_to("self.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..")
    return folder


def test_a_folder_of_odd_files_gives_a_row_for_each_and_reads_only_the_image(odd_folder):
    """Walking a folder: the image is planned; the FIFO, the /dev/zero link and the loop are error rows, unread."""
    rows = _plan([str(odd_folder)])
    assert rows["good.png"] is None
    assert "FIFO" in rows["pipe.png"]
    assert "out of" in rows["zero.png"] or "device" in rows["zero.png"]
    assert "loop" in rows["self.png"]
    assert "loop" in rows["up"]


def test_a_glob_over_links_and_loops_is_reported_not_followed(odd_folder):
    """A `*.png` glob matching a link to /dev/zero, a FIFO and a self-link gives error rows, without crashing."""
    rows = _plan([str(odd_folder / "*.png")])
    assert rows["good.png"] is None and "device" in rows["zero.png"] and "FIFO" in rows["pipe.png"]
    assert "loop" in rows["self.png"]


def test_a_recursive_glob_through_a_link_loop_ends_with_one_row_per_file(odd_folder):
    """`**` through a link back to the parent lists each image once."""
    rows = _plan([str(odd_folder / "**" / "good.png")])
    assert list(rows) == ["good.png"]


def test_a_recursive_glob_of_everything_through_a_link_loop_gives_each_entry_once(odd_folder):
    """`**/*` over a folder holding a link back to its parent: one row per entry (the loop's link reported once),
    not the same entries again at every depth the link allows."""
    refused: dict = {}
    sources = [Path(path).relative_to(odd_folder).as_posix() for path in expand([str(odd_folder / "**" / "*")],
                                                                                  refused)]
    assert sorted(sources) == ["good.png", "pipe.png", "self.png", "sub/up", "zero.png"]


PLAN_AS_USER = """
import json, sys
from vlassist.batch.inputs import expand, plan_items
refused = {}
items = plan_items(expand([sys.argv[1]], refused), None, refused)
print(json.dumps({item.source.rsplit("/", 1)[-1]: item.error for item in items}))
"""


def test_an_unreadable_subfolder_becomes_a_failed_row(tmp_path):
    """A subfolder that cannot be listed is a row saying so, not silently missing (planned as an unprivileged user)."""
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    (folder / "a.png").write_bytes(image_bytes())
    (folder / "locked" / "b.png").write_bytes(image_bytes())
    (folder / "locked").chmod(0)
    command = [sys.executable, "-c", PLAN_AS_USER, str(folder)]
    if os.geteuid() == 0:  # root lists any folder: plan as nobody, who can reach the rest of the tree
        for part in [tmp_path, *tmp_path.parents]:
            part.chmod(part.stat().st_mode | 0o005)
        (folder / "a.png").chmod(0o644)
        folder.chmod(0o755)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        (folder / "locked").chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert rows["a.png"] is None and "cannot list" in rows["locked"]


def test_files_are_hashed_in_blocks(tmp_path):
    """The hash is the file's sha256 whatever its size, read in blocks (a multi-block file here)."""
    import hashlib

    data = os.urandom(3 * 2**20 + 5)
    (tmp_path / "big.png").write_bytes(data)
    assert _hash(tmp_path / "big.png") == (hashlib.sha256(data).hexdigest(), data[:8])


def test_a_full_disk_cuts_the_failed_row_and_says_so(tmp_path):
    """A row that does not fit on the disk is not left half-written; the error names the file and what to do."""
    folder = tmp_path / "out"
    _mount(folder, "size=12k,mode=0755")
    try:
        log = RowLog(folder / "rows.jsonl")
        log.open()
        row = {"source": "x.png", "answer": "y" * 1000}
        with pytest.raises(StorageError, match="rows.jsonl.*free space"):
            for _ in range(100):
                log.append(row)
        log.close()
        lines = (folder / "rows.jsonl").read_bytes().split(b"\n")
        assert lines[-1] == b"" and all(json.loads(line) == row for line in lines[:-1])
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_output_disk_is_exit_2_with_one_line(tiny_qwen25, tmp_path):
    """`vlassist batch` onto a full disk ends with exit status 2, one error line and only whole rows."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(8):
        (inputs / f"{i}.png").write_bytes(image_bytes((64, 48), (20 * i, 90, 200)))
    out = tmp_path / "out"
    _mount(out, "size=4k,mode=0755")  # room for a few rows only
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
        env.update(VLASSIST_DEVICE="cpu", VLASSIST_STREAM_TIMEOUT_S="60")
        done = subprocess.run([sys.executable, "-m", "vlassist", "batch", str(inputs), "--out", str(out / "r.jsonl"),
                               "--model", str(tiny_qwen25), "--preset", "ocr", "--max-new-tokens", "60",
                               "--min-new-tokens", "60", "--no-progress"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("vlassist: error:")]
        assert len(errors) == 1 and "r.jsonl" in errors[0] and "Traceback" not in done.stderr
        data = (out / "r.jsonl").read_bytes()
        assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
