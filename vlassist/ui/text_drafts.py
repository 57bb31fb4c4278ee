"""Typed-but-unsent question text kept with its conversation, in the browser tab.

Streamlit's chat box is a trigger widget: what is typed reaches the server only on Send, so the server cannot
keep a draft. A small page script (allowed by the page's CSP, nothing fetched) watches the box and the open
conversation (the address's ?c=): the text is kept per conversation in the tab's sessionStorage, taken out of
the box when another conversation (or a new one) is opened, and put back when its own conversation is reopened.
It never leaves the tab and is never sent with another conversation's question.
"""

from __future__ import annotations

import streamlit as st

STORAGE_PREFIX = "vlassist-draft:"  # sessionStorage key of one conversation's draft; "new" for a new one
POLL_MS = 150

_SCRIPT = """<script>{
if (!window.__vlassistDrafts) {
  window.__vlassistDrafts = true;
  const box = () => document.querySelector('[data-testid="stChatInputTextArea"]');
  const here = () => new URLSearchParams(window.location.search).get("c") || "new";
  const key = c => "%(prefix)s" + c;
  const setValue = (el, value) => {
    // The box is a React-controlled textarea: set it as typing would, so React keeps the value.
    Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set.call(el, value);
    el.dispatchEvent(new Event("input", {bubbles: true}));
  };
  let shown = here();
  setInterval(() => {
    const el = box();
    if (!el) return;
    const now = here();
    if (now === shown) {
      if (el.value) sessionStorage.setItem(key(now), el.value); else sessionStorage.removeItem(key(now));
      return;
    }
    // Another conversation is open: what the box holds was typed in the one left.
    const wanted = sessionStorage.getItem(key(now)) || "";
    shown = now;
    if (el.value !== wanted) setValue(el, wanted);
  }, %(poll)d);
}
}</script>"""


def keep_drafts() -> None:
    """Add the page script that keeps each conversation's unsent question text with it (once per tab)."""
    st.html(_SCRIPT % {"prefix": STORAGE_PREFIX, "poll": POLL_MS}, unsafe_allow_javascript=True)
