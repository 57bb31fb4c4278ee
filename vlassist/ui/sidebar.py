"""The sidebar (new conversation, search, the conversation list) and the open conversation's title bar."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from vlassist.errors import StorageError
from vlassist.service.answering import AnswerService
from vlassist.store import export
from vlassist.store.history import OwnerStore, StoredConversation
from vlassist.ui import attach
from vlassist.ui.chat import CONVERSATION_KEY, flash
from vlassist.ui.tasks import PRESET_KEY
from vlassist.ui.verbatim import escape_markdown, show_plain

# History entries: one left-aligned line cut with an ellipsis; spaces and tabs of a title kept as typed.
_LIST_STYLE = """<style>
.st-key-history_list button { justify-content: flex-start; text-align: left; }
.st-key-history_list button > div { min-width: 0; max-width: 100%; }
.st-key-history_list button [data-testid="stMarkdownContainer"] p {
  white-space: pre; overflow: hidden; text-overflow: ellipsis; text-align: left; }
</style>"""
LIST_HEIGHT = 360  # px: the history list scrolls inside this, so Settings and Model status stay in reach
PICKED_KEY = "picked_conversation"  # set for the run after a pick: narrow screens close the sidebar then
PICKS_KEY = "conversation_picks"  # counts picks, so each close script differs from the last and runs again
# Streamlit has no call that closes the sidebar, and a changed initial_sidebar_state is ignored once the user
# opened it by hand (the browser remembers that choice). So on a narrow screen, where the open sidebar covers
# the page, its own close button is pressed, as Streamlit's "auto" state decides narrow: at most 768 px wide.
# A local script in the page, nothing fetched.
_CLOSE_SCRIPT = """<script data-pick="{pick}">{{
  const open = document.querySelector('[data-testid="stSidebar"][data-collapsed="false"]');
  const close = document.querySelector('[data-testid="stSidebarCollapseButton"] button');
  if (window.innerWidth <= 768 && open && close) close.click();
}}</script>"""


def _open(conversation_id: int | None) -> None:
    attach.switch_conversation(st.session_state.get(CONVERSATION_KEY), conversation_id)  # drafts stay where made
    st.session_state[CONVERSATION_KEY] = conversation_id
    st.session_state.pop(PRESET_KEY, None)
    st.session_state[PICKED_KEY] = True
    st.session_state[PICKS_KEY] = st.session_state.get(PICKS_KEY, 0) + 1


def close_on_narrow_screens() -> None:
    """After a conversation was picked or started, close the sidebar if it covers the page (narrow screens)."""
    if st.session_state.pop(PICKED_KEY, False):
        st.sidebar.html(_CLOSE_SCRIPT.format(pick=st.session_state.get(PICKS_KEY, 0)),
                        unsafe_allow_javascript=True)


def _when(ts: float) -> str:
    moment = datetime.fromtimestamp(ts)
    return moment.strftime("%H:%M") if moment.date() == datetime.now().date() else moment.strftime("%d %b %Y")


def render_conversation_list(store: OwnerStore) -> None:
    """New conversation, search box and the owner's conversations, newest first."""
    st.button("New conversation", icon=":material/add:", key="new_conversation", on_click=_open, args=(None,),
              width="stretch")
    search = st.text_input("Search conversations", key="history_search", placeholder="Search text…")
    conversations = store.list_conversations(search)
    current = st.session_state.get(CONVERSATION_KEY)
    if not conversations:
        st.caption("No matches." if search.strip() else "No conversations yet.")
        return
    st.html(_LIST_STYLE)
    with st.container(height=min(LIST_HEIGHT, 48 * len(conversations) + 16), border=False, key="history_list"):
        for item in conversations:
            st.button(f"{escape_markdown(item.title)}  ·  {_when(item.updated_at)}", key=f"open_{item.id}",
                      on_click=_open, args=(item.id,), type="primary" if item.id == current else "secondary",
                      width="stretch", help=escape_markdown(item.title))  # the whole title, where cut


def _rename(store: OwnerStore, conversation_id: int) -> None:
    title = st.session_state.get(f"rename_{conversation_id}", "")
    if title.strip():
        try:
            store.rename(conversation_id, title)
        except StorageError as exc:
            flash("error", f"Not renamed — {exc}")


def _delete(store: OwnerStore, service: AnswerService, conversation_id: int) -> None:
    try:
        store.delete(conversation_id)
    except StorageError as exc:
        flash("error", f"Not deleted — {exc}")
        return
    service.cancel_conversation(conversation_id)  # its queued or running answers have nowhere to go
    _open(None)


def render_title_bar(store: OwnerStore, service: AnswerService, conversation: StoredConversation | None) -> None:
    """The open conversation's title, with its actions (rename, export, delete) in a menu beside it."""
    if conversation is None:
        st.subheader("New conversation")
        return
    left, right = st.columns([12, 1], vertical_alignment="center")
    with left:
        show_plain(conversation.title, tag="h3", css_class="vl-title")
    with right:
        render_conversation_actions(store, service, conversation)


def render_conversation_actions(store: OwnerStore, service: AnswerService,
                                conversation: StoredConversation | None) -> None:
    """Rename, export (Markdown + images zip, JSON with embedded images) and delete the open conversation."""
    if conversation is None:
        return
    with st.popover("", icon=":material/more_vert:", help="Rename, export or delete this conversation"):
        st.text_input("Title", value=conversation.title, key=f"rename_{conversation.id}",
                      on_change=_rename, args=(store, conversation.id))
        name = export.slug(conversation.title)
        st.download_button("Export Markdown + images (.zip)",
                           data=lambda: export.to_zip(conversation, store.image_data),
                           file_name=f"{name}.zip", mime="application/zip", key=f"export_zip_{conversation.id}",
                           on_click="ignore", width="stretch")
        st.download_button("Export JSON (images embedded)",
                           data=lambda: export.to_json(conversation, store.image_data),
                           file_name=f"{name}.json", mime="application/json",
                           key=f"export_json_{conversation.id}", on_click="ignore", width="stretch")
        confirm = st.checkbox("Yes, delete this conversation", key=f"confirm_delete_{conversation.id}")
        st.button("Delete", icon=":material/delete:", key=f"delete_{conversation.id}", disabled=not confirm,
                  on_click=_delete, args=(store, service, conversation.id), width="stretch")
