"""The chat view: stored messages, live answers, the chat input, and sending a question as a job."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import replace

import streamlit as st

from vlassist.answers.prompts import preset_prompt
from vlassist.conversation import GenerationOptions, Stats
from vlassist.errors import ImageError, VlassistError
from vlassist.families import FAMILIES
from vlassist.images import Fit, LoadedImage, load_image
from vlassist.service import conversations
from vlassist.service.answering import AnswerService
from vlassist.service.models import answer_model
from vlassist.store.history import ImageRef, NewImage, OwnerStore, StoredConversation, StoredMessage
from vlassist.ui import attach, live, paste_drop, question_images, tasks, text_drafts, verbatim
from vlassist.ui.results import guess_view, render_view

CHAT_KEY = tasks.CHAT_KEY
CONVERSATION_KEY = "conversation_id"
STRUCTURED = ("json", "grounding", "table", "chart", "html")
BOX_FAMILIES = frozenset(FAMILIES)  # every supported family answers grounding with boxes
VIEW_LABELS = {"grounding": "Boxes", "html": "HTML", "table": "Table"}  # views a free answer can be given


# ---- small helpers kept out of the page flow ----

def open_conversation(store: OwnerStore) -> StoredConversation | None:
    """The conversation this session has open, kept in the address (?c=) so a reload reopens it."""
    if CONVERSATION_KEY not in st.session_state:  # a new session (first visit or reload): take it from the URL
        wanted = st.query_params.get("c", "")
        st.session_state[CONVERSATION_KEY] = int(wanted) if wanted.isdigit() else None
    conversation_id = st.session_state[CONVERSATION_KEY]
    conversation = store.get_conversation(conversation_id) if conversation_id is not None else None
    if conversation is None:
        st.session_state[CONVERSATION_KEY] = None  # deleted elsewhere, another user's, or never started
        st.query_params.pop("c", None)
    else:
        st.query_params["c"] = str(conversation.id)
    return conversation


FLASH_ICONS = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:",
               "success": ":material/check_circle:"}


def flash(kind: str, text: str) -> None:
    """Leave a message ("error", "warning", "info" or "success") for the next run, which reruns right after."""
    st.session_state["flash"] = (kind, text)


def show_flash() -> None:
    """Show, once, a message left by the previous run, where it is called: inline, just above the chat box.

    A refusal is read where the user just typed, not at the top of a long conversation scrolled out of view; it is
    shown in that one place (a toast on top of it would say the same thing twice and cover the page).
    """
    item = st.session_state.pop("flash", None)
    if item:
        kind, text = item
        getattr(st, kind)(text, icon=FLASH_ICONS.get(kind))


def restore_pending_text() -> None:
    """Put back a question that could not be sent, so the user does not have to type it again."""
    text = st.session_state.pop("restore_text", None)
    if text:
        st.session_state[CHAT_KEY] = text


def stats_caption(stats: Stats | None) -> str:
    """One line about what an answer cost: time to first token, speed, tokens, visual tokens."""
    if not stats:
        return ""
    parts = []
    if stats.queued_s >= 0.5:
        parts.append(f"queued {stats.queued_s:.1f} s")
    if stats.new_tokens:
        parts.append(f"first token {stats.ttft_s:.2f} s")
        parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    if stats.new_tokens or stats.prompt_tokens:  # a failed answer that never started counted nothing: say nothing
        parts.append(f"{stats.new_tokens} tokens")
        parts.append(f"prompt {stats.prompt_tokens} ({stats.visual_tokens} visual)")
    if stats.total_s:
        parts.append(f"{stats.total_s:.1f} s total")
    if stats.stop_reason == "length":
        parts.append("cut at the answer length")
    if stats.batch_rows > 1:
        parts.append(f"decoded together with up to {stats.batch_rows - 1} other answer"
                     f"{'s' if stats.batch_rows > 2 else ''}")
    return " · ".join(parts)


def image_caption(name: str, size: tuple[int, int], fmt: str, engine, options: GenerationOptions) -> str:
    """Original size and format, and the size and visual tokens the model sees under the current settings."""
    sizing = engine.plan(size, options)
    (w, h), (iw, ih) = size, sizing.input_size
    return f"{name} · {w}×{h} {fmt} → model sees {iw}×{ih} ({sizing.visual_tokens} visual tokens)"


def stored_image_caption(ref: ImageRef) -> str:
    """Original size and format, and the size and visual tokens stored with the answer (whatever model runs now)."""
    (w, h), (iw, ih) = ref.size, ref.sizing.input_size
    return (f"{ref.name} · {w}×{h} {ref.format} → model saw {iw}×{ih} ({ref.sizing.visual_tokens} visual tokens)")


# ---- rendering ----

def render_user_message(message: StoredMessage, store: OwnerStore, engine, options: GenerationOptions) -> None:
    """A user's turn: the images first, then the question."""
    with st.chat_message("user"):
        question_images.render(message.images, store, engine, options)
        if message.text:
            verbatim.show_plain(message.text, css_class="vl-question")
        tasks.render_question_schema(message)


