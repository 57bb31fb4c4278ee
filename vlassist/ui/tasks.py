"""Task presets and their small controls: the JSON shape for extraction and what "Find objects" looks for."""

from __future__ import annotations

import json

import streamlit as st

from vlassist.answers.prompts import PRESETS, grounding_prompt, task_prompt
from vlassist.answers.schemas import (
    TEMPLATES,
    boxes_schema,
    boxes_schema_text,
    fields_schema,
    load_schema,
    template_schema,
)
from vlassist.errors import VlassistError
from vlassist.store.records import make_title
from vlassist.ui.settings_panel import set_decoding

CHAT_KEY = "chat_input"
PRESET_KEY = "active_preset"
JSON_SOURCES = {"fields": "Name fields", "template": "Template", "schema": "Paste JSON Schema"}
# Widget values kept across reruns even while their widget is hidden (another source chosen).
_KEPT = ("json_source", "json_fields", "json_template", "json_schema_text", "grounding_target",
         "grounding_strict")


FILLED_KEY = "preset_filled_text"  # the prompt a preset put in the chat box: not the user's own words


def _use_preset(key: str, family: str) -> None:
    prompt = task_prompt(key, family, st.session_state.get("grounding_target") or "object")
    st.session_state[CHAT_KEY] = prompt
    st.session_state[FILLED_KEY] = prompt
    st.session_state[PRESET_KEY] = key
    set_decoding(PRESETS[key].precise)


def render_presets(family: str) -> None:
    """One button per task preset, wrapping onto more lines when narrow; a click puts its prompt in the chat box."""
    chosen = st.session_state.get(PRESET_KEY)
    with st.container(horizontal=True, wrap=True, gap="small", key="presets"):
        for preset in PRESETS.values():
            st.button(preset.short, key=f"preset_{preset.key}", icon=f":material/{preset.icon}:", help=preset.tip,
                      on_click=_use_preset, args=(preset.key, family), width="content",
                      type="primary" if preset.key == chosen else "secondary")


def own_words(text: str) -> str:
    """The part of a question the user wrote: empty when it is still exactly the prompt a preset filled in."""
    filled = st.session_state.get(FILLED_KEY)
    return "" if filled is not None and text.strip() == filled.strip() else text


def title_for(text: str, preset: str | None, images) -> str:
    """A new conversation's title in the user's words: the typed question, else the task's name and first file."""
    typed = own_words(text).strip()
    if typed:
        return make_title(typed)
    name = PRESETS[preset].short if preset in PRESETS else "Image question"
    return f"{name} · {images[0].name}" if images else name


def render_task_options(family: str) -> None:
    """Under the presets, the control the chosen preset needs: the JSON shape, or what to find."""
    for key in _KEPT:
        if key in st.session_state:
            # Re-assigning turns a widget's value into plain session state, so hiding the widget keeps it.
            st.session_state[key] = st.session_state[key]
    preset = st.session_state.get(PRESET_KEY)
    if preset == "json":
        render_json_options()
    elif preset == "grounding":
        st.text_input("What to find", key="grounding_target", placeholder="e.g. gauge, red button, person",
                      on_change=_retarget, args=(family,),
                      help="Rewrites the prompt in the phrasing this model family was trained on.")
        if boxes_schema(family) is not None:
            # Its default goes in through session state: a value= beside a kept state makes Streamlit warn.
            st.session_state.setdefault("grounding_strict", True)
            st.checkbox("Strict box list", key="grounding_strict",
                        help="Constrain the answer to a JSON list of boxes and labels, so it always parses into "
                             "boxes. Turn off for a server that cannot follow a JSON Schema.")


def grounding_schema(family: str) -> str | None:
    """The JSON Schema a "Find objects" answer is held to (text), or None when the user turned it off or the
    family answers with box tokens."""
    return boxes_schema_text(family) if st.session_state.get("grounding_strict", True) else None


def _retarget(family: str) -> None:
    prompt = grounding_prompt(family, st.session_state.get("grounding_target") or "object")
    st.session_state[CHAT_KEY] = prompt
    st.session_state[FILLED_KEY] = prompt  # still the preset's words, not the user's: no title from it


def render_json_options() -> None:
    """The JSON shape: named fields, a template or a pasted JSON Schema; a bad schema is reported at once."""
    st.session_state.setdefault("json_source", "fields")
    left, right = st.columns([1, 2])
    source = left.radio("JSON shape", list(JSON_SOURCES), format_func=JSON_SOURCES.get, key="json_source")
    with right:
        if source == "fields":
            st.text_input("Fields (name or name:type, comma separated)", key="json_fields",
                          placeholder="vendor, date:date, total:number, items:list",
                          help="Types: string, number, integer, boolean, date, list. Leave empty to let the "
                               "model choose the keys (then the answer is not constrained).")
        elif source == "template":
            st.session_state.setdefault("json_template", next(iter(TEMPLATES)))
            st.selectbox("Template", list(TEMPLATES), format_func=lambda k: TEMPLATES[k][0], key="json_template")
        else:
            st.text_area("JSON Schema", key="json_schema_text", height=160,
                         placeholder='{"type": "object", "properties": {"total": {"type": "number"}}}')
        try:
            schema = chosen_schema()
        except VlassistError as exc:
            st.error(f"This JSON shape cannot be used: {exc}", icon=":material/warning:")
            return
        if schema:
            st.caption(f"The answer will be one JSON document valid against this schema "
                       f"({len(json.loads(schema).get('properties', {}))} top-level fields).")


def chosen_schema() -> str | None:
    """The JSON Schema text the JSON controls describe (None: unconstrained); VlassistError when unusable."""
    source = st.session_state.get("json_source", "fields")
    if source == "template":
        schema = template_schema(st.session_state.get("json_template") or next(iter(TEMPLATES)))
    elif source == "schema":
        raw = (st.session_state.get("json_schema_text") or "").strip()
        if not raw:
            raise VlassistError("paste a JSON Schema, or choose fields or a template")
        schema = load_schema(raw)
    else:
        fields = (st.session_state.get("json_fields") or "").strip()
        if not fields:
            return None
        schema = fields_schema(fields)
    return json.dumps(schema, ensure_ascii=False)


def render_question_schema(message) -> None:
    """Under a question held to a JSON Schema, that schema folded away (the question itself is the user's text)."""
    schema = (message.options or {}).get("json_schema")
    if schema:
        with st.expander("JSON Schema", icon=":material/data_object:"):
            try:
                st.json(json.loads(schema), expanded=True)
            except ValueError:
                st.code(schema, language="json")
