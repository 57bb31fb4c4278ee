"""Per-process resources (model, history database) and the checks a page makes before it draws."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path

import streamlit as st

from vlassist.config import Settings, load_settings
from vlassist.errors import ConfigError, ModelNotFoundError, StorageError, VlassistError
from vlassist.service.answering import AnswerService
from vlassist.service.models import ModelSlot, list_checkpoints
from vlassist.store.history import LOCAL_OWNER, History
from vlassist.ui import models_panel
from vlassist.ui.media_scope import remember_owner

MAX_OWNER_LENGTH = 200
SHUTDOWN_STOP_S = 1.5  # at exit, how long the stopped answers get to be stored (the server must be gone in 3 s)
log = logging.getLogger(__name__)


@st.cache_resource(show_spinner=False)
def app_icon():
    """The tab's icon, drawn here: a Material page icon would make the browser fetch it from Google's servers."""
    from PIL import Image, ImageDraw

    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle([2, 2, 61, 61], radius=14, fill=(38, 99, 235, 255))
    draw.rectangle([14, 18, 50, 46], outline=(255, 255, 255, 255), width=4)  # a picture frame
    draw.polygon([(18, 42), (28, 28), (36, 38), (41, 32), (47, 42)], fill=(255, 255, 255, 255))  # hills
    return icon


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
def _slot(key: str, _settings: Settings) -> ModelSlot:
    slot = ModelSlot(_settings)
    atexit.register(_stop_answers, slot)
    return slot


def _stop_answers(slot: ModelSlot) -> None:
    """At server exit (SIGTERM, Ctrl+C): stop the answers being written, so each is stored as a stopped partial
    answer now rather than left running, and the process ends promptly instead of after the answer."""
    service = slot.service
    if service is not None:
        service.close(timeout=SHUTDOWN_STOP_S)


def model_slot(settings: Settings) -> ModelSlot:
    """The process-wide current model and its answer service (shared by every session); loads nothing by itself."""
    # Only what changes the loaded model is in the key: every data folder and user shares one model.
    return _slot(repr(settings.with_(user_header=None, data_dir=Path(), admin_users=())), settings)


def engine_or_stop(settings: Settings):
    """The current model (shared by every session); while it loads or is switched, its progress instead.

    The load runs on a thread of its own (vlassist/service/models.py), so this page closing or rerunning cannot
    interrupt it; every waiting page draws the same progress from the slot, the one that started it and the others.
    """
    slot = model_slot(settings)
    answerer = slot.current
    if answerer is not None and not slot.state.busy:
        return answerer
    holder = st.empty()
    with holder.container():
        st.title("vlassist")  # drawn before anything loads: the page is never blank
        heading = st.empty()
        heading.markdown("**Loading model…**")
        session = models_panel.session_id()
        slot.start_load(by=session)
        state = models_panel.follow_load(slot, heading, session)
    if slot.current is None:
        holder.empty()
        _load_failed(settings, state.error)
    holder.empty()
    return slot.current


def _load_failed(settings: Settings, error: BaseException | None) -> None:
    st.title("vlassist")
    if isinstance(error, ModelNotFoundError):
        st.info(
            f"**No model found.** {error}\n\n"
            "To get one, on a machine with internet run:\n\n"
            "```bash\n./scripts/setup.sh\n.venv/bin/python scripts/fetch_model.py\n```\n\n"
            f"then copy the downloaded folder to `{settings.model_dir}` on this machine (or point "
            "`VLASSIST_MODEL_DIR` at it) and reload this page. See the README, *Putting a model on an offline "
            "machine*." + _found_checkpoints(settings),
            icon=":material/inventory_2:",
        )
    elif isinstance(error, VlassistError):  # a bad setting, or a model server that cannot be reached
        st.error(f"The model cannot be loaded: {error}")
    else:  # a bug or a device fault: say what, the log has the rest
        st.error(f"The model cannot be loaded: {type(error).__name__}: {error}")
    st.stop()


def _found_checkpoints(settings: Settings) -> str:
    """What the models folder holds, so the user can point VLASSIST_MODEL_DIR at one of its checkpoints."""
    root = settings.models_root
    found = list_checkpoints(root)
    if not found:
        return f"\n\nNo checkpoint folders were found in `{root}` either."
    rows = "\n".join(f"- `{choice.name}` ({choice.family}): `VLASSIST_MODEL_DIR={choice.target}`" for choice in found)
    return (f"\n\n**Checkpoints found in `{root}`** — set `VLASSIST_MODEL_DIR` to one of them and restart the "
            f"server:\n\n{rows}")


def service(engine, settings: Settings) -> AnswerService:
    """The answer service in front of the current model: one queue for every session of this server process."""
    return model_slot(settings).service


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
            icon=":material/lock:",
        )
        st.stop()
    remember_owner(value)  # its session's images and exports are served to this user only
    return value
