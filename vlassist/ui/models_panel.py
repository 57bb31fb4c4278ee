"""The sidebar's Model section (the model in use, the others one can load, Load) and the model-load progress view."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from vlassist.config import Settings
from vlassist.errors import VlassistError
from vlassist.service.models import (
    LoadState,
    ModelChoice,
    ModelSlot,
    choice_of,
    list_adapters,
    list_checkpoints,
    list_server_models,
    may_switch,
    same_model,
    with_adapter,
)
from vlassist.ui.verbatim import escape_markdown

POLL_S = 0.25  # how often a waiting page looks at the load's progress
LISTING_TTL_S = 15  # the models folder and the server's model list are looked at again after this long
PICK_KEY, ERROR_KEY, ADAPTER_KEY = "model_pick", "model_switch_error", "adapter_pick"
QUANT_KEY = "model_quant"
QUANT_LABELS = {"none": "As stored in the checkpoint", "int8": "int8 (quantized at load)",
                "int4": "int4 (quantized at load)"}
STAGES = {
    "start": "Starting PyTorch and transformers",
    "read": "Reading the checkpoint",
    "weights": "Reading weights",
    "device": "Moving to the device",
    "warmup": "Warming up",
    "ready": "Ready",
    "wait": "Waiting for the running answer to finish",
    "unload": "Unloading the previous model",
}
# A dropdown's options wrap instead of being clipped, so a long checkpoint name can be read whole when picking.
_OPTION_STYLE = """<style>
[role="listbox"] [role="option"] { height: auto; min-height: 2.5rem; }
[role="listbox"] [role="option"] > div {
  height: auto; white-space: normal; overflow-wrap: anywhere; overflow: visible; }
</style>"""
_ORDER = {stage: i for i, stage in enumerate(("wait", "unload", "start", "read", "weights", "device", "warmup",
                                              "ready"))}  # a load's stages in the order they come


def session_id() -> str | None:
    """This browser tab's Streamlit session (who started a load or a switch)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


# ---- the progress view, drawn while a model loads ----

def _heading(state: LoadState, session: str | None) -> str:
    mine = state.by is not None and state.by == session
    if state.phase == "switching" or (state.phase != "loading" and state.who):
        if mine:
            return f"**Switching the model to `{state.target}`…** Every session of this server will use it."
        return (f"**The model is being switched to `{state.target}` — started by {state.who or 'another session'}.** "
                "This page goes on when it is loaded.")
    if mine or state.by is None:
        return f"**Loading model…** `{state.target}` (once per server start)"
    return (f"**The model is loading — started by another session.** `{state.target}`; this page goes on when "
            "it is ready.")


def _steps(seen: list[tuple[str, float]], state: LoadState) -> str:
    """The stages so far, one a line: a check only on a stage that was done (a later one began after it, or the
    load ended ready); a stage the load failed in, or left to start over, gets a cross."""
    lines = []
    for i, (stage, began) in enumerate(seen):
        name = STAGES.get(stage, stage)
        if i + 1 < len(seen):
            # A later stage that comes earlier in a load's order means it began again: this stage did not finish.
            mark = "check" if _ORDER.get(seen[i + 1][0], 0) > _ORDER.get(stage, 0) else "close"
            lines.append(f":material/{mark}: {name} — {seen[i + 1][1] - began:.1f} s")
        elif state.busy:
            lines.append(f":material/progress_activity: {name}…")
        elif loaded(state):
            lines.append(f":material/check: {name}")
        else:
            lines.append(f":material/close: {name} — failed")
    return "  \n".join(lines)


def loaded(state: LoadState) -> bool:
    """True only for a load that ended ready and complete (100 %): what may be shown with a check mark."""
    return state.phase == "ready" and state.fraction >= 1.0


