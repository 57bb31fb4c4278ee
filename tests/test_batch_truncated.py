"""`vlassist batch` says when an answer was cut at the length limit, and --retry-failed redoes those rows."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from conftest import image_bytes
from test_batch import batch, read_rows

import vlassist.backends


@pytest.fixture(scope="module")
def local(engine25):
    """Batches in this process answer on the session's tiny Qwen2.5-VL engine instead of loading another."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vlassist.backends, "load_answerer", lambda settings: engine25)
        mp.setenv("VLASSIST_DEVICE", "cpu")
        mp.delenv("VLASSIST_BACKEND_URL", raising=False)
        yield


@pytest.fixture(scope="module")
def cut_run(local, tiny_qwen25, tmp_path_factory):
    """An OCR batch of two images whose answers are forced to the length limit: (exit status, CSV, stderr file)."""
    inputs = tmp_path_factory.mktemp("cut-inputs")
    (inputs / "a.png").write_bytes(image_bytes((96, 64)))
    (inputs / "b.png").write_bytes(image_bytes((64, 96), (20, 90, 200)))
    out = tmp_path_factory.mktemp("cut-out") / "results.csv"
    previous = os.umask(0o022)
    try:
        code = batch(inputs, "--out", out, "--preset", "ocr", "--max-new-tokens", "6", "--min-new-tokens", "6",
                     model=tiny_qwen25)
    finally:
        os.umask(previous)
    return code, out, inputs


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_rows_cut_at_the_length_limit_are_truncated_and_exit_1(cut_run):
    """Answers that ended at --max-new-tokens are stored with status "truncated", and the batch exits 1."""
    code, out, _ = cut_run
    rows = read_rows(Path(f"{out}.jsonl"))
    assert code == 1
    assert [r["status"] for r in rows] == ["truncated", "truncated"]
    assert all(r["stats"]["stop_reason"] == "length" and r["answer"] for r in rows)


def test_csv_has_a_truncated_column(cut_run):
    """The CSV view says, per line, whether the answer was cut (status and its own "truncated" column)."""
    lines = _csv(cut_run[1])
    assert [(line["status"], line["truncated"]) for line in lines] == [("truncated", "yes")] * 2


def test_summary_counts_truncated_rows_and_names_the_remedy(local, tiny_qwen25, tmp_path, capsys):
    """The summary counts truncated rows apart from ok and failed and says how to redo them."""
    (tmp_path / "one.png").write_bytes(image_bytes())
    code = batch(tmp_path / "one.png", "--out", tmp_path / "r.jsonl", "--preset", "ocr", "--max-new-tokens", "4",
                 "--min-new-tokens", "4", model=tiny_qwen25)
    err = capsys.readouterr().err
    assert code == 1
    assert "0 ok, 1 truncated, 0 failed" in err
    assert "--retry-failed" in err and "--max-new-tokens" in err


def test_retry_failed_redoes_truncated_rows_only_when_asked(cut_run, tiny_qwen25):
    """A plain rerun skips the truncated rows; --retry-failed with a larger length answers them again."""
    code, out, inputs = cut_run
    log = Path(f"{out}.jsonl")
    assert batch(inputs, "--out", out, "--preset", "ocr", "--max-new-tokens", "6", model=tiny_qwen25) == 1
    assert len(read_rows(log)) == 2  # nothing redone
    batch(inputs, "--out", out, "--preset", "ocr", "--retry-failed", "--max-new-tokens", "10",
          "--min-new-tokens", "8", model=tiny_qwen25)
    rows = read_rows(log)
    assert len(rows) == 4
    assert all(r["stats"]["new_tokens"] >= 8 for r in rows[2:])  # answered again, under the new length


def test_output_files_get_the_users_usual_permissions(cut_run):
    """The CSV and its JSONL log are created with the user's umask (0644 under 022), not private 0600."""
    _, out, _ = cut_run
    assert (out.stat().st_mode & 0o777) == 0o644
    assert (Path(f"{out}.jsonl").stat().st_mode & 0o777) == 0o644
