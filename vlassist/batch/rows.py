"""Batch rows: the record written for each image or PDF page, the append-only JSONL log, and the CSV view of it."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vlassist.errors import StorageError, VlassistError

OK, FAILED, TRUNCATED = "ok", "failed", "truncated"  # truncated: the answer ended at the length limit
CSV_EVERY_S = 2.0  # the CSV view is rewritten whole, so at most this often while rows arrive (and at the end)
LEAD_COLUMNS = ("source", "page", "status", "error")
TAIL_COLUMNS = ("truncated", "sha256", "model", "task")


def make_row(source: str, sha256: str | None, page: int | None, dpi: int | None, task: str, model: str,
             answer: str = "", result: Any = None, stats: dict | None = None, error: str | None = None) -> dict:
    """One row as written to JSONL: where it came from, what was asked, the answer, its parsed result, or the error.

    An answer that ended at the length limit is TRUNCATED whatever else is wrong with it: a longer answer length
    is what would help, so that is the status a rerun with --retry-failed acts on.
    """
    cut = bool(stats) and stats.get("stop_reason") == "length"
    return {"source": source, "page": page, "dpi": dpi if page is not None else None, "sha256": sha256,
            "task": task, "model": model, "status": TRUNCATED if cut else FAILED if error else OK,
            "answer": answer, "result": result,
            "stats": stats, "error": error, "finished": datetime.now(UTC).isoformat(timespec="seconds")}


def user_file_mode() -> int:
    """The mode a new file of this user gets (0666 less the umask), for files written through a temporary one."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def row_key(sha256: str | None, source: str, page: int | None, dpi: int | None, task: str, model: str) -> tuple:
    """What makes a row the same work again: file contents (not its name), page and dpi, task and model."""
    # An unreadable file has no hash; its path stands in, so a rerun tries it again under the same key.
    return (sha256 or f"path:{source}", page, dpi if page is not None else None, task, model)


def key_of(row: dict) -> tuple:
    """The key of a row read back from the log."""
    return row_key(row.get("sha256"), row.get("source", ""), row.get("page"), row.get("dpi"), row.get("task", ""),
                   row.get("model", ""))


class RowLog:
    """The append-only JSONL file of finished rows: the source of truth for resuming; rows are never rewritten."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def read(self) -> list[dict]:
        """Every whole row in file order (a retried row comes after its failed one, so the last one counts)."""
        rows: list[dict] = []
        if not self.path.exists():
            return rows
        try:
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a line torn by a crash: that row was never finished
                    if isinstance(row, dict):
                        rows.append(row)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise VlassistError(f"{self.path} is not a JSONL results file; choose another --out") from None
        return rows

    def open(self) -> None:
        """Open for appending; a torn last line (a crash mid-write) is cut off so the file stays valid JSONL."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                with self.path.open("rb+") as f:
                    data = f.read()
                    if data and not data.endswith(b"\n"):
                        f.truncate(data.rfind(b"\n") + 1)
            # Unbuffered: a failed write leaves nothing behind in a buffer to be written (torn) at close.
            self._file = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot write ({exc.strerror or exc})") from None

    def append(self, row: dict) -> None:
        """Write one whole row and push it to disk, so an interrupt or crash never leaves half of it.

        A write that fails (a full or failing disk) is cut back to the last whole row before StorageError is raised.
        """
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        start = os.lseek(self._file, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._file, view):]
            os.fsync(self._file)
        except OSError as exc:
            try:
                os.ftruncate(self._file, start)
            except OSError:
                pass  # the next start cuts a torn last line off (open())
            raise StorageError(f"{self.path}: cannot write ({exc.strerror or exc}); every row before this one "
                               "is saved: free space there and run the same command again to continue") from None

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            os.close(self._file)
            self._file = None


# ---- CSV ----------------------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    # Objects become dotted columns; lists stay one JSON cell, so a row keeps one line per file or page.
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_flat(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix or "value": _cell(value)}


