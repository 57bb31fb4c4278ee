"""One owner's conversations, images, answers and settings in the history database."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from sqlalchemy import Engine, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from vlassist.conversation import GenerationOptions, Stats
from vlassist.images import Sizing
from vlassist.store.faults import guarded
from vlassist.store.records import (
    FINAL_STATUSES,
    STATUSES,
    ConversationSummary,
    ImageRef,
    NewImage,
    StoredConversation,
    StoredMessage,
    make_thumbnail,
)
from vlassist.store.schema import (
    READS,
    Conversation,
    Image,
    Message,
    MessageImage,
    UserSettings,
    match_sizes,
)


def _sizing(link: MessageImage, original: tuple[int, int]) -> Sizing | None:
    if link.input_width is None or link.input_height is None:
        return None
    return Sizing(original, (link.input_width, link.input_height), link.visual_tokens or 0)


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class OwnerStore:
    """One owner's conversations. Every query here is filtered by that owner."""

    def __init__(self, engine: Engine, owner: str, folder: Path | None = None, read_only: bool = False):
        if not owner:
            raise ValueError("an owner is required")
        self.engine = engine
        self.owner = owner
        self.folder = folder  # named in storage error messages
        self.read_only = read_only
        self._reads = engine.execution_options(**{READS: True})  # sessions that only read: no write lock

    def _owned(self, session: Session, conversation_id: int) -> Conversation | None:
        return session.scalars(select(Conversation).where(
            Conversation.id == conversation_id, Conversation.owner == self.owner)).first()

    @guarded
    def get_settings(self) -> dict:
        """This owner's saved page settings ({} when none were saved)."""
        with Session(self._reads) as session:
            row = session.get(UserSettings, self.owner)
            return dict(row.values) if row is not None and isinstance(row.values, dict) else {}

    @guarded(write=True)
    def save_settings(self, values: dict) -> None:
        """Replace this owner's saved page settings."""
        with Session(self.engine) as session, session.begin():
            session.merge(UserSettings(owner=self.owner, values=dict(values), updated_at=time.time()))

    # ---- conversations ----

    @guarded(write=True)
    def create_conversation(self, title: str) -> int:
        """Start a conversation and return its id."""
        now = time.time()
        with Session(self.engine) as session, session.begin():
            row = Conversation(owner=self.owner, title=title[:200] or "Untitled", created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            return row.id

    @guarded
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
        with Session(self._reads) as session:
            return [ConversationSummary(c.id, c.title, c.created_at, c.updated_at) for c in session.scalars(query)]

    @guarded
    def get_conversation(self, conversation_id: int) -> StoredConversation | None:
        """A conversation with its messages and image references, or None if this owner has no such one."""
        with Session(self._reads) as session:
            conv = self._owned(session, conversation_id)
            if conv is None:
                return None
            messages = session.scalars(select(Message).where(Message.conversation_id == conv.id)
                                       .order_by(Message.position, Message.id)).all()
            refs: dict[int, list[ImageRef]] = {}
            rows = session.execute(
                select(MessageImage, Image.format, Image.width, Image.height, Image.nbytes)
                .join(Image, Image.sha256 == MessageImage.sha256)
                .join(Message, Message.id == MessageImage.message_id)
                .where(Message.conversation_id == conv.id)
                .order_by(MessageImage.message_id, MessageImage.position))
            for link, fmt, width, height, nbytes in rows:
                refs.setdefault(link.message_id, []).append(
                    ImageRef(link.sha256, link.name, fmt, width, height, nbytes, _sizing(link, (width, height))))
            return StoredConversation(conv.id, conv.owner, conv.title, conv.created_at, conv.updated_at, [
                StoredMessage(m.id, m.role, m.text, m.status, m.created_at, m.preset, m.options,
                              Stats.from_dict(m.stats) if m.stats is not None else None, refs.get(m.id, []),
                              m.model_family, m.model, m.weights_format, m.adapter)
                for m in messages])

    @guarded(write=True)
    def rename(self, conversation_id: int, title: str) -> bool:
        """Give a conversation a new title; False if this owner has no such conversation."""
        title = " ".join(title.split())[:200]
        if not title:
            raise ValueError("a title cannot be empty")
        with Session(self.engine) as session, session.begin():
            result = session.execute(update(Conversation).where(
                Conversation.id == conversation_id, Conversation.owner == self.owner).values(title=title))
            return result.rowcount > 0

    @guarded(write=True)
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

    @guarded(write=True)
    def add_user_message(self, conversation_id: int, text_: str, images: Sequence[NewImage] = ()) -> int:
        """Store the user's turn and its images (each image once, by sha256); return the message id."""
        # Encoded before the transaction: the write lock is held for the inserts only, not for image work.
        thumbs = {new.loaded.sha256: make_thumbnail(new.loaded.image) for new in images}
        with Session(self.engine) as session, session.begin():
            return self._insert_question(session, conversation_id, text_, images, thumbs).id

    @guarded(write=True)
    def add_question(self, conversation_id: int, text_: str, images: Sequence[NewImage] = (), *,
                     preset: str | None = None, options: GenerationOptions | dict | None = None,
                     model_family: str | None = None, model: str | None = None,
                     weights_format: str | None = None, adapter: str | None = None,
                     question_schema: str | None = None) -> tuple[int, int]:
        """Store a question and its empty "running" answer in one transaction (both or neither); their ids.

        `question_schema` is the JSON Schema the user chose for the question; it is kept beside the question's
        text (as its option) rather than written into it, so the text stays what the user typed.
        """
        thumbs = {new.loaded.sha256: make_thumbnail(new.loaded.image) for new in images}
        with Session(self.engine) as session, session.begin():
            question = self._insert_question(session, conversation_id, text_, images, thumbs)
            if question_schema is not None:
                question.options = {"json_schema": question_schema}
            answer = self._new_answer(session, conversation_id, "", "running", preset, options, model_family, model,
                                      weights_format, adapter)
            return question.id, answer.id

    def _insert_question(self, session: Session, conversation_id: int, text_: str, images: Sequence[NewImage],
                         thumbs: dict[str, bytes]) -> Message:
        now = time.time()
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
                                  nbytes=len(new.data), data=new.data, thumbnail=thumbs[sha], created_at=now))
                session.flush()
            session.add(MessageImage(message_id=message.id, position=position, sha256=sha,
                                     name=(new.name or f"image-{position + 1}")[:255]))
        conv.updated_at = now
        return message

    @guarded(write=True)
    def add_assistant_message(self, conversation_id: int, text_: str, status: str, *, preset: str | None = None,
                              options: GenerationOptions | dict | None = None, stats: Stats | None = None,
                              model_family: str | None = None, model: str | None = None,
                              weights_format: str | None = None, adapter: str | None = None) -> int:
        """Store a finished answer with its status, preset, options, stats and model; return its id."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        with Session(self.engine) as session, session.begin():
            message = self._new_answer(session, conversation_id, text_, status, preset, options, model_family, model,
                                       weights_format, adapter)
            if stats is not None:
                self._set_stats(session, message, stats)
            return message.id

    @guarded(write=True)
    def start_answer(self, conversation_id: int, *, preset: str | None = None,
                     options: GenerationOptions | dict | None = None, model_family: str | None = None,
                     model: str | None = None, weights_format: str | None = None, adapter: str | None = None) -> int:
        """Store an empty answer with status "running", to be filled by `update_answer`; return its id."""
        with Session(self.engine) as session, session.begin():
            return self._new_answer(session, conversation_id, "", "running", preset, options, model_family,
                                    model, weights_format, adapter).id

    @guarded(write=True)
    def update_answer(self, message_id: int, text_: str, *, status: str | None = None,
                      stats: Stats | None = None) -> bool:
        """Store an answer's text so far, and its status and stats when given; False if this owner has no such one.

        Called about once a second while an answer streams, so it is one short transaction.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        with Session(self.engine) as session, session.begin():
            message = session.scalars(select(Message).join(Conversation).where(
                Message.id == message_id, Message.role == "assistant", Conversation.owner == self.owner)).first()
            if message is None:
                return False  # deleted while it was being written: nothing to keep
            message.text = text_
            if status is not None:
                message.status = status
                if status != "running":
                    session.execute(update(Conversation).where(Conversation.id == message.conversation_id)
                                    .values(updated_at=time.time()))
            if stats is not None:
                self._set_stats(session, message, stats)
            return True

    def _new_answer(self, session: Session, conversation_id: int, text_: str, status: str, preset: str | None,
                    options: GenerationOptions | dict | None, model_family: str | None,
                    model: str | None, weights_format: str | None = None, adapter: str | None = None) -> Message:
        now = time.time()
        conv = self._require(session, conversation_id)
        if isinstance(options, GenerationOptions):
            options = asdict(options)
        message = Message(conversation_id=conv.id, position=self._next_position(session, conv.id),
                          role="assistant", text=text_, status=status, preset=preset, options=options,
                          model_family=model_family, model=model, weights_format=weights_format, adapter=adapter,
                          created_at=now)
        session.add(message)
        conv.updated_at = now
        session.flush()
        return message

    @staticmethod
    def _set_stats(session: Session, message: Message, stats: Stats) -> None:
        """Store an answer's stats and give the conversation's unsized images the sizes it lists."""
        message.stats = stats.to_dict()
        if not stats.images:
            return
        # The stats list every image of the conversation up to the answered question, in order.
        rows = session.execute(
            select(MessageImage, Image.width, Image.height)
            .join(Image, Image.sha256 == MessageImage.sha256).join(Message, Message.id == MessageImage.message_id)
            .where(Message.conversation_id == message.conversation_id, Message.position < message.position)
            .order_by(Message.position, Message.id, MessageImage.position)).all()
        pairs = match_sizes([((w, h), link.input_width is not None) for link, w, h in rows], stats.images)
        for row_index, sizing_index in pairs:
            link, sizing = rows[row_index][0], stats.images[sizing_index]
            link.input_width, link.input_height = sizing.input_size
            link.visual_tokens = sizing.visual_tokens

    # ---- images ----

    @guarded
    def image_data(self, sha256: str) -> bytes | None:
        """The original bytes of an image this owner has attached somewhere, else None."""
        return self._image_column(Image.data, sha256)

    @guarded
    def thumbnail(self, sha256: str) -> bytes | None:
        """The JPEG thumbnail of an image this owner has attached somewhere, else None."""
        return self._image_column(Image.thumbnail, sha256)

    def _image_column(self, column, sha256: str) -> bytes | None:
        query = (select(column).join(MessageImage, MessageImage.sha256 == Image.sha256)
                 .join(Message, Message.id == MessageImage.message_id)
                 .join(Conversation, Conversation.id == Message.conversation_id)
                 .where(Image.sha256 == sha256, Conversation.owner == self.owner).limit(1))
        with Session(self._reads) as session:
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
