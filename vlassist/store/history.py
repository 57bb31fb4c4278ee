"""Conversation history in SQLite: the store every page uses, scoped to one owner."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, update

from vlassist.store.faults import FAULTS, LOCK_RETRIES, backoff, guarded, is_busy, is_read_only, storage_error
from vlassist.store.integrity import Unfit, check_history_file, lists
from vlassist.store.owner import OwnerStore
from vlassist.store.records import (
    FINAL_STATUSES,
    STATUSES,
    THUMBNAIL_SIDE,
    ConversationSummary,
    ImageRef,
    NewImage,
    StoredConversation,
    StoredMessage,
    make_thumbnail,
    make_title,
)
from vlassist.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Message,
    empty_engine,
    migrate,
    open_engine,
    schema_version,
)

# Callers import these from here as before the schema moved to its own module.
__all__ = ["DB_NAME", "FINAL_STATUSES", "LOCAL_OWNER", "MIGRATIONS", "SCHEMA_VERSION", "STATUSES", "THUMBNAIL_SIDE",
           "ConversationSummary", "History", "ImageRef", "NewImage", "OwnerStore", "StoredConversation",
           "StoredMessage", "make_thumbnail", "make_title", "migrate", "open_engine", "schema_version"]

DB_NAME = "history.sqlite3"
LOCAL_OWNER = "local"


class History:
    """The history database; `for_owner()` gives the store every page uses."""

    def __init__(self, engine: Engine, folder: Path | None = None, read_only: bool = False):
        self.engine = engine
        self.folder = folder
        self.read_only = read_only  # True: history is readable, every write raises StorageError
        self.read_only_reason = ""  # why, when opening for writing failed
        # A current database needs no write lock to open: many processes start at once without queueing here.
        if not read_only and schema_version(engine) < SCHEMA_VERSION:
            migrate(engine)

    @classmethod
    def open(cls, data_dir: Path | str) -> History:
        """Open (creating if needed) the history under `data_dir`; read-only if the folder cannot be written.

        Any other storage fault raises StorageError naming the folder.
        """
        folder = Path(data_dir)
        if (unfit := check_history_file(folder / DB_NAME, SCHEMA_VERSION)) is not None:
            return cls._open_unfit(folder, unfit)  # damaged, another program's, or newer: never written
        for attempt in range(LOCK_RETRIES + 1):
            engine = None
            try:
                folder.mkdir(parents=True, exist_ok=True)
                engine = open_engine(folder / DB_NAME)
                return cls(engine, folder)
            except FAULTS as exc:
                if engine is not None:
                    engine.dispose()
                if is_busy(exc) and attempt < LOCK_RETRIES:
                    backoff(attempt)
                    continue
                if not (is_read_only(exc) or (folder / DB_NAME).exists()):
                    raise storage_error(exc, folder) from exc
                # Unwritable (read-only, full disk, …) but readable: open to read, and say why nothing saves.
                history = cls._open_read_only(folder)
                history.read_only_reason = str(storage_error(exc, folder))
                return history
        raise AssertionError("unreachable")

    @classmethod
    def _open_unfit(cls, folder: Path, unfit: Unfit) -> History:
        """Read-only over what can still be read of the file (else an empty history), saying why and what to do."""
        readable = unfit.readable and lists(folder / DB_NAME)  # else even its conversation list is lost
        history = cls._open_read_only(folder) if readable else cls(empty_engine(), folder, read_only=True)
        history.read_only_reason = str(unfit)
        return history

    @classmethod
    def _open_read_only(cls, folder: Path) -> History:
        path = folder / DB_NAME
        try:
            if not path.exists():
                return cls(empty_engine(), folder, read_only=True)  # nothing stored yet: an empty history
            for immutable in (False, True):
                engine = open_engine(path, read_only=True, immutable=immutable)
                try:
                    with engine.connect() as conn:
                        conn.exec_driver_sql("SELECT count(*) FROM conversations").scalar()
                    return cls(engine, folder, read_only=True)
                except FAULTS:
                    engine.dispose()
                    if immutable:
                        raise
        except FAULTS as exc:
            raise storage_error(exc, folder) from exc
        raise AssertionError("unreachable")

    def for_owner(self, owner: str) -> OwnerStore:
        """The store of one owner's conversations."""
        return OwnerStore(self.engine, owner, self.folder, self.read_only)

    @guarded(write=True)
    def mark_running_interrupted(self) -> int:
        """Mark every answer still "running" as "interrupted", keeping its text; return how many.

        For a server starting up: no answer can be running before it has started one, so these were cut off
        when an earlier process ended.
        """
        with self.engine.begin() as conn:
            return conn.execute(update(Message).where(Message.status == "running")
                                .values(status="interrupted")).rowcount

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
