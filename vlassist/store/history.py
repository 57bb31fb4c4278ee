"""Conversation history in SQLite: models, ordered migrations, and a store scoped to one owner."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import (
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vlassist.images import LoadedImage

DB_NAME = "history.sqlite3"
THUMBNAIL_SIDE = 320
STATUSES = ("complete", "interrupted", "error")
TITLE_LENGTH = 80
LOCAL_OWNER = "local"


class Base(DeclarativeBase):
    """Declarative base of the history tables."""


class Conversation(Base):
    """A conversation row: who owns it, its title, when it was created and last changed."""

    __tablename__ = "conversations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Message(Base):
    """A message row: role, text, status and, for answers, the preset, options and stats used."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    preset: Mapped[str | None] = mapped_column(String(32), nullable=True)
    options: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    stats: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    created_at: Mapped[float] = mapped_column(Float)


class Image(Base):
    """An image file stored once, keyed by the sha256 of its bytes, with a small JPEG thumbnail."""

    __tablename__ = "images"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    nbytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    thumbnail: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class MessageImage(Base):
    """Which images a message carries, in order, under the file name the user gave."""

    __tablename__ = "message_images"
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    name: Mapped[str] = mapped_column(String(255))


# ---- migrations: append only; each runs once, in order, inside one transaction ----

def _m001_initial(conn: Connection) -> None:
    statements = [
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY, owner VARCHAR(200) NOT NULL, title VARCHAR(200) NOT NULL,
            created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL)""",
        "CREATE INDEX ix_conversations_owner ON conversations (owner, updated_at)",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL, role VARCHAR(16) NOT NULL, text TEXT NOT NULL, status VARCHAR(16) NOT NULL,
            preset VARCHAR(32), options TEXT, stats TEXT, created_at FLOAT NOT NULL)""",
        "CREATE INDEX ix_messages_conversation_id ON messages (conversation_id, position)",
        """CREATE TABLE images (
            sha256 VARCHAR(64) PRIMARY KEY, format VARCHAR(16) NOT NULL, width INTEGER NOT NULL,
            height INTEGER NOT NULL, nbytes INTEGER NOT NULL, data BLOB NOT NULL, thumbnail BLOB NOT NULL,
            created_at FLOAT NOT NULL)""",
        """CREATE TABLE message_images (
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL REFERENCES images (sha256),
            name VARCHAR(255) NOT NULL, PRIMARY KEY (message_id, position))""",
        "CREATE INDEX ix_message_images_sha256 ON message_images (sha256)",
    ]
    for statement in statements:
        conn.exec_driver_sql(statement)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial", _m001_initial),
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(engine: Engine) -> list[str]:
    """Apply the migrations this database has not seen yet; return their names."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS migrations (name VARCHAR(100) PRIMARY KEY, applied_at FLOAT NOT NULL)")
        done = {row[0] for row in conn.exec_driver_sql("SELECT name FROM migrations")}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        with engine.begin() as conn:
            step(conn)
            conn.execute(text("INSERT INTO migrations (name, applied_at) VALUES (:n, :t)"),
                         {"n": name, "t": time.time()})
            conn.exec_driver_sql(f"PRAGMA user_version = {MIGRATIONS.index((name, step)) + 1}")
        applied.append(name)
    return applied


def schema_version(engine: Engine) -> int:
    """The number of migrations applied to this database."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar())


def open_engine(path: Path | str) -> Engine:
    """A SQLAlchemy engine on a SQLite file: WAL, busy timeout, foreign keys, write-ready transactions."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 10, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy emit BEGIN itself, so a write transaction takes its lock at once instead of
        # failing on a lock upgrade when two sessions write at the same moment.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# ---- plain records handed to the UI (no live database objects leave this module) ----

@dataclass(frozen=True)
class ImageRef:
    """An image attached to a message: its content hash, file name, format and original size."""

    sha256: str
    name: str
    format: str
    width: int
    height: int
    nbytes: int

    @property
    def size(self) -> tuple[int, int]:
        """Original (width, height)."""
        return (self.width, self.height)


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored: role, text, status, and for answers the preset, options and stats."""

    id: int
    role: str
    text: str
    status: str
    created_at: float
    preset: str | None = None
    options: dict | None = None
    stats: dict | None = None
    images: list[ImageRef] = field(default_factory=list)


