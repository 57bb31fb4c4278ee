"""`python -m vlassist batch`: folders of images and PDFs → JSONL/CSV rows, resumable, on the tiny checkpoints."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, image_bytes
from PIL import Image

import vlassist.backends
from vlassist.__main__ import main
from vlassist.answers.parsing import validation_errors
from vlassist.answers.schemas import boxes_schema, fields_schema
from vlassist.batch.inputs import parse_pages
from vlassist.batch.rows import csv_records

FIELDS = "name,total:number"
SCHEMA = fields_schema(FIELDS)
REAL_LOAD = vlassist.backends.load_answerer  # the module's `local` fixture swaps it for the session engine
GOOD = {("a.png", None), ("b.jpg", None), ("doc.pdf", 1), ("doc.pdf", 2), ("doc.pdf", 3)}


def pdf_bytes(*colors, resolution: float = 72.0, size=(120, 90)) -> bytes:
    """A PDF with one page per colour, made with Pillow (page size in points = pixels × 72 / resolution)."""
    pages = [Image.new("RGB", size, color) for color in colors]
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=resolution)
    return buf.getvalue()


def encrypted_pdf() -> bytes:
    """A one-page PDF under the standard security handler whose user password is not empty."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
               f"<< /Filter /Standard /V 1 /R 2 /O <{'11' * 32}> /U <{'22' * 32}> /P -4 >>"]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Encrypt 4 0 R /ID [<{'33' * 16}> <{'33' * 16}>] >>"
            f"\nstartxref\n{xref}\n%%EOF\n").encode()
    return out


def read_rows(path: Path) -> list[dict]:
    """Every line of a JSONL file parsed (fails on any torn line)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected_exit(rows: list[dict]) -> int:
    """The exit status a batch gives for these rows: 0 only when every one is ok."""
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def named(row: dict) -> tuple[str, int | None]:
    """(file name, page) of a row."""
    return Path(row["source"]).name, row["page"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two images (one in a subfolder), a 3-page PDF, a damaged PNG, a PDF page too large to render, and noise."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "sub").mkdir()
    (root / "a.png").write_bytes(image_bytes((96, 64)))
    (root / "sub" / "b.jpg").write_bytes(image_bytes((80, 80), (30, 200, 30), "JPEG"))
    (root / "doc.pdf").write_bytes(pdf_bytes("red", "green", "blue"))
    (root / "bad.png").write_bytes(image_bytes((96, 64))[:60])  # cut inside the pixel data
    (root / "huge.pdf").write_bytes(pdf_bytes("white", resolution=1.0, size=(100, 100)))  # 7200 pt at 150 dpi
    (root / "notes.txt").write_text("not an image")  # not a supported type: a folder walk skips it
    (root / ".hidden.png").write_bytes(image_bytes())
    return root


@pytest.fixture(scope="module")
def local(engine25):
    """Batches in this process answer on the session's tiny Qwen2.5-VL engine instead of loading another."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vlassist.backends, "load_answerer", lambda settings: engine25)
        mp.setenv("VLASSIST_DEVICE", "cpu")
        mp.delenv("VLASSIST_BACKEND_URL", raising=False)
        yield


def batch(*args, model: Path) -> int:
    """Run `vlassist batch` in this process without a progress bar."""
    return main(["batch", *map(str, args), "--model", str(model), "--no-progress"])


@pytest.fixture(scope="module")
def first_run(local, folder, tiny_qwen25, tmp_path_factory) -> tuple[int, Path]:
    """One JSON-fields batch over the folder: (exit status, results file)."""
    out = tmp_path_factory.mktemp("out") / "results.jsonl"
    code = batch(folder, "--out", out, "--fields", FIELDS, "--max-new-tokens", "48", model=tiny_qwen25)
    return code, out


def test_every_image_and_page_gets_one_row(first_run):
    """Each image and each PDF page gets exactly one row, with its page number, hash, task and model."""
    code, out = first_run
    rows = read_rows(out)
    assert code == 1  # some rows failed
    assert GOOD <= {named(r) for r in rows} and len(rows) == len({named(r) for r in rows}) == 7
    assert all(r["sha256"] and r["model"] == "qwen2_5_vl" and r["task"].startswith("schema-") for r in rows)
    assert {r["dpi"] for r in rows if r["page"]} == {150}


def test_bad_files_become_error_rows(first_run):
    """A damaged image and a page too large to render are failed rows with a reason; the batch goes on."""
    rows = {named(r): r for r in read_rows(first_run[1])}
    assert rows[("bad.png", None)]["status"] == "failed" and "damaged" in rows[("bad.png", None)]["error"]
    assert rows[("huge.pdf", 1)]["status"] == "failed" and "lower --dpi" in rows[("huge.pdf", 1)]["error"]


