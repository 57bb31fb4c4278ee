"""The chat view: stored messages, task presets, the chat input, and a streamed, recorded answer."""

from __future__ import annotations

import threading
from collections import OrderedDict

import streamlit as st

from ..conversation import GenerationOptions, Turn
from ..errors import ImageError, VlassistError
from ..history import NewImage, OwnerStore, StoredConversation, StoredMessage, make_title
from ..images import LoadedImage, load_image
from ..prompts import PRESETS, preset_prompt
from .recording import AnswerRecorder
from .settings_panel import set_decoding

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]
CHAT_KEY = "chat_input"
CONVERSATION_KEY = "conversation_id"
_DECODED_CACHE_SIZE = 16


class _DecodedImages:
    """A small process-wide LRU of decoded images by sha256, so follow-ups do not decode every image again."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, LoadedImage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, load) -> LoadedImage:
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return self._items[sha256]
        image = load()
        self.put(image)
        return image

    def put(self, image: LoadedImage) -> None:
        with self._lock:
            self._items[image.sha256] = image
            self._items.move_to_end(image.sha256)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_decoded = _DecodedImages(_DECODED_CACHE_SIZE)


# ---- small helpers kept out of the page flow ----

def flash(kind: str, text: str) -> None:
    """Show a message at the top of the next run (errors survive the rerun that follows them)."""
    st.session_state["flash"] = (kind, text)


def show_flash() -> None:
    """Show, once, a message left by the previous run."""
    item = st.session_state.pop("flash", None)
    if item:
        getattr(st, item[0])(item[1])


def restore_pending_text() -> None:
    """Put back a question that could not be sent, so the user does not have to type it again."""
    text = st.session_state.pop("restore_text", None)
    if text:
        st.session_state[CHAT_KEY] = text


def stats_caption(stats: dict | None) -> str:
    """One line about what an answer cost: time to first token, speed, tokens, visual tokens."""
    if not stats:
        return ""
    parts = []
    if stats.get("queued_s", 0) >= 0.5:
        parts.append(f"queued {stats['queued_s']:.1f} s")
    if stats.get("new_tokens"):
        parts.append(f"first token {stats.get('ttft_s', 0):.2f} s")
        parts.append(f"{stats.get('tokens_per_s', 0):.1f} tokens/s")
    parts.append(f"{stats.get('new_tokens', 0)} tokens")
    parts.append(f"prompt {stats.get('prompt_tokens', 0)} ({stats.get('visual_tokens', 0)} visual)")
    if stats.get("total_s"):
        parts.append(f"{stats['total_s']:.1f} s total")
    if stats.get("stop_reason") == "length":
        parts.append("cut at the answer length")
    return " · ".join(parts)


def image_caption(name: str, size: tuple[int, int], fmt: str, engine, options: GenerationOptions) -> str:
    """Original size and format, and the size and visual tokens the model sees under the current settings."""
    sizing = engine.plan(size, options)
    (w, h), (iw, ih) = size, sizing.input_size
    return f"{name} · {w}×{h} {fmt} → model sees {iw}×{ih} ({sizing.visual_tokens} visual tokens)"


# ---- rendering ----

def render_images(refs, store: OwnerStore, engine, options: GenerationOptions) -> None:
    """Thumbnails of a message's images with their sizes."""
    if not refs:
        return
    columns = st.columns(min(len(refs), 3))
    for i, ref in enumerate(refs):
        with columns[i % len(columns)]:
            thumb = store.thumbnail(ref.sha256)
            caption = image_caption(ref.name, ref.size, ref.format, engine, options)
            if thumb:
                st.image(thumb, caption=caption)
            else:
                st.caption(caption)


def render_user_message(message: StoredMessage, store: OwnerStore, engine, options: GenerationOptions) -> None:
    """A user's turn: the images first, then the question."""
    with st.chat_message("user"):
        render_images(message.images, store, engine, options)
        if message.text:
            st.markdown(message.text)


def render_assistant_message(message: StoredMessage) -> None:
    """The body of one stored answer, its status and stats. Every answer on the page is drawn here."""
    with st.chat_message("assistant"):
        if message.text:
            st.markdown(message.text)
        if message.status == "interrupted":
            st.caption("⏹ Stopped — partial answer")
        elif message.status == "error":
            reason = (message.stats or {}).get("error") or "unknown error"
            st.error(f"The answer failed: {reason}")
        caption = stats_caption(message.stats)
        if caption:
            st.caption(caption)