@dataclass(frozen=True)
class ConversationSummary:
    """One line of the conversation list."""

    id: int
    title: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StoredConversation:
    """A whole conversation with its messages in order."""

    id: int
    owner: str
    title: str
    created_at: float
    updated_at: float
    messages: list[StoredMessage]


@dataclass(frozen=True)
class NewImage:
    """An image about to be stored: the original bytes, the decoded image and the user's file name."""

    data: bytes
    loaded: LoadedImage
    name: str


def make_title(text_: str, fallback: str = "Image question") -> str:
    """A conversation title from the first question: its first line, shortened."""
    line = next((ln.strip() for ln in text_.splitlines() if ln.strip()), "")
    if not line:
        return fallback
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def make_thumbnail(image: PILImage.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG thumbnail whose longer side is at most `side` pixels."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class History:
    """The history database; `for_owner()` gives the store every page uses."""

    def __init__(self, engine: Engine):
        self.engine = engine
        migrate(engine)

    @classmethod
    def open(cls, data_dir: Path | str) -> History:
        """Open (creating if needed) the history database under `data_dir`."""
        folder = Path(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(open_engine(folder / DB_NAME))

    def for_owner(self, owner: str) -> OwnerStore:
        """The store of one owner's conversations."""
        return OwnerStore(self.engine, owner)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


class OwnerStore:
    """One owner's conversations. Every query here is filtered by that owner."""

    def __init__(self, engine: Engine, owner: str):
        if not owner:
            raise ValueError("an owner is required")
        self.engine = engine
        self.owner = owner

    def _owned(self, session: Session, conversation_id: int) -> Conversation | None:
        return session.scalars(select(Conversation).where(
            Conversation.id == conversation_id, Conversation.owner == self.owner)).first()

    # ---- conversations ----

    def create_conversation(self, title: str) -> int:
        """Start a conversation and return its id."""
        now = time.time()
        with Session(self.engine) as session, session.begin():
            row = Conversation(owner=self.owner, title=title[:200] or "Untitled", created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            return row.id

    def list_conversations(self, search: str = "", limit: int = 200) -> list[ConversationSummary]:
        """Conversations newest first; with `search`, only those whose title or any message contains it."""
        query = select(Conversation).where(Conversation.owner == self.owner)
        term = search.strip()
        if term:
            pattern = _like(term)
            in_messages = exists().where(Message.conversation_id == Conversation.id,
                                         Message.text.ilike(pattern, escape="\\"))
            query = query.where(or_(Conversation.title.ilike(pattern, escape="\\"), in_messages))
        query = query.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
        with Session(self.engine) as session:
            return [ConversationSummary(c.id, c.title, c.created_at, c.updated_at) for c in session.scalars(query)]

    def get_conversation(self, conversation_id: int) -> StoredConversation | None:
        """A conversation with its messages and image references, or None if this owner has no such one."""
        with Session(self.engine) as session:
            conv = self._owned(session, conversation_id)
            if conv is None:
                return None
            messages = session.scalars(select(Message).where(Message.conversation_id == conv.id)
                                       .order_by(Message.position, Message.id)).all()
            refs: dict[int, list[ImageRef]] = {}
            rows = session.execute(
                select(MessageImage.message_id, MessageImage.name, Image.sha256, Image.format, Image.width,
                       Image.height, Image.nbytes)
                .join(Image, Image.sha256 == MessageImage.sha256)
                .join(Message, Message.id == MessageImage.message_id)
                .where(Message.conversation_id == conv.id)
                .order_by(MessageImage.message_id, MessageImage.position))
            for mid, name, sha, fmt, width, height, nbytes in rows:
                refs.setdefault(mid, []).append(ImageRef(sha, name, fmt, width, height, nbytes))
            return StoredConversation(conv.id, conv.owner, conv.title, conv.created_at, conv.updated_at, [
                StoredMessage(m.id, m.role, m.text, m.status, m.created_at, m.preset,
                              json.loads(m.options) if m.options else None,
                              json.loads(m.stats) if m.stats else None, refs.get(m.id, []))
                for m in messages])

    def rename(self, conversation_id: int, title: str) -> bool:
        """Give a conversation a new title; False if this owner has no such conversation."""
        title = " ".join(title.split())[:200]
        if not title:
            raise ValueError("a title cannot be empty")
        with Session(self.engine) as session, session.begin():
            result = session.execute(update(Conversation).where(
                Conversation.id == conversation_id, Conversation.owner == self.owner).values(title=title))
            return result.rowcount > 0

    def delete(self, conversation_id: int) -> bool:
        """Delete a conversation, its messages, and its images that no other message uses."""
        with Session(self.engine) as session, session.begin():
            conv = self._owned(session, conversation_id)
            if conv is None:
                return False
            shas = set(session.scalars(select(MessageImage.sha256).join(Message).where(
                Message.conversation_id == conv.id)))
            session.execute(delete(Conversation).where(Conversation.id == conv.id))
            if shas:
                session.execute(delete(Image).where(
                    Image.sha256.in_(shas), ~exists().where(MessageImage.sha256 == Image.sha256)))
            return True

    # ---- messages ----

    def add_user_message(self, conversation_id: int, text_: str, images: Sequence[NewImage] = ()) -> int:
        """Store the user's turn and its images (each image once, by sha256); return the message id."""
        now = time.time()
        with Session(self.engine) as session, session.begin():
            conv = self._require(session, conversation_id)
            message = Message(conversation_id=conv.id, position=self._next_position(session, conv.id), role="user",
                              text=text_, status="complete", created_at=now)
            session.add(message)
            session.flush()
            for position, new in enumerate(images):
                sha = new.loaded.sha256
                if session.get(Image, sha) is None:
                    width, height = new.loaded.size
                    session.add(Image(sha256=sha, format=new.loaded.format, width=width, height=height,
                                      nbytes=len(new.data), data=new.data,
                                      thumbnail=make_thumbnail(new.loaded.image), created_at=now))
                    session.flush()
                session.add(MessageImage(message_id=message.id, position=position, sha256=sha,
                                         name=(new.name or f"image-{position + 1}")[:255]))
            conv.updated_at = now
            return message.id

    def add_assistant_message(self, conversation_id: int, text_: str, status: str, *, preset: str | None = None,
                              options: dict | None = None, stats: dict | None = None) -> int:
        """Store an answer with its status, the preset and options used, and its stats; return its id."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        now = time.time()
        with Session(self.engine) as session, session.begin():
            conv = self._require(session, conversation_id)
            message = Message(conversation_id=conv.id, position=self._next_position(session, conv.id),
                              role="assistant", text=text_, status=status, preset=preset,
                              options=json.dumps(options) if options is not None else None,
                              stats=json.dumps(stats) if stats is not None else None, created_at=now)
            session.add(message)
            conv.updated_at = now
            session.flush()
            return message.id

    # ---- images ----

    def image_data(self, sha256: str) -> bytes | None:
        """The original bytes of an image this owner has attached somewhere, else None."""
        return self._image_column(Image.data, sha256)

    def thumbnail(self, sha256: str) -> bytes | None:
        """The JPEG thumbnail of an image this owner has attached somewhere, else None."""
        return self._image_column(Image.thumbnail, sha256)

    def _image_column(self, column, sha256: str) -> bytes | None:
        query = (select(column).join(MessageImage, MessageImage.sha256 == Image.sha256)
                 .join(Message, Message.id == MessageImage.message_id)
                 .join(Conversation, Conversation.id == Message.conversation_id)
                 .where(Image.sha256 == sha256, Conversation.owner == self.owner).limit(1))
        with Session(self.engine) as session:
            return session.scalars(query).first()

    # ---- helpers ----

    def _require(self, session: Session, conversation_id: int) -> Conversation:
        conv = self._owned(session, conversation_id)
        if conv is None:
            raise LookupError(f"no conversation {conversation_id} for this user")
        return conv

    @staticmethod
    def _next_position(session: Session, conversation_id: int) -> int:
        last = session.scalar(select(func.max(Message.position)).where(Message.conversation_id == conversation_id))
        return 0 if last is None else last + 1
