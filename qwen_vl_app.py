"""vlassist: ask a local Qwen-VL model about screenshots and photos. Run with `streamlit run qwen_vl_app.py`."""

import streamlit as st

from vlassist.ui import attach, chat, launch, live, models_panel, resources, settings_panel, sidebar, tasks

launch.keep_local()  # also under a plain `streamlit run`: no address lookups off the machine

st.set_page_config(page_title="vlassist", page_icon=resources.app_icon(), layout="wide")

settings = resources.settings_or_stop()
owner = resources.owner_or_stop(settings)
history = resources.history(settings)
store = history.for_owner(owner)
engine = resources.engine_or_stop(settings)
service = resources.service(engine, settings)

conversation = chat.open_conversation(store)

with st.sidebar:
    st.title("vlassist")
    sidebar.render_conversation_list(store)  # new, search, then a bounded list: what follows stays in reach
    options = settings_panel.render_settings(settings, store)  # the user's saved settings
    models_panel.render(resources.model_slot(settings), settings, owner)  # the model in use; load another
    settings_panel.render_model_status(engine, service)

sidebar.render_title_bar(store, service, conversation)  # the title with rename, export and delete beside it
sidebar.close_on_narrow_screens()
resources.read_only_notice(history)
following: list = []  # answers still being written, drawn live at the end of this run
zoom = chat.render_conversation(conversation, store, engine, options, service, following)
tasks.render_presets(engine.info.family)
tasks.render_task_options(engine.info.family)
chat.restore_pending_text()
attach.render(engine, options)  # attached images and PDF pages, with their sizes, before Send
chat.show_flash()  # a refusal or error from the last run, right above the chat box it is about
submission = chat.chat_input()
if zoom:
    chat.ask_zoom(zoom, engine, service, store, options)
elif submission:
    chat.ask(submission, engine, service, store, options)
live.follow(following, service, engine.info.device)