def render_conversation(conversation: StoredConversation | None, store: OwnerStore, engine,
                        options: GenerationOptions) -> None:
    """Every stored message of the open conversation, in order."""
    if conversation is None:
        st.caption("Paste a screenshot (Ctrl+V in the box below), drop or attach images, pick a task or "
                   "type a question.")
        return
    for message in conversation.messages:
        if message.role == "user":
            render_user_message(message, store, engine, options)
        else:
            render_assistant_message(message)


def _use_preset(key: str) -> None:
    st.session_state[CHAT_KEY] = preset_prompt(key)
    st.session_state["active_preset"] = key
    set_decoding(PRESETS[key].precise)


def render_presets() -> None:
    """One button per task preset; a click puts its prompt in the chat box to edit or send."""
    columns = st.columns(len(PRESETS))
    for column, preset in zip(columns, PRESETS.values()):
        column.button(preset.label, key=f"preset_{preset.key}", on_click=_use_preset, args=(preset.key,),
                      width="stretch")


def chat_input():
    """The chat box: text plus any number of images, from the file picker, drag and drop, or a paste."""
    return st.chat_input("Ask about your images — paste a screenshot with Ctrl+V, or drop or attach files",
                         key=CHAT_KEY, accept_file="multiple", file_type=IMAGE_TYPES, submit_mode="stop")


# ---- asking ----

def read_attachments(files) -> tuple[list[NewImage], list[str]]:
    """Decode the uploaded files: the usable images and one message per file that is not."""
    images, problems = [], []
    for upload in files:
        data = upload.getvalue()
        try:
            images.append(NewImage(data, load_image(data, upload.name), upload.name))
        except ImageError as exc:
            problems.append(str(exc))
    return images, problems


def build_turns(conversation: StoredConversation, store: OwnerStore) -> list[Turn]:
    """The conversation as engine turns; failed answers are left out, images decoded (cached)."""
    turns = []
    for message in conversation.messages:
        if message.role == "assistant":
            if message.status != "error" and message.text:
                turns.append(Turn("assistant", message.text))
            continue
        images = []
        for ref in message.images:
            data = store.image_data(ref.sha256)
            if data is not None:
                images.append(_decoded.get(ref.sha256, lambda d=data, n=ref.name: load_image(d, n)))
        turns.append(Turn("user", message.text, images))
    return turns


def ask(submission, engine, store: OwnerStore, options: GenerationOptions, area) -> None:
    """Save the user's turn, stream the answer into `area`, save the answer, and rerun the page."""
    text = (submission.text or "").strip()
    images, problems = read_attachments(submission.files or [])
    if problems:
        flash("error", "Not sent — " + "; ".join(problems) + ". Your question is back in the box; attach "
              "valid images and send again.")
        st.session_state["restore_text"] = text
        st.rerun()
    preset = st.session_state.pop("active_preset", None)
    if not text and images:
        text, preset = preset_prompt("describe"), preset or "describe"
    if not text:
        flash("warning", "Type a question or attach an image.")
        st.rerun()
    for new in images:
        _decoded.put(new.loaded)

    conversation_id = st.session_state.get(CONVERSATION_KEY)
    if conversation_id is None or store.get_conversation(conversation_id) is None:
        conversation_id = store.create_conversation(make_title(text))
        st.session_state[CONVERSATION_KEY] = conversation_id
    # The question is stored before generation starts: a crash or a closed tab never loses it.
    store.add_user_message(conversation_id, text, images)
    conversation = store.get_conversation(conversation_id)
    with area:
        render_user_message(conversation.messages[-1], store, engine, options)
        stream_answer(conversation, engine, store, options, preset)
    st.rerun()


def stream_answer(conversation: StoredConversation, engine, store: OwnerStore, options: GenerationOptions,
                  preset: str | None) -> None:
    """Stream the answer to the conversation's last question and store it however the stream ends."""
    turns = build_turns(conversation, store)
    with st.chat_message("assistant"):
        waiting = st.empty()
        reply = engine.stream(turns, options, on_queued=lambda: waiting.info(
            "Waiting for the GPU — another answer is being generated; yours starts right after.", icon="⏳"))
        recorder = AnswerRecorder(reply, store, conversation.id, options=options, preset=preset,
                                  model={"model_family": engine.info.family, "model": engine.info.model_dir})

        def chunks():
            for i, chunk in enumerate(recorder.chunks()):
                if i == 0:
                    waiting.empty()
                yield chunk

        try:
            st.write_stream(chunks())
        except VlassistError:
            pass  # stored with status error below and shown from history after the rerun
        finally:
            # Runs on Stop, on a rerun from any widget, and on errors: the partial answer is always kept.
            recorder.finish()
