"""The history schema: ORM tables (the one description of the schema), ordered migrations, the SQLite engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateColumn, CreateTable

from vlassist.conversation import Stats
from vlassist.images import Sizing


class Base(DeclarativeBase):
    """Declarative base of the history tables."""


class Conversation(Base):
    """A conversation row: who owns it, its title, when it was created and last changed."""

    __tablename__ = "conversations"
    # AUTOINCREMENT (since 004): a deleted conversation's id is never given to a new one.
    __table_args__ = (Index("ix_conversations_owner", "owner", "updated_at"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Message(Base):
    """A message row: role, text, status and, for answers, the preset, options, stats and model used."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_id", "conversation_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    preset: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # none_as_null: a missing value is SQL NULL, as in databases written before these were JSON columns.
    options: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    stats: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    model_family: Mapped[str | None] = mapped_column(String(32), nullable=True)  # since 002
    model: Mapped[str | None] = mapped_column(String(500), nullable=True)  # since 002
    weights_format: Mapped[str | None] = mapped_column(String(16), nullable=True)  # since 004: bf16, awq, fp8…
    adapter: Mapped[str | None] = mapped_column(String(500), nullable=True)  # since 004: LoRA adapter folder


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
    """An image of a message, in order, with the user's file name and the size the model was shown it at."""

    __tablename__ = "message_images"
    __table_args__ = (Index("ix_message_images_sha256", "sha256"),)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    name: Mapped[str] = mapped_column(String(255))
    # Filled when the first answer about the image arrives (None before, or when it failed before sizing).
    input_width: Mapped[int | None] = mapped_column(Integer, nullable=True)  # since 003
    input_height: Mapped[int | None] = mapped_column(Integer, nullable=True)  # since 003
    visual_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)  # since 003


class UserSettings(Base):
    """One owner's page settings (answer length, image detail, decoding), kept across reloads; since 004."""

    __tablename__ = "user_settings"
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    values: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)


class Migration(Base):
    """A migration applied to this database, by name."""

    __tablename__ = "migrations"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    applied_at: Mapped[float] = mapped_column(Float)


HISTORY_TABLES = [Conversation.__table__, Message.__table__, Image.__table__, MessageImage.__table__]


# ---- helpers for migrations: schema changes read their definition from the ORM above ----

def add_column(conn: Connection, column: Column) -> None:
    """ALTER TABLE … ADD COLUMN from the ORM's definition; nothing if the table already has it."""
    table = column.table
    if column.name in {c["name"] for c in inspect(conn).get_columns(table.name)}:
        return  # 001 built this table from today's ORM, so it already has every column
    ddl = CreateColumn(column).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


def match_sizes(rows: Sequence[tuple[tuple[int, int], bool]], sizings: Sequence[Sizing]) -> list[tuple[int, int]]:
    """Pairs (row index, sizing index) that give each not-yet-sized image row the size an answer used.

    `rows`: a conversation's images before the answer, in order, as (original size, already sized);
    `sizings`: what the answer's stats list, also in conversation order. They are matched from the end (the
    question's own images come last) and a pair counts only if the original sizes agree; where an image was
    missing when the answer was made, a row falls back to the latest sizing of its original size.
    """
    pairs = []
    for back in range(1, len(rows) + 1):
        size, sized = rows[-back]
        if sized:
            continue  # an image keeps the size of the first answer about it
        index = len(sizings) - back
        if not (0 <= index < len(sizings) and sizings[index].original_size == size):
            index = next((i for i in reversed(range(len(sizings))) if sizings[i].original_size == size), -1)
        if index >= 0:
            pairs.append((len(rows) - back, index))
    return pairs


# ---- migrations: append only; each runs once, in order, inside one transaction ----
# 001 builds tables from today's ORM, so on a new database every later step must find its work done.

def _m001_initial(conn: Connection) -> None:
    Base.metadata.create_all(conn, tables=HISTORY_TABLES)


def _m002_message_model(conn: Connection) -> None:
    add_column(conn, Message.__table__.c.model_family)
    add_column(conn, Message.__table__.c.model)
    # Before 002 the app kept the model in the stats JSON; copy it out (the JSON itself is left as it was).
    messages = Message.__table__
    conn.execute(update(messages).where(messages.c.stats.is_not(None), messages.c.model_family.is_(None)).values(
        model_family=func.json_extract(messages.c.stats, "$.model_family"),
        model=func.json_extract(messages.c.stats, "$.model")))