def test_every_json_row_is_valid_against_the_schema(first_run):
    """Each answered row is ok and its parsed result validates against the --fields schema."""
    rows = [r for r in read_rows(first_run[1]) if named(r) in GOOD]
    assert all(r["status"] == "ok" and r["error"] is None for r in rows)
    assert all(validation_errors(r["result"], SCHEMA) == () for r in rows)
    assert all(r["stats"]["new_tokens"] > 0 and r["stats"]["images"] for r in rows)


def test_rerun_skips_every_row_without_loading_the_model(first_run, folder, tiny_qwen25, tmp_path, monkeypatch):
    """A rerun with the same task writes nothing, loads no model, and still says that some rows failed."""
    out = tmp_path / "results.jsonl"
    shutil.copy(first_run[1], out)
    before = out.read_bytes()

    def no_model(settings):
        raise AssertionError("the model was loaded although every row was done")

    monkeypatch.setattr(vlassist.backends, "load_answerer", no_model)
    started = time.monotonic()
    code = batch(folder, "--out", out, "--fields", FIELDS, "--max-new-tokens", "48", model=tiny_qwen25)
    assert time.monotonic() - started < 5
    assert code == 1 and out.read_bytes() == before


def test_retry_failed_retries_only_the_failed_rows(first_run, folder, tiny_qwen25, tmp_path):
    """--retry-failed appends a new row for each failed key only; earlier rows stay byte for byte."""
    out = tmp_path / "results.jsonl"
    shutil.copy(first_run[1], out)
    before = out.read_bytes()
    code = batch(folder, "--out", out, "--fields", FIELDS, "--retry-failed", model=tiny_qwen25)
    assert code == 1 and out.read_bytes().startswith(before)
    added = read_rows(out)[len(read_rows(first_run[1])):]
    assert sorted(named(r) for r in added) == [("bad.png", None), ("huge.pdf", 1)]


