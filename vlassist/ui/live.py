"""Answers being written elsewhere (the answer service), shown live: queue position, thinking, text, Stop.

Each live answer gets a placeholder where the conversation is drawn; after the rest of the page is drawn,
`follow()` refreshes the placeholders from their jobs until every one has ended, then reruns the page to show
them as stored. Any click, send or reload interrupts that loop, which is harmless: the jobs run in the service,
not in this script run. (A fragment on a timer would rerun Streamlit's per-run machinery several times a second,
which on a small CPU starves the thread generating the answer of the interpreter lock; redrawing placeholders
from one loop costs almost nothing.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st

from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job
from vlassist.ui import verbatim

POLL_S = 0.15  # how often placeholders are checked; they are redrawn only when what they show has changed
THINKING = "Thinking…"  # shown from the moment a job starts until its first token


@dataclass
class LiveAnswer:
    """A placeholder on the page and the job whose progress it shows."""

    job_id: str
    body: object  # the st.empty() placeholder


def _view(service: AnswerService, job: Job, device: str) -> tuple:
    """What a live answer shows now, as a comparable value: queue position, thinking, or the text so far.

    There is never an empty bubble: from the send until the first token it says where the job is.
    """
    position = service.position(job) if job.state == "queued" else 0
    if job.state == "queued" and position:
        what = "the GPU" if device == "cuda" else "the model"
        text = f"Waiting — position {position} in the queue for {what}"
        estimate = service.estimate_s(job)
        if estimate is not None:
            text += f", starts in about {max(1, round(estimate))} s"
        return ("queued", text + ".")
    if not job.text:  # starting (out of the queue), reading the images, or prefilling the prompt
        return ("thinking", THINKING)
    return ("text", job.text + " ▍")


def _draw(body, view: tuple) -> None:
    kind, text = view
    if kind == "queued":
        body.info(text, icon=":material/hourglass_top:")
    elif kind == "thinking":
        body.markdown(f":gray[:material/progress_activity: {text}]")
    else:
        verbatim.show_raw(text, where=body)  # as written so far, never read as Markdown


def render_job(service: AnswerService, job: Job, device: str) -> LiveAnswer:
    """A live answer's bubble: its current state in a placeholder, and a Stop button."""
    with st.chat_message("assistant"):
        body = st.empty()
        _draw(body, _view(service, job, device))
        st.button("Stop", key=f"stop_{job.id}", icon=":material/stop_circle:", on_click=service.cancel,
                  args=(job.id,), help="End this answer now; the text so far is kept")
    return LiveAnswer(job.id, body)


def render_unsaved(job: Job) -> None:
    """An answer that ended but whose final text the history did not take (e.g. the disk filled up)."""
    with st.chat_message("assistant"):
        verbatim.show_raw(job.text)
        st.warning("This answer could not be saved to the history; copy it if you need it.")


def render_orphan(text: str) -> None:
    """A stored answer marked running that no job of this server process fills in (another process writes it)."""
    with st.chat_message("assistant"):
        if text:
            verbatim.show_raw(text)
        st.caption("Being written by another vlassist process; reload to see more.")


def follow(answers: list[LiveAnswer], service: AnswerService, device: str) -> None:
    """Keep the live answers' placeholders current until all have ended, then rerun to show them stored."""
    if not answers:
        return
    shown: dict[str, tuple] = {}
    while True:
        running = False
        for answer in answers:
            job = service.get(answer.job_id)
            if job is None or job.done:
                continue
            running = True
            view = _view(service, job, device)
            if shown.get(answer.job_id) != view:
                _draw(answer.body, view)
                shown[answer.job_id] = view
        if not running:
            st.rerun()
        time.sleep(POLL_S)