def _table(result: Any) -> tuple[list[str], list[list]] | None:
    if isinstance(result, dict) and isinstance(result.get("columns"), list) and isinstance(result.get("rows"), list):
        return [str(c) for c in result["columns"]], [r if isinstance(r, list) else [r] for r in result["rows"]]
    return None


def csv_records(row: dict) -> list[dict[str, Any]]:
    """A row's CSV lines: JSON fields as columns; a table (table_rows, table and chart presets) one line per row."""
    base = {"source": row.get("source"), "page": _cell(row.get("page")), "status": row.get("status"),
            "error": _cell(row.get("error")), "truncated": "yes" if row.get("status") == TRUNCATED else "no",
            "sha256": row.get("sha256") or "", "model": row.get("model"),
            "task": row.get("task")}
    result = row.get("result")
    table = _table(result)
    if table is not None and table[1]:
        columns, rows = table
        return [_merge(base, {name: _cell(cells[i] if i < len(cells) else None) for i, name in enumerate(columns)})
                for cells in rows]
    if table is not None:
        return [base]
    if isinstance(result, dict):
        return [_merge(base, _flat(result))]
    if result is not None:  # boxes, or a JSON list: one cell
        return [{**base, "result": _cell(result)}]
    return [{**base, "answer": row["answer"]}] if row.get("answer") else [base]


def _merge(base: dict, fields: dict) -> dict:
    # A field named like a fixed column (e.g. "source") keeps its value under "result.<name>".
    return {**base, **{(f"result.{k}" if k in base else k): v for k, v in fields.items()}}


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write the CSV view whole, through a temporary file renamed over the old one: never half a file."""
    records = [record for row in rows for record in csv_records(row)]
    middle = list(dict.fromkeys(k for r in records for k in r if k not in LEAD_COLUMNS + TAIL_COLUMNS))
    columns = list(LEAD_COLUMNS) + middle + list(TAIL_COLUMNS)
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, user_file_mode())  # mkstemp makes 0600; the results are the user's ordinary file
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"{path}: cannot write ({exc.strerror or exc})") from None


class Results:
    """One --out target: its JSONL log (the .jsonl itself, or beside a .csv), the last row per key, the CSV view."""

    def __init__(self, out: Path, task: str, model: str):
        out = Path(out)
        self.csv = out if out.suffix.lower() == ".csv" else None
        self.log = RowLog(out.with_name(out.name + ".jsonl") if self.csv else out)
        written = self.log.read()
        self.latest = {key_of(row): row for row in written}  # what a rerun skips: the last row of each key
        # The CSV shows this task's last row of each key per file name, so identical files each keep their line.
        self.shown = {(key_of(row), row.get("source")): row for row in written
                      if row.get("task") == task and row.get("model") == model}
        self._csv_at = time.monotonic()

    def status(self, key: tuple) -> str | None:
        """OK, FAILED or TRUNCATED for the last row of this key; None when it has none."""
        row = self.latest.get(key)
        return None if row is None else row.get("status")

    def open(self) -> None:
        """Open the log for appending."""
        self.log.open()

    def add(self, key: tuple, row: dict) -> None:
        """Append a finished row; refresh the CSV view now and then."""
        self.log.append(row)
        self.latest[key] = row
        self.shown[(key, row["source"])] = row
        if self.csv is not None and time.monotonic() - self._csv_at >= CSV_EVERY_S:
            self.write_view()

    def write_view(self) -> None:
        """Rewrite the CSV view (when --out is a CSV) from the rows."""
        if self.csv is not None:
            write_csv(self.csv, sorted(self.shown.values(), key=lambda r: (r.get("source") or "", r.get("page") or 0)))
            self._csv_at = time.monotonic()

    def close(self) -> None:
        """Close the log and write the final CSV view."""
        self.log.close()
        self.write_view()