def follow_load(slot: ModelSlot, heading, session: str | None) -> LoadState:
    """Draw the load's progress bar and stages (in the current container) until it has ended; return how it ended.

    Every waiting page draws from the slot's shared state, so the one that started the load and the others see
    the same progress. Only changes are drawn; the elapsed seconds change once a second, which also lets a
    click or a closed tab end this page run promptly (the load itself goes on).
    """
    state = slot.state
    bar = st.progress(0.0, text=state.detail or "Starting")
    status = st.status(STAGES.get(state.stage, "Loading"), expanded=True)
    with status:
        steps = st.empty()
    seen: list[tuple[str, float]] = []
    shown = None
    while True:
        state = slot.state
        if state.stage and (not seen or seen[-1][0] != state.stage):
            seen.append((state.stage, time.monotonic()))
        view = (state.phase, state.stage, round(state.fraction, 2), state.detail, int(state.elapsed_s))
        if view != shown:
            shown = view
            heading.markdown(_heading(state, session))
            bar.progress(state.fraction, text=f"{state.detail} · {state.elapsed_s:.0f} s")
            status.update(label=f"{STAGES.get(state.stage, state.stage)} · {state.fraction:.0%}")
            steps.markdown(_steps(seen, state))
        if not state.busy:
            break
        time.sleep(POLL_S)
    if loaded(state):
        status.update(label=f"{STAGES['ready']} · 100%", state="complete", expanded=False)
    else:  # failed (at whatever fraction) or never started: no check mark, the steps stay open to show where
        status.update(label=f"Not loaded · stopped at {state.fraction:.0%}", state="error", expanded=True)
    return state


# ---- the sidebar's Model section ----

@st.cache_data(ttl=LISTING_TTL_S, show_spinner=False)
def _checkpoints(models_dir: str, _settings: Settings, budget: tuple) -> list[ModelChoice]:
    # `budget` (device, memory, context, image tokens) keys the cache: the fit of each checkpoint depends on it.
    return list_checkpoints(Path(models_dir), _settings)


@st.cache_data(ttl=LISTING_TTL_S, show_spinner=False)
def _adapters(models_dir: str) -> list[tuple[str, str]]:
    return list_adapters(Path(models_dir))


@st.cache_data(ttl=LISTING_TTL_S, show_spinner=False)
def _server_models(server: str, _answerer, _settings: Settings) -> list[ModelChoice]:
    return list_server_models(_answerer, _settings)


def choices_for(answerer, settings: Settings, quant: str | None = None) -> list[ModelChoice]:
    """What the page offers: the server's models with a remote backend, else the models folder's checkpoints.

    The model in use is always first among them, even when it lies outside the models folder. `quant`: the
    Weights choice (int8/int4 on load) the checkpoints' fit is estimated for; None: the model in use's.
    """
    current = choice_of(answerer)
    if current.remote:
        found = _server_models(answerer.info.server, answerer, settings)
    else:
        # The fit of each checkpoint is estimated for the weights the Weights choice would load.
        quant = quant if quant in QUANT_LABELS else current.quant
        budget = (settings.device, settings.gpu_memory_gb, settings.decode_context, settings.max_image_tokens, quant)
        found = _checkpoints(str(settings.models_root.resolve()), settings.with_(quant=quant), budget)
    base = replace(current, adapter=None)  # the folder is listed once, whichever adapter is applied to it
    listed = next((choice for choice in found if same_model(replace(choice, quant=current.quant), base)), None)
    if listed is not None:
        current = replace(current, fit=listed.fit)
    return [current] + [choice for choice in found if not same_model(replace(choice, quant=current.quant), base)]


def _label(choice: ModelChoice, current: ModelChoice) -> str:
    family = f" · {choice.family}" if choice.family else ""
    fits = "" if choice.fit is None or choice.fit.fits else " (does not fit)"
    return f"{choice.name}{family}" + (" (in use)" if same_model(choice, current) else "") + fits


def _fit_lines(choices: list[ModelChoice]) -> str:
    """One line per local checkpoint: format, size on disk, estimate; greyed with the reason where it cannot run."""
    lines = []
    for choice in choices:
        if choice.fit is None:
            continue
        text = f"`{choice.name}` · {choice.fit.summary()}"
        if choice.fit.fits:
            lines.append(f"- {text}")
        else:
            reason = choice.fit.reason.replace("[", "(").replace("]", ")")
            lines.append(f"- :gray[{text} — cannot run here: {reason}]")
    return "\n".join(lines)


def _load(slot: ModelSlot, choices: list[ModelChoice], settings: Settings, owner: str) -> None:
    target = st.session_state.get(PICK_KEY)
    chosen = next((choice for choice in choices if choice.target == target), None)
    if chosen is None:
        return
    if not chosen.remote:
        chosen = with_adapter(replace(chosen, quant=st.session_state.get(QUANT_KEY, "none")),
                              st.session_state.get(ADAPTER_KEY) or None)
    try:
        slot.switch(chosen, by=session_id(), who=owner if settings.user_header else None)
    except VlassistError as exc:
        st.session_state[ERROR_KEY] = f"{chosen.name} was not loaded: {exc}"