def render_assistant_message(message: StoredMessage,
                             images: Callable[[], list[dict]] | None = None) -> dict | None:
    """The body of one stored answer, its structured view, status and stats; return a zoom-in request or None.

    Every answer on the page is drawn here. `images` gives, when called, the question's images with their
    sizes (only answers with boxes call it, so other answers never decode an image).
    """
    with st.chat_message("assistant"):
        text = st.container()  # filled once the view is drawn: the text is folded away only when a view shows
        view = result_view(message)
        shown, request = _render_view(message, view, images) if view else (False, None)
        if message.text:
            with text:
                if shown and message.status == "complete" and _stop_reason(message) not in ("length", "stopped"):
                    # The view (table, fields, boxes, page) already shows what the text says: keep it one click away.
                    with st.expander("Answer text", expanded=False, icon=":material/notes:"):
                        verbatim.render_answer_text(message.text, message.preset, f"msg{message.id}")
                else:
                    verbatim.render_answer_text(message.text, message.preset, f"msg{message.id}")
        if message.status == "interrupted":
            st.caption(":material/stop_circle: Stopped — partial answer")
        elif message.status == "error":
            reason = (message.stats.error if message.stats else None) or "unknown error"
            st.error(f"The answer failed: {reason}")
        caption = stats_caption(message.stats)
        if caption:
            st.caption(caption)
    return request


def result_view(message: StoredMessage) -> str | None:
    """Which structured view an answer gets: its preset's, else what a free answer looks like (or None)."""
    if message.status == "error" or not message.text:
        return None
    if message.preset in STRUCTURED:
        return message.preset
    return guess_view(message.text)


def _stop_reason(message: StoredMessage) -> str:
    if message.status == "interrupted":
        return "stopped"
    return (message.stats.stop_reason if message.stats else None) or "eos"


def _render_view(message: StoredMessage, view: str,
                 images: Callable[[], list[dict]] | None) -> tuple[bool, dict | None]:
    """Draw an answer's structured view; return (it stands in for the text, zoom-in request or None)."""
    options = message.options or {}
    if view == "grounding" and message.model_family not in BOX_FAMILIES:
        st.caption("Boxes cannot be placed: this answer does not record which model family wrote it.")
        return False, None
    args = dict(family=message.model_family or "", stop_reason=_stop_reason(message), key=f"msg{message.id}",
                images=images() if images and view == "grounding" else [], schema=options.get("json_schema"))
    if message.preset in STRUCTURED:
        return render_view(view, message.text, **args)
    # A free answer that happens to hold boxes, a page or a table: offer the view without crowding the text,
    # which stays the answer (so it is not folded away).
    with st.expander(f"{VIEW_LABELS[view]} view", expanded=view == "grounding"):
        return False, render_view(view, message.text, **args)[1]


def result_images(refs: list[ImageRef], store: OwnerStore) -> list[dict]:
    """The question's images for an answer's view: decoded originals and the sizes the model saw them at."""
    images = []
    for ref in refs:
        if ref.sizing is None:
            continue  # no answer recorded this image's model-input size: no coordinates to map boxes with
        images.append({"original_size": ref.size, "input_size": ref.sizing.input_size,
                       "image": _load_stored(ref, store), "name": ref.name})
    return images


def _load_stored(ref: ImageRef, store: OwnerStore) -> LoadedImage | None:
    return conversations.stored_image(store, ref.sha256, ref.name, original=True)


def render_conversation(conversation: StoredConversation | None, store: OwnerStore, engine,
                        options: GenerationOptions, service: AnswerService,
                        following: list[live.LiveAnswer]) -> dict | None:
    """Every stored message of the open conversation, in order; return a zoom-in request made on this run.

    An answer still being written gets a placeholder, added to `following`, that `live.follow()` keeps current
    once the rest of the page is drawn; nothing here waits for it.
    """
    if conversation is None:
        st.caption("Paste a screenshot (Ctrl+V in the box below), drop or attach images, pick a task or "
                   "type a question.")
        return None
    question: list[ImageRef] = []  # the images of the latest question that had any (follow-ups ask about them)
    request = None
    for message in conversation.messages:
        if message.role == "user":
            render_user_message(message, store, engine, options)
            if message.images:
                question = message.images
        elif message.status == "running":
            job = service.job_for_message(message.id)
            if job is None:
                live.render_orphan(message.text)
            elif job.done and job.saved is False:
                live.render_unsaved(job)
            elif job.done:
                st.rerun()  # it ended while this run read the history: read it again
            else:
                following.append(live.render_job(service, job, engine.info.device))
        else:
            zoom = render_assistant_message(message, lambda q=question: result_images(q, store))
            request = request or zoom
    return request


