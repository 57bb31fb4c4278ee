"""Answers being written elsewhere (the answer service), shown live: queue position, thinking, text, Stop."""

from __future__ import annotations

import streamlit as st

from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job

REFRESH_S = 0.4  # how often a live answer is redrawn; the text itself comes from the job, never from this run


def _wait_words(service: AnswerService, job: Job, device: str) -> str:
    what = "the GPU" if device == "cuda" else "the model"
    position = service.position(job)
    text = f"Waiting — position {position} in the queue for {what}"
    estimate = service.estimate_s(job)
    if estimate is not None:
        text += f", starts in about {max(1, round(estimate))} s"
    return text + "."


@st.fragment(run_every=REFRESH_S)
def render_job(service: AnswerService, job_id: str, device: str) -> None:
    """One answer in progress, redrawn on its own until it ends; then the page reruns to show it as stored."""
    job = service.get(job_id)
    if job is None or job.done:
        reran = st.session_state.setdefault("reran_for_jobs", set())
        if job_id not in reran:
            reran.add(job_id)
            st.rerun()  # the stored message now holds the final text and status
        if job is not None:  # still "running" in the store after a rerun: the final write failed
            with st.chat_message("assistant"):
                st.markdown(job.text)
                st.warning("This answer could not be saved to the history; copy it if you need it.")
        return
    with st.chat_message("assistant"):
        if job.state == "queued":
            st.info(_wait_words(service, job, device), icon=":material/hourglass_top:")
        elif not job.text:
            st.caption("Thinking…")
        else:
            st.markdown(job.text + " ▍")
        st.button("Stop", key=f"stop_{job_id}", icon=":material/stop_circle:", on_click=service.cancel,
                  args=(job_id,), help="End this answer now; the text so far is kept")


def render_orphan(text: str) -> None:
    """A stored answer marked running that no job of this server process fills in (another process writes it)."""
    with st.chat_message("assistant"):
        if text:
            st.markdown(text)
        st.caption("Being written by another vlassist process; reload to see more.")