def _adapter_picker(settings: Settings, current: ModelChoice) -> str | None:
    """The LoRA adapter select (adapter folders of the models folder, and none); the picked folder or None."""
    paths = [path for _, path in _adapters(str(settings.models_root.resolve()))]
    if current.adapter and current.adapter not in paths:
        paths.insert(0, current.adapter)
    if not paths:
        return None
    options = [""] + paths
    if st.session_state.get(ADAPTER_KEY) not in options:
        st.session_state[ADAPTER_KEY] = current.adapter or ""
    picked = st.selectbox("LoRA adapter", options, key=ADAPTER_KEY,
                          format_func=lambda path: Path(path).name if path else "none",
                          help="A peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors) in "
                               "the models folder, applied to the model above when it is loaded")
    return picked or None


def render(slot: ModelSlot, settings: Settings, owner: str) -> None:
    """The Model section: the model in use, the others available, and (for those allowed) a Load button.

    A load switches every session of this server; its progress is shown on every page (follow_load).
    """
    answerer = slot.current
    if answerer is None:
        return
    current = choice_of(answerer)
    choices = choices_for(answerer, settings, st.session_state.get(QUANT_KEY))
    with st.expander("Model", icon=":material/memory:"):
        where = "on the server" if current.remote else f"in `{settings.models_root}`"
        st.markdown(f"**In use** `{current.name}`" + (f" · {current.family}" if current.family else "")
                    + (f" · {answerer.info.weights_format}" if getattr(answerer.info, "weights_format", "") else ""))
        if not may_switch(settings, owner):
            st.markdown("\n".join(f"- {_label(choice, current)}" for choice in choices))
            why = ("only the administrators named in VLASSIST_ADMIN_USERS" if settings.admin_users
                   else "nobody: no administrators are set (VLASSIST_ADMIN_USERS)")
            st.caption(f":material/lock: Models {where}. Another model can be loaded by {why}; it switches "
                       "every user of this server.")
            return
        targets = [choice.target for choice in choices]
        if st.session_state.get(PICK_KEY) not in targets:
            st.session_state[PICK_KEY] = current.target
        labels = {choice.target: _label(choice, current) for choice in choices}
        st.html(_OPTION_STYLE)
        # The closed box shows one line and cuts a long name: its help tooltip names the picked model whole.
        picked = st.selectbox(f"Models {where}", targets, format_func=labels.get, key=PICK_KEY,
                              help=f"Picked: {escape_markdown(labels[st.session_state[PICK_KEY]])}")
        picked_choice = next(choice for choice in choices if choice.target == picked)
        if not current.remote:
            if st.session_state.get(QUANT_KEY) not in QUANT_LABELS:
                st.session_state[QUANT_KEY] = current.quant
            quant = st.selectbox("Weights", list(QUANT_LABELS), format_func=QUANT_LABELS.get, key=QUANT_KEY,
                                 help="Quantize a 16-bit checkpoint's text model at load: int8 halves and int4 "
                                      "quarters the memory its weights take. Kept on disk, so the next load is "
                                      "quick. AWQ, FP8 and W4A16 checkpoints are loaded as stored.")
            picked_choice = with_adapter(replace(picked_choice, quant=quant), _adapter_picker(settings, current))
        busy = slot.state.busy
        unfit = picked_choice.fit is not None and not picked_choice.fit.fits
        st.button("Load", key="model_load", icon=":material/swap_horiz:", on_click=_load,
                  args=(slot, choices, settings, owner), disabled=busy or same_model(picked_choice, current) or unfit,
                  help="Unload the model in use and load this one, for every session of this server")
        fit_lines = _fit_lines(choices)
        if fit_lines:
            st.markdown(fit_lines)
            st.caption("Memory needs are estimates (weights, K/V for the configured context, reading the largest "
                       "image) against the GPU memory budget (VLASSIST_GPU_MEMORY_GB, 24 GiB if unset).")
        error = st.session_state.pop(ERROR_KEY, None)
        if error:
            st.error(error, icon=":material/error:")
        st.caption("Loading another model switches every session of this server. The running answer finishes "
                   "first; questions still waiting in the queue are cancelled, and say so, to be sent again.")
        state = slot.state
        if state.notice and state.phase == "ready":
            st.info(state.notice, icon=":material/info:")
