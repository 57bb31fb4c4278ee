"""Storage faults as vlassist errors: what went wrong, in which folder, what to do; lock waits retried."""

from __future__ import annotations

import errno
import functools
import random
import sqlite3
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from vlassist.errors import StorageError

FAULTS = (SQLAlchemyError, sqlite3.Error, OSError)
LOCK_RETRIES = 8  # on top of SQLite's own busy timeout: with backoff, ~30 s before giving up
BACKOFF_S = 0.05


def _kind(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    text = str(getattr(exc, "orig", None) or exc).lower()
    if code == errno.ENOSPC or "disk is full" in text or "no space" in text:
        return "full"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in text or "read-only" in text \
            or "unable to open" in text or "permission denied" in text:
        return "read-only"
    if "locked" in text or "busy" in text:
        return "busy"
    return "other"


def is_busy(exc: BaseException) -> bool:
    """True for "database is locked"/busy errors, which a later attempt may not meet."""
    return _kind(exc) == "busy"


def is_read_only(exc: BaseException) -> bool:
    """True for errors meaning the folder or database cannot be written (permissions, read-only mount)."""
    return _kind(exc) == "read-only"


def storage_error(exc: BaseException, folder: Path | str | None) -> StorageError:
    """One clear message for a storage fault: what is wrong, which folder, what to do."""
    where = f"the history folder {folder}" if folder else "the history database"
    kind = _kind(exc)
    if kind == "full":
        return StorageError(f"{where} is on a full disk; free some space there and try again "
                            "(nothing you typed is lost)")
    if kind == "read-only":
        return StorageError(f"{where} is read-only or not writable by this server; history can be read but "
                            "nothing new is saved. Fix the folder's permissions or mount, or set "
                            "VLASSIST_DATA_DIR to a writable folder")
    if kind == "busy":
        return StorageError(f"{where} stayed busy (locked by other writers); try again in a moment")
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return StorageError(f"{where} could not be used ({detail}); check the disk and the folder")


def backoff(attempt: int) -> None:
    """Sleep before another try: doubling each time, with jitter so that waiting writers spread out."""
    time.sleep(BACKOFF_S * 2**attempt * (0.5 + random.random()))


def guarded(method=None, *, write: bool = False):
    """Decorate a store method: faults become StorageError; a write retries lock waits with backoff.

    A write runs in one transaction that SQLite rolls back on failure, so running it again is safe.
    """
    if method is None:
        return functools.partial(guarded, write=write)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        folder = getattr(self, "folder", None)
        if write and getattr(self, "read_only", False):
            raise storage_error(OSError(errno.EROFS, "read-only"), folder)
        for attempt in range(LOCK_RETRIES + 1):
            try:
                return method(self, *args, **kwargs)
            except FAULTS as exc:
                if is_busy(exc) and attempt < LOCK_RETRIES:
                    backoff(attempt)
                    continue
                raise storage_error(exc, folder) from exc
        raise AssertionError("unreachable")

    return wrapper