def chat_input():
    """The chat box: text plus any number of images or PDFs, from the file picker, drag and drop, or a paste."""
    text_drafts.keep_drafts()  # unsent text stays with its conversation
    paste_drop.route_files_to_tray()  # pasted, dropped and chosen files show their sizes before Send
    return st.chat_input("Ask about your images — paste a screenshot with Ctrl+V, or drop or attach files",
                         key=CHAT_KEY, accept_file="multiple", file_type=attach.FILE_TYPES)


# ---- asking ----

def read_attachments(files, fit: Fit | None = None) -> tuple[list[NewImage], list[str]]:
    """Decode the chat box's files: the usable images (a PDF's pages) and one message per file that is not.

    A PDF longer than the page limit is not sent whole: it goes to the attach area, where its pages are picked.
    """
    images, problems = [], []
    for upload in files:
        try:
            item = attach.open_file(attach.pasted_name(upload.name), upload.getvalue(), fit)
            if item.image:
                images.append(item.image)
            elif item.pages > attach.MAX_PAGES:
                attach.add(item)
                problems.append(f"{item.name} has {item.pages} pages and at most {attach.MAX_PAGES} go with one "
                                "question: it is attached above the box, pick its pages there")
            else:
                images += attach.page_images(item, list(range(1, item.pages + 1)))
        except ImageError as exc:
            problems.append(str(exc))
    return images, problems


def _refuse(message: str, text: str, images: list[NewImage]) -> None:
    flash("error", message)
    st.session_state["restore_text"] = text
    attach.hold(images)  # attachments cannot be put back in the chat box: they wait in the attach area
    st.rerun()


def ask(submission, engine, service: AnswerService, store: OwnerStore, options: GenerationOptions) -> None:
    """Queue the user's question (text, attachments, the chosen preset) and rerun to show it waiting or streaming."""
    text = (submission.text or "").strip()
    fit = attach.fitting(engine, options)  # images are kept at their model-input size only
    boxed, problems = read_attachments(submission.files or [], fit)  # the chat box's own files (a paste, a drop)
    if problems:
        _refuse("Not sent — " + "; ".join(problems) + ". Your question is back in the box and the usable files "
                "wait above it; send again.", text, boxed)
    try:
        images = attach.images(fit) + boxed
    except VlassistError as exc:
        _refuse(f"Not sent — {exc}", text, boxed)
    preset = st.session_state.get(tasks.PRESET_KEY)
    title = tasks.title_for(text, preset or ("describe" if not text else None), images)
    if not text and images:
        text, preset = preset_prompt("describe"), preset or "describe"
    if not text:
        flash("warning", "Type a question or attach an image.")
        st.rerun()
    if preset == "json":
        try:
            schema = tasks.chosen_schema()
        except VlassistError as exc:
            _refuse(f"Not sent — the JSON shape cannot be used: {exc}. Fix it under the presets and send "
                    "again; your question and images are kept.", text, boxed)
        options = replace(options, json_schema=schema)  # the text stays as typed; the schema goes as an option
    elif preset == "grounding" and engine.info.family in BOX_FAMILIES:
        options = replace(options, json_schema=tasks.grounding_schema(engine.info.family))
    st.session_state.pop(tasks.PRESET_KEY, None)
    st.session_state.pop(tasks.FILLED_KEY, None)
    attach.clear()  # the images go with the question now; a refused send puts them back
    send(text, images, preset, engine, service, store, options, title=title)


def ask_zoom(request: dict, engine, service: AnswerService, store: OwnerStore, options: GenerationOptions) -> None:
    """Ask about a zoomed-in region as a follow-up turn: its full-resolution crop attached as a new image."""
    buf = io.BytesIO()
    request["image"].save(buf, "PNG")  # lossless, so the model reads the region exactly as the original shows it
    data = buf.getvalue()
    label = re.sub(r"[^\w-]+", "-", request["box"].label or "").strip("-")[:40] or "region"
    name = f"zoom-{label}.png"
    send(request["prompt"], [NewImage(data, load_image(data, name), name)], None, engine, service, store,
         replace(options, json_schema=None))


def send(text: str, images: list[NewImage], preset: str | None, engine, service: AnswerService,
         store: OwnerStore, options: GenerationOptions, title: str | None = None) -> None:
    """Store the question with a waiting answer (a new conversation if none is open), queue its job, rerun.

    The answer is written by the answer service, not by this script run: Stop, another send, a reload or a
    closed tab cannot lose or garble it. A request the service refuses stores nothing and gives the text back.
    """
    conversation_id = st.session_state.get(CONVERSATION_KEY)
    if conversation_id is not None and store.get_conversation(conversation_id) is None:
        conversation_id = None  # deleted in another tab: start a new one
    try:
        job = conversations.ask(service, store, conversation_id, text, images, options, preset,
                                title=title, **answer_model(engine))
        st.session_state[CONVERSATION_KEY] = job.request.conversation_id
    except VlassistError as exc:
        _refuse(f"Not sent — {exc}", text, images)
    st.rerun()
