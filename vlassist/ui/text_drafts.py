"""Typed-but-unsent question text kept with its conversation, in the browser tab.

Streamlit's chat box is a trigger widget: what is typed reaches the server only on Send, so the server cannot
keep a draft. A small page script (allowed by the page's CSP, nothing fetched) watches the box and the open
conversation (the address's ?c=): the text is kept per conversation in the tab's sessionStorage, taken out of
the box when another conversation (or a new one) is opened, and put back when its own conversation is reopened
or the tab reloads. The switch happens when the address changes, not on the next poll: text typed just after a
switch stays where it was typed, and a question already sent never comes back as a draft. It never leaves the
tab and is never sent with another conversation's question.
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
  const keep = (el, c) => {
    if (el.value) sessionStorage.setItem(key(c), el.value); else sessionStorage.removeItem(key(c));
  };
  let shown = here();
  // The opened conversation's draft, waiting for a box to put it in; on a reload, the draft it had.
  let owed = sessionStorage.getItem(key(shown));
  const follow = () => {
    const el = box();
    const now = here();
    if (now !== shown) {
      // Switched at the moment the address changes, before the page draws the other conversation. What the
      // box holds now was typed in the one left: empty after a send, so a sent question is no draft anywhere.
      if (el && owed === null) keep(el, shown);
      shown = now;
      owed = sessionStorage.getItem(key(now)) || "";
    }
    if (el && owed !== null) {
      if (el.value !== owed) setValue(el, owed);
      owed = null;
    }
  };
  // Streamlit changes the address with pushState/replaceState as the rerun that opens a conversation begins.
  for (const name of ["pushState", "replaceState"]) {
    const original = history[name];
    history[name] = function (...args) { const result = original.apply(this, args); follow(); return result; };
  }
  window.addEventListener("popstate", follow);
  const sync = () => {
    follow();
    const el = box();
    if (el && owed === null) keep(el, shown);
  };
  document.addEventListener("input", event => { if (event.target === box()) sync(); }, true);
  setInterval(sync, %(poll)d);  // also catches the box being cleared by a send, which fires no input event
}
}</script>"""


def script() -> str:
    """The page script, as added to the page."""
    return _SCRIPT % {"prefix": STORAGE_PREFIX, "poll": POLL_MS}


def keep_drafts() -> None:
    """Add the page script that keeps each conversation's unsent question text with it (once per tab)."""
    st.html(script(), unsafe_allow_javascript=True)