def _m003_image_sizes(conn: Connection) -> None:
    for column in ("input_width", "input_height", "visual_tokens"):
        add_column(conn, MessageImage.__table__.c[column])
    conversations = conn.execute(select(Message.conversation_id).where(Message.role == "assistant").distinct())
    for (conversation_id,) in conversations.all():
        rows = conn.execute(
            select(MessageImage.message_id, MessageImage.position, Image.width, Image.height, Message.position)
            .join(Image, Image.sha256 == MessageImage.sha256).join(Message, Message.id == MessageImage.message_id)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.position, Message.id, MessageImage.position)).all()
        answers = conn.execute(select(Message.position, Message.stats).where(
            Message.conversation_id == conversation_id, Message.role == "assistant", Message.stats.is_not(None))
            .order_by(Message.position, Message.id)).all()
        sized: dict[tuple[int, int], Sizing] = {}
        for answer_position, stats in answers:
            before = [row for row in rows if row[4] < answer_position]
            sizings = Stats.from_dict(stats if isinstance(stats, dict) else None).images
            for row_index, sizing_index in match_sizes([((r[2], r[3]), (r[0], r[1]) in sized) for r in before],
                                                       sizings):
                sized[(before[row_index][0], before[row_index][1])] = sizings[sizing_index]
        for (message_id, position), sizing in sized.items():
            conn.execute(update(MessageImage).where(
                MessageImage.message_id == message_id, MessageImage.position == position).values(
                input_width=sizing.input_size[0], input_height=sizing.input_size[1],
                visual_tokens=sizing.visual_tokens))


def _m004_conversation_ids_never_reused(conn: Connection) -> None:
    # SQLite cannot add AUTOINCREMENT to a table: rebuild it (migrate() runs this step with foreign keys off, or
    # dropping the old table would delete every message through ON DELETE CASCADE).
    sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'conversations'").scalar()
    if "AUTOINCREMENT" in (sql or "").upper():
        return
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("rebuilding the conversations table needs foreign keys off")
    table = Conversation.__table__
    ddl = str(CreateTable(table).compile(dialect=conn.dialect))
    conn.exec_driver_sql(ddl.replace(f"CREATE TABLE {table.name} ", f"CREATE TABLE {table.name}_new ", 1))
    columns = ", ".join(column.name for column in table.columns)
    conn.exec_driver_sql(f"INSERT INTO {table.name}_new ({columns}) SELECT {columns} FROM {table.name}")
    conn.exec_driver_sql(f"DROP TABLE {table.name}")
    conn.exec_driver_sql(f"ALTER TABLE {table.name}_new RENAME TO {table.name}")
    for index in table.indexes:
        index.create(conn)
    if conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
        raise RuntimeError("the rebuilt conversations table breaks a foreign key")


def _m005_user_settings(conn: Connection) -> None:
    Base.metadata.create_all(conn, tables=[UserSettings.__table__])


def _m006_message_weights(conn: Connection) -> None:
    # Answers stored before 006 keep NULL: which format and adapter they came from was not recorded.
    add_column(conn, Message.__table__.c.weights_format)
    add_column(conn, Message.__table__.c.adapter)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial", _m001_initial),
    ("002_message_model", _m002_message_model),
    ("003_image_sizes", _m003_image_sizes),
    ("004_conversation_ids_never_reused", _m004_conversation_ids_never_reused),
    ("005_user_settings", _m005_user_settings),
    ("006_message_weights", _m006_message_weights),
]
TABLE_REBUILDS = {"004_conversation_ids_never_reused"}  # steps run with foreign keys off
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(engine: Engine) -> list[str]:
    """Apply the migrations this database has not seen yet; return their names."""
    with engine.begin() as conn:
        Base.metadata.create_all(conn, tables=[Migration.__table__])
    applied = []
    for version, (name, step) in enumerate(MIGRATIONS, start=1):
        with engine.connect() as conn:
            rebuild = name in TABLE_REBUILDS
            if rebuild:  # set before the transaction begins: inside one, SQLite ignores this pragma
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    # Checked inside the write transaction: a second process opening the database at the same
                    # moment waits for this one and then finds the step done.
                    if conn.scalar(select(Migration.name).where(Migration.name == name)) is not None:
                        continue
                    step(conn)
                    conn.execute(Migration.__table__.insert().values(name=name, applied_at=time.time()))
                    conn.exec_driver_sql(f"PRAGMA user_version = {version}")
            finally:
                if rebuild:
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
        applied.append(name)
    return applied


def schema_version(engine: Engine) -> int:
    """The number of migrations applied to this database."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar())


READS = "vlassist_reads"  # execution option: this connection only reads


def open_engine(path: Path | str, read_only: bool = False, immutable: bool = False) -> Engine:
    """A SQLAlchemy engine on a SQLite file: WAL, busy timeout, foreign keys, write-ready transactions.

    `read_only` opens an existing file for reading only (a read-only folder or mount): no WAL switch, no
    write locks, and SQLite refuses every write. `immutable` also skips the WAL index, which a read-only folder
    cannot hold (nobody can be writing there anyway).
    """
    url = f"sqlite:///file:{path}?mode=ro{'&immutable=1' if immutable else ''}&uri=true" if read_only \
        else f"sqlite:///{path}"
    engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy emit BEGIN itself, so a write transaction takes its lock at once instead of
        # failing on a lock upgrade when two sessions write at the same moment.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not read_only:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Reads (READS option) take no write lock: in WAL mode they then never wait for, nor block, a writer.
        reading = read_only or conn.get_execution_options().get(READS, False)
        conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


def empty_engine() -> Engine:
    """An in-memory database with the current schema: the history of a read-only folder that has none."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    migrate(engine)
    return engine
