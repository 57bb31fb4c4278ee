"""Stored conversations as answer jobs: the question and a placeholder answer are stored first, the text follows."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

from cachetools import LRUCache

from vlassist.answers.prompts import json_question
from vlassist.conversation import GenerationOptions, Stats, Turn
from vlassist.errors import ImageError, VlassistError
from vlassist.images import LoadedImage, load_image
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job, Outcome, Request
from vlassist.store.history import NewImage, OwnerStore, StoredConversation, make_title

PERSIST_EVERY_S = 1.0  # a crash loses at most about this much of a streaming answer…
PERSIST_EVERY_CHUNKS = 24  # …or this many chunks (about one token each), whichever comes first
STATUS = {"complete": "complete", "stopped": "interrupted", "failed": "error"}
# Decoded images kept by content hash, so follow-ups do not decode them again. Bounded by their pixels, not their
# number: sixteen cheap 49 MP uploads would otherwise keep 2.4 GB for the life of the process.
DECODED_BYTES = 256 * 2**20


def decoded_size(image: LoadedImage) -> int:
    """Bytes an image's decoded pixels take."""
    return image.image.width * image.image.height * len(image.image.getbands())


def decoded_cache(max_bytes: int = DECODED_BYTES) -> LRUCache:
    """An LRU of decoded images (by sha256) holding at most `max_bytes` of pixels."""
    return LRUCache(maxsize=max_bytes, getsizeof=decoded_size)


_decoded: LRUCache = decoded_cache()
_decoded_lock = threading.Lock()


def remember_decoded(image: LoadedImage, cache: LRUCache | None = None) -> None:
    """Keep a just-decoded image, so building the turns of its conversation does not decode it again."""
    cache = _decoded if cache is None else cache
    if decoded_size(image) > cache.maxsize:
        return  # larger than the whole cache: decoded again when needed
    with _decoded_lock:
        cache[image.sha256] = image


def stored_image(store: OwnerStore, sha256: str, name: str, original: bool = False) -> LoadedImage | None:
    """A stored image, decoded (cached by content hash); None if it cannot be read back.

    The cache may hold a copy kept at its model-input size (enough for the model's turns); `original` asks for the
    full-resolution pixels (boxes drawn in original pixels, zoom crops), which then replace that copy.
    """
    with _decoded_lock:
        image = _decoded.get(sha256)
    if image is None or (original and image.original_size is not None):
        data = store.image_data(sha256)
        if data is None:
            return None
        try:
            image = load_image(data, name)
        except ImageError:
            return None
        remember_decoded(image)
    return image


def build_turns(conversation: StoredConversation, store: OwnerStore, upto: int | None = None) -> list[Turn]:
    """The conversation as model turns, up to and including message `upto`; failed and empty answers left out."""
    turns = []
    for message in conversation.messages:
        if message.role == "assistant":
            if message.status != "error" and message.text:
                turns.append(Turn("assistant", message.text))
        else:
            images = [stored_image(store, ref.sha256, ref.name) for ref in message.images]
            schema = (message.options or {}).get("json_schema")
            text = json_question(message.text, schema) if schema else message.text  # the model is told the schema
            turns.append(Turn("user", text, [image for image in images if image is not None]))
        if message.id == upto:
            break
    return turns


class StoreSink:
    """Writes a streaming answer into its stored message about once a second, and for good when it ends."""

    def __init__(self, store: OwnerStore, message_id: int):
        self.store = store
        self.message_id = message_id
        self._written_at = time.monotonic()
        self._chunks = 0

    def progress(self, text: str) -> None:
        """Store the text so far if a second or a few dozen chunks have passed since the last write."""
        self._chunks += 1
        if self._chunks >= PERSIST_EVERY_CHUNKS or time.monotonic() - self._written_at >= PERSIST_EVERY_S:
            self.store.update_answer(self.message_id, text)
            self._written_at, self._chunks = time.monotonic(), 0

    def finish(self, text: str, outcome: Outcome, stats: Stats) -> None:
        """Store the whole answer with its final status and stats."""
        self.store.update_answer(self.message_id, text, status=STATUS[outcome], stats=stats)


def ask(service: AnswerService, store: OwnerStore, conversation_id: int | None, text: str,
        images: Sequence[NewImage] = (), options: GenerationOptions = GenerationOptions(),
        preset: str | None = None, *, model_family: str | None = None, model: str | None = None,
        weights_format: str | None = None, adapter: str | None = None,
        title: str | None = None) -> Job:
    """Store the question and an empty answer after it, and queue the job that fills the answer in.

    With no conversation id a new conversation is started, titled `title` or after the question. Admission runs first,
    so a refused question stores nothing. Question and answer are stored before anything runs, so the history
    alternates question/answer whatever happens next: a crash leaves a running answer that the next start marks
    interrupted, a cancel leaves it stopped.
    """
    for new in images:
        remember_decoded(new.loaded)
    conversation = store.get_conversation(conversation_id) if conversation_id is not None else None
    so_far = build_turns(conversation, store) if conversation is not None else []
    service.admit(Request(so_far + [Turn("user", text, [new.loaded for new in images])], options))
    created = conversation is None
    if created:
        conversation_id = store.create_conversation(title or make_title(text))
    try:
        question_id, answer_id = store.add_question(conversation_id, text, images, preset=preset, options=options,
                                                    model_family=model_family, model=model,
                                                    weights_format=weights_format, adapter=adapter,
                                                    question_schema=options.json_schema if preset == "json" else None)
    except VlassistError:
        if created:  # leave no empty conversation behind a question that could not be stored
            with contextlib.suppress(VlassistError):
                store.delete(conversation_id)
        raise

    def turns() -> list[Turn]:
        current = store.get_conversation(conversation_id)
        if current is None:
            return []  # deleted while queued; the engine refuses an empty conversation
        return build_turns(current, store, upto=question_id)

    request = Request(turns, options, StoreSink(store, answer_id), conversation_id, answer_id)
    try:
        return service.submit(request, admitted=True)
    except Exception as exc:
        store.update_answer(answer_id, "", status="error", stats=Stats(stop_reason="error", error=str(exc)))
        raise
