"""The settings panel (resolution, answer length, decoding) and the model status panel."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from vlassist.config import Settings
from vlassist.conversation import GenerationOptions
from vlassist.errors import StorageError

log = logging.getLogger(__name__)
SAVED_KEYS = ("opt_max_image_tokens", "opt_low_res", "opt_max_new_tokens", "opt_decoding")
RESTORED_KEY = "settings_restored"  # set once per browser session, after the saved settings were put back

TOKEN_BUDGETS = [256, 512, 768, 1024, 1280, 1600, 2048, 3072, 4096, 8192, 16384]
ANSWER_LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192]
PRECISE, CREATIVE = "Precise", "Creative"


def _nearest(choices: list[int], value: int) -> int:
    return min(choices, key=lambda c: abs(c - value))


def _restore(settings: Settings, budgets: list[int], store) -> None:
    """Put the user's saved settings (or the defaults) into the widgets' state, once per browser session."""
    if st.session_state.get(RESTORED_KEY):
        return
    st.session_state[RESTORED_KEY] = True
    saved = {}
    if store is not None:
        try:
            saved = store.get_settings()
        except StorageError:
            log.warning("could not read the saved settings", exc_info=True)
    choices = {"opt_max_image_tokens": budgets, "opt_low_res": [False, True], "opt_max_new_tokens": ANSWER_LENGTHS,
               "opt_decoding": [PRECISE, CREATIVE]}
    defaults = {"opt_max_image_tokens": settings.max_image_tokens, "opt_low_res": False,
                "opt_max_new_tokens": _nearest(ANSWER_LENGTHS, GenerationOptions().max_new_tokens),
                "opt_decoding": PRECISE}
    for key in SAVED_KEYS:
        value = saved.get(key)
        # A value saved under other limits (e.g. a budget no longer offered) falls back to the default.
        st.session_state.setdefault(key, value if value in choices[key] else defaults[key])


def _save(store) -> None:
    try:
        store.save_settings({key: st.session_state.get(key) for key in SAVED_KEYS})
    except StorageError:  # a read-only or full history: the settings still apply to this session
        log.warning("could not save the settings", exc_info=True)


def render_settings(settings: Settings, store=None) -> GenerationOptions:
    """Draw the answer settings and return the GenerationOptions they describe; with `store`, they are the
    user's saved ones and every change is saved (so a reload or another browser keeps them)."""
    budgets = sorted(set(TOKEN_BUDGETS) | {settings.max_image_tokens})
    _restore(settings, budgets, store)
    saving = dict(on_change=_save, args=(store,)) if store is not None else {}
    with st.expander("Settings", expanded=False):
        tokens = st.select_slider(
            "Image detail (visual tokens per image)", options=budgets, key="opt_max_image_tokens",
            help="More tokens read small text better but take longer and use more GPU memory.", **saving)
        low_res = st.toggle("Low resolution (faster, long side about 768 px)", key="opt_low_res", **saving)
        length = st.select_slider("Answer length (max tokens)", options=ANSWER_LENGTHS, key="opt_max_new_tokens",
                                  **saving)
        mode = st.radio("Decoding", [PRECISE, CREATIVE], key="opt_decoding", horizontal=True,
                        help="Precise is deterministic (best for OCR, JSON, tables); creative samples.", **saving)
    return GenerationOptions(max_new_tokens=int(length), precise=mode == PRECISE, max_image_tokens=int(tokens),
                             low_res=bool(low_res), min_new_tokens=min(settings.min_answer_tokens, int(length)))


def set_decoding(precise: bool) -> None:
    """Switch the decoding control (used by presets that want one or the other)."""
    st.session_state["opt_decoding"] = PRECISE if precise else CREATIVE


def _gb(value: float) -> str:
    return f"{value:.1f} GiB"


def render_model_status(engine, service=None) -> None:
    """Which model answers, on what, with which attention and why, the memory in use and the queue."""
    info = engine.info
    with st.expander("Model status", expanded=False):
        if getattr(info, "server", None):  # a remote OpenAI-compatible server answers, not a local model
            st.markdown(f"**Server** `{info.server}` (remote)  \n**Model** `{info.model_dir}`  \n"
                        f"**Family** {info.family}  \n**Latency** {info.latency_s * 1000:.0f} ms when connecting")
            _render_queue(engine, service)
            return
        quant = f" — {info.quant}" if getattr(info, "quant", "") else ""
        st.markdown(
            f"**Model** `{Path(info.model_dir).name}`  \n"
            f"**Family** {info.family}  \n"
            f"**Device** {info.device} · {info.dtype}  \n"
            f"**Weights** {getattr(info, 'weights_format', '') or info.dtype}{quant}  \n"
            f"**Attention** {info.attn} — {info.attn_reason}")
        if getattr(info, "adapter", ""):
            st.markdown(f"**LoRA adapter** `{Path(info.adapter).name}` — {info.adapter_detail}")
        memory = engine.memory()
        if "device_used_gb" in memory:
            st.markdown(f"**VRAM** {_gb(memory['device_used_gb'])} of {_gb(memory['device_total_gb'])} in use "
                        f"(model {_gb(memory['allocated_gb'])}, peak {_gb(memory['peak_gb'])})")
        elif "weights_gb" in memory:
            st.markdown(f"**Memory** weights {_gb(memory['weights_gb'])} (CPU, no VRAM)")
        _render_queue(engine, service)


def _render_queue(engine, service) -> None:
    waiting = service.queued if service is not None else 0
    busy = engine.busy or (service is not None and service.running)
    state = "Generating an answer now" if busy else "Idle"
    st.caption(f"{state} · {waiting} waiting" if waiting else state)
