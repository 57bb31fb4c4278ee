"""Per-process resources (model, history database) and the checks a page makes before it draws."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from vlassist.config import Settings, load_settings
from vlassist.errors import ConfigError, ModelNotFoundError, StorageError, VlassistError
from vlassist.service.answering import AnswerService
from vlassist.service.limits import default_admission
from vlassist.store.history import LOCAL_OWNER, History

MAX_OWNER_LENGTH = 200
log = logging.getLogger(__name__)


def settings_or_stop() -> Settings:
    """Settings from the environment, or an error page naming the bad variable."""
    try:
        return load_settings()
    except ConfigError as exc:
        st.error(f"vlassist cannot start: {exc}")
        st.stop()


@st.cache_resource(show_spinner=False)
def _history(data_dir: str) -> History:
    history = History.open(data_dir)
    if not history.read_only:
        try:
            # Answers that were being written when the last server process ended: keep their text, mark them
            # stopped. A full disk must not keep the page from opening the history to read it.
            history.mark_running_interrupted()
        except StorageError:
            log.warning("could not mark interrupted answers", exc_info=True)
    return history


def history(settings: Settings) -> History:
    """The history database under VLASSIST_DATA_DIR, opened once per process and shared by every session."""
    try:
        return _history(str(settings.data_dir.resolve()))
    except StorageError as exc:
        st.title("vlassist")
        st.error(f"**The conversation history cannot be opened.** {exc}", icon=":material/database:")
        st.stop()


def read_only_notice(history_: History) -> None:
    """Say, above everything, that conversations can be read but nothing new can be saved."""
    if history_.read_only:
        why = history_.read_only_reason or f"the data folder `{history_.folder}` cannot be written"
        st.warning(f"**History is read-only:** {why}. You can read and export conversations; new questions "
                   "cannot be saved until that is fixed and the app is restarted.", icon=":material/lock:")


@st.cache_resource(show_spinner=False)
def _engine(key: str, _settings: Settings):
    from vlassist.backends import load_answerer  # the UI reaches torch only through the engine package

    return load_answerer(_settings)


def engine_or_stop(settings: Settings):
    """The model, loaded once per process (shared by every session), or a page explaining how to get one."""
    try:
        where = (f"Connecting to the model server at {settings.backend_url} …" if settings.backend_url else
                 f"Loading the model from {settings.model_dir} … (once per server start)")
        with st.spinner(where):
            # Only what changes the loaded model is in the key: every data folder and user shares one model.
            return _engine(repr(settings.with_(user_header=None, data_dir=Path())), settings)
    except ModelNotFoundError as exc:
        st.title("vlassist")
        st.info(
            f"**No model found.** {exc}\n\n"
            "To get one, on a machine with internet run:\n\n"
            "```bash\n./scripts/setup.sh\n.venv/bin/python scripts/fetch_model.py\n```\n\n"
            f"then copy the downloaded folder to `{settings.model_dir}` on this machine (or point "
            "`VLASSIST_MODEL_DIR` at it) and reload this page. See the README, *Putting a model on an offline "
            "machine*.",
            icon="📦",
        )
        st.stop()
    except VlassistError as exc:  # a bad setting, or a model server that cannot be reached
        st.error(f"The model cannot be loaded: {exc}")
        st.stop()


@st.cache_resource(show_spinner=False)
def _service(key: str, _engine, _settings: Settings) -> AnswerService:
    return AnswerService(_engine, admission=default_admission(_engine, _settings))


def service(engine, settings: Settings) -> AnswerService:
    """The answer service over the loaded model: one queue for every session of this server process."""
    return _service(str(id(engine)), engine, settings)


def owner_or_stop(settings: Settings) -> str:
    """Who is asking: the user header's value in header mode (refusing without it), else the local owner."""
    if not settings.user_header:
        return LOCAL_OWNER
    value = (st.context.headers.get(settings.user_header) or "").strip()
    if not value or len(value) > MAX_OWNER_LENGTH:
        st.title("vlassist")
        st.error(
            f"**Not signed in.** This server identifies users by the `{settings.user_header}` header, which "
            "this request did not carry. Open vlassist through the intranet address (the proxy that signs you "
            "in), not the server's own port.",
            icon="🔒",
        )
        st.stop()
    return value
