"""The settings panel (resolution, answer length, decoding) and the model status panel."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from vlassist.config import Settings
from vlassist.conversation import GenerationOptions

TOKEN_BUDGETS = [256, 512, 768, 1024, 1280, 1600, 2048, 3072, 4096, 8192, 16384]
ANSWER_LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192]
PRECISE, CREATIVE = "Precise", "Creative"


def _nearest(choices: list[int], value: int) -> int:
    return min(choices, key=lambda c: abs(c - value))


def render_settings(settings: Settings) -> GenerationOptions:
    """Draw the answer settings and return the GenerationOptions they describe."""
    budgets = sorted(set(TOKEN_BUDGETS) | {settings.max_image_tokens})
    with st.expander("Settings", expanded=False):
        tokens = st.select_slider(
            "Image detail (visual tokens per image)", options=budgets, value=settings.max_image_tokens,
            key="opt_max_image_tokens",
            help="More tokens read small text better but take longer and use more GPU memory.")
        low_res = st.toggle("Low resolution (faster, long side about 768 px)", key="opt_low_res", value=False)
        length = st.select_slider("Answer length (max tokens)", options=ANSWER_LENGTHS, key="opt_max_new_tokens",
                                  value=_nearest(ANSWER_LENGTHS, GenerationOptions().max_new_tokens))
        mode = st.radio("Decoding", [PRECISE, CREATIVE], key="opt_decoding", horizontal=True,
                        help="Precise is deterministic (best for OCR, JSON, tables); creative samples.")
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