def test_csv_has_a_column_per_field_and_a_row_per_file_or_page(first_run, folder, tiny_qwen25, tmp_path):
    """CSV output: fixed columns, one column per JSON field, one line per image or page, from its JSONL log."""
    import csv

    out = tmp_path / "results.csv"
    shutil.copy(first_run[1], tmp_path / "results.csv.jsonl")  # the log the CSV is the view of
    code = batch(folder, "--out", out, "--fields", FIELDS, model=tiny_qwen25)
    with out.open(newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert code == 1
    assert list(lines[0])[:6] == ["source", "page", "status", "error", "name", "total"]
    assert sorted((Path(r["source"]).name, r["page"]) for r in lines) == sorted(
        (name, str(page or "")) for name, page in GOOD | {("bad.png", None), ("huge.pdf", 1)})
    results = {named(r): r["result"] for r in read_rows(first_run[1])}
    for line in lines:
        result = results[(Path(line["source"]).name, int(line["page"]) if line["page"] else None)] or {}
        assert (line["name"], line["total"]) == tuple("" if result.get(k) is None else str(result[k])
                                                      for k in ("name", "total"))


def test_table_rows_make_one_csv_line_per_table_row():
    """A table_rows result flattens to one CSV line per table row, with the table's columns."""
    row = {"source": "t.png", "page": None, "status": "ok", "error": None, "sha256": "x", "model": "m", "task": "t",
           "result": {"columns": ["item", "qty"], "rows": [["bolt", 4], ["nut", None]]}, "answer": "{}"}
    assert [(r["item"], r["qty"]) for r in csv_records(row)] == [("bolt", 4), ("nut", "")]


def test_encrypted_and_broken_pdfs_are_error_rows(local, tiny_qwen25, tmp_path):
    """An encrypted PDF and a truncated one each give one failed row naming why; exit status 1."""
    (tmp_path / "locked.pdf").write_bytes(encrypted_pdf())
    (tmp_path / "cut.pdf").write_bytes(pdf_bytes("red")[:150])
    out = tmp_path / "results.jsonl"
    assert batch(tmp_path / "locked.pdf", tmp_path / "cut.pdf", "--out", out, "--preset", "ocr",
                 model=tiny_qwen25) == 1
    rows = {named(r): r for r in read_rows(out)}
    assert "encrypted" in rows[("locked.pdf", None)]["error"]
    assert "damaged" in rows[("cut.pdf", None)]["error"]


def test_pages_option_picks_pages(local, tiny_qwen25, tmp_path):
    """--pages 1,3- answers only those pages of a PDF."""
    (tmp_path / "doc.pdf").write_bytes(pdf_bytes("red", "green", "blue", "white"))
    out = tmp_path / "results.jsonl"
    code = batch(tmp_path / "doc.pdf", "--out", out, "--preset", "ocr", "--pages", "1,3-", "--max-new-tokens", "4",
                 model=tiny_qwen25)
    rows = read_rows(out)
    assert sorted(r["page"] for r in rows) == [1, 3, 4]
    assert code == _expected_exit(rows)  # answers cut at 4 tokens are "truncated", which exits 1
    assert parse_pages("1-3,7") == [(1, 3), (7, 7)]


def test_usage_errors_exit_2(tmp_path, capsys):
    """A wrong --out type or a missing task is one line on stderr and exit status 2, before any model loads."""
    (tmp_path / "a.png").write_bytes(image_bytes())
    assert main(["batch", str(tmp_path), "--out", str(tmp_path / "x.txt"), "--preset", "ocr"]) == 2
    assert main(["batch", str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--out" in capsys.readouterr().err


def test_ctrl_c_leaves_a_valid_file_and_the_rerun_completes_it(local, tiny_qwen25, tmp_path):
    """SIGINT mid-batch ends with status 130 and whole rows only; the rerun answers only what is missing."""
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(image_bytes((64, 48), (60 * i, 90, 200)))
    out = tmp_path / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update(VLASSIST_DEVICE="cpu", VLASSIST_STREAM_TIMEOUT_S="60")
    proc = subprocess.Popen([sys.executable, "-m", "vlassist", "batch", str(tmp_path), "--out", str(out),
                             "--model", str(tiny_qwen25), "--preset", "ocr", "--max-new-tokens", "400",
                             "--min-new-tokens", "400", "--no-progress"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "interrupted" in err
    done = read_rows(out)
    assert 1 <= len(done) < 4 and all(r["status"] in ("ok", "truncated") for r in done)
    before = out.read_bytes()
    code = batch(tmp_path, "--out", out, "--preset", "ocr", "--max-new-tokens", "8", model=tiny_qwen25)
    assert code == _expected_exit(read_rows(out))
    assert out.read_bytes().startswith(before)
    assert sorted(named(r) for r in read_rows(out)) == [(f"{i}.png", None) for i in range(4)]


@pytest.mark.enable_socket
def test_remote_backend_with_two_requests_in_flight(folder, tiny_qwen25, tmp_path, monkeypatch):
    """Against `vlassist serve` with --concurrency 2, every image and page gets a valid JSON row, same model name."""
    from api_support import start_serve, stop_serve

    from vlassist.remote.answerer import RemoteAnswerer

    running, peak, lock = [0], [0], threading.Lock()
    real_run = RemoteAnswerer._run

    def counted(self, *args):  # a spy on the real request: how many are open at once
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            yield from real_run(self, *args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(RemoteAnswerer, "_run", counted)
    monkeypatch.setattr(vlassist.backends, "load_answerer", REAL_LOAD)
    proc, url = start_serve(tiny_qwen25, tmp_path / "serve.log")
    try:
        monkeypatch.setenv("VLASSIST_BACKEND_URL", url)
        out = tmp_path / "remote.jsonl"
        code = main(["batch", str(folder), "--out", str(out), "--fields", FIELDS, "--max-new-tokens", "48",
                     "--concurrency", "2", "--no-progress"])
    finally:
        stop_serve(proc)
    rows = {named(r): r for r in read_rows(out)}
    assert code == 1 and set(rows) == GOOD | {("bad.png", None), ("huge.pdf", 1)}
    assert all(rows[key]["status"] == "ok" and validation_errors(rows[key]["result"], SCHEMA) == () for key in GOOD)
    assert {r["model"] for r in rows.values()} == {"qwen2_5_vl"}
    assert len({r["task"] for r in rows.values()}) == 1
    assert peak[0] == 2


def test_grounding_rows_hold_boxes_in_original_pixels():
    """A grounding answer is parsed into boxes scaled from the model-input size back to the original image."""
    from vlassist.batch.tasks import BOXES, Task, parse_answer
    from vlassist.images import Sizing
    from vlassist.service.jobs import Job, Request

    job = Job(Request([]))
    job.outcome, job.text = "complete", '[{"bbox_2d": [10, 20, 30, 40], "label": "valve"}]'
    job.stats.images = [Sizing((200, 100), (100, 50), 6)]
    task = Task("grounding", BOXES, "find", None, 1280, False)
    assert parse_answer(task, job, "qwen2_5_vl") == (
        [{"label": "valve", "x1": 20.0, "y1": 40.0, "x2": 60.0, "y2": 80.0}], None)


def test_grounding_batch_holds_answers_to_the_box_list_unless_free_boxes(local, tiny_qwen25, tmp_path):
    """Batch grounding rows are box lists held to the family's schema; --free-boxes is another task (redone)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(image_bytes((96, 64)))
    out = tmp_path / "boxes.jsonl"
    args = (tmp_path / "in", "--out", out, "--preset", "grounding", "--max-new-tokens", "96")
    assert batch(*args, model=tiny_qwen25) == 0
    [row] = read_rows(out)
    assert row["status"] == "ok" and isinstance(row["result"], list)
    assert validation_errors(json.loads(row["answer"]), boxes_schema("qwen2_5_vl")) == ()
    assert batch(*args, "--free-boxes", model=tiny_qwen25) in (0, 1)  # free text may not parse into boxes
    rows = read_rows(out)
    assert len(rows) == 2 and rows[0]["task"] != rows[1]["task"]
