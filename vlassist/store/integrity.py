"""Is the history file fit to be written? Checked read-only at start: damage, another program's file, a newer schema.

A history that fails is never written: it opens read-only (or empty, when it cannot even be read) with a message
naming the file and what to do. Nothing here writes to the file, its -wal or its -shm.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MAGICS = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # big- and little-endian checksums
WAL_HEADER = 32
OUR_TABLES = {"conversations", "migrations"}


class Unfit:
    """Why a history file must not be written, and whether it can still be read."""

    def __init__(self, path: Path, problem: str, remedy: str, readable: bool):
        self.path, self.problem, self.remedy, self.readable = path, problem, remedy, readable

    def __str__(self) -> str:
        return f"the history file {self.path} {self.problem}; nothing will be written to it. {self.remedy}"


def _damaged(path: Path, detail: str, readable: bool = False) -> Unfit:
    return Unfit(path, f"is damaged ({detail})",
                 f"To recover: stop vlassist, move {path.name} (and any {path.name}-wal, {path.name}-shm) out of "
                 f"{path.parent} — `sqlite3 {path.name} .recover` may save what is readable — then start vlassist "
                 "again for a new, empty history.", readable)


def check_history_file(path: Path, schema_version: int) -> Unfit | None:
    """None if `path` is absent or a healthy vlassist history this version can write; else why not."""
    path = Path(path)
    if not path.is_file():
        return None  # absent (a new history), or something opening it reports clearly
    size = path.stat().st_size
    if size == 0:
        # SQLite would silently make this a new database: a history that was lost must not look empty and fine.
        return Unfit(path, "is empty (0 bytes): the history it held is gone",
                     f"To start a new history, stop vlassist and delete {path}; to recover the old one, restore it "
                     "from a backup.", False)
    with path.open("rb") as file:
        head = file.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        return _damaged(path, "it does not start like a SQLite database") if size >= 100 else \
            _damaged(path, f"only {size} bytes long")
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        with wal.open("rb") as file:
            wal_head = file.read(WAL_HEADER)
        if len(wal_head) < WAL_HEADER or wal_head[:4] not in WAL_MAGICS:
            return Unfit(path, f"has a damaged write-ahead log ({wal.name} is not a SQLite log)",
                         f"To recover: stop vlassist, move {wal} aside (the answers written since the last "
                         "checkpoint are in it and lost otherwise), then start vlassist again.", True)
    found = None
    # Read-only: checking must not take a write lock or repair anything. A read-only folder cannot hold the WAL
    # index a plain read needs, so there it is read as immutable (nobody can be writing it).
    for uri in (f"file:{path}?mode=ro", f"file:{path}?mode=ro&immutable=1"):
        try:
            found = _inspect(uri)
            break
        except sqlite3.OperationalError:  # could not open or lock it: not a sign of damage
            continue
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            return _damaged(path, str(exc))
    if found is None:
        return None  # unreadable for other reasons (permissions): opening it reports that
    result, tables, version = found
    if result != ["ok"]:
        return _damaged(path, "; ".join(result)[:300], readable=True)
    if tables and not tables & OUR_TABLES:
        return Unfit(path, "is not a vlassist history (another program's SQLite database)",
                     f"Move it out of {path.parent}, or set VLASSIST_DATA_DIR to a folder of vlassist's own.", False)
    if version > schema_version:
        return Unfit(path, f"was written by a newer vlassist (history schema {version}; this version knows up to "
                           f"{schema_version})", "Run the newer vlassist, or upgrade this one; the history is shown "
                     "read-only meanwhile.", True)
    return None


def _inspect(uri: str) -> tuple[list[str], set[str], int]:
    """quick_check's findings, the table names and user_version of a database opened read-only by `uri`."""
    conn = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        result = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return result, tables, conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def lists(path: Path) -> bool:
    """True if the conversation list of a (damaged) history can still be read, read-only."""
    for uri in (f"file:{path}?mode=ro", f"file:{path}?mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=10)
            try:
                conn.execute("SELECT count(*), max(updated_at), max(length(title)) FROM conversations").fetchall()
                return True
            finally:
                conn.close()
        except sqlite3.Error:
            continue
    return False
