"""Pasted, dropped and chosen files all go to the attach tray, where each shows its sizes and tokens before Send.

Streamlit's chat box keeps pasted or dropped files as bare name chips and tells the server only on Send, so the
user could not see what the model will get. A small page script (allowed by the page's CSP, nothing fetched)
catches, before the chat box sees them, a paste that carries files (anywhere on the page), files dropped
anywhere outside the tray's own uploader, and files picked with the chat box's attach button, and hands them to
the tray's uploader as its file chooser would. A pasted screenshot, which every browser calls "image.png", is
named after the local time it was pasted. Pasted text is left alone.
"""

from __future__ import annotations

import streamlit as st

_SCRIPT = """<script>{
if (!window.__vlassistTray) {
  window.__vlassistTray = true;
  const AREA = '.st-key-attach_area';
  const trayInput = () => document.querySelector(AREA + ' [data-testid="stFileUploader"] input[type="file"]');
  const inTray = node => node instanceof Element && node.closest(AREA + ' [data-testid="stFileUploader"]');
  const chatInput = node => node instanceof HTMLInputElement && node.type === 'file'
    && node.closest('[data-testid="stChatInput"]');
  const hasFiles = transfer => !!transfer && [...transfer.types].includes('Files');
  const two = n => String(n).padStart(2, '0');
  const pastedName = (file, when) => {
    // Browsers call every pasted screenshot "image.png": name it by the time it came, as the user's clock says.
    const m = /^image\\.(png|jpe?g|gif|webp)$/i.exec(file.name);
    if (!m) return file;
    const stamp = `${when.getFullYear()}-${two(when.getMonth() + 1)}-${two(when.getDate())} `
      + `${two(when.getHours())}.${two(when.getMinutes())}.${two(when.getSeconds())}`;
    return new File([file], `Pasted ${stamp}.${m[1].toLowerCase()}`, {type: file.type});
  };
  const toTray = files => {
    const input = trayInput();
    if (!input || !files.length) return false;  // no tray on this page: leave the event to the page
    const list = new DataTransfer();
    files.forEach(f => list.items.add(f));
    input.files = list.files;
    // As the browser's file chooser does: the uploader reads the files on these events.
    input.dispatchEvent(new Event('input', {bubbles: true, composed: true}));
    input.dispatchEvent(new Event('change', {bubbles: true, composed: true}));
    return true;
  };
  const take = event => { event.preventDefault(); event.stopImmediatePropagation(); };
  window.addEventListener('paste', event => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length) return;  // text: the box takes it as usual
    const when = new Date();
    if (toTray(files.map(f => pastedName(f, when)))) take(event);
  }, true);
  const dragging = on => document.body.classList.toggle('vl-dragging-files', on);
  for (const type of ['dragenter', 'dragover']) {
    window.addEventListener(type, event => {
      if (!hasFiles(event.dataTransfer) || inTray(event.target) || !trayInput()) return;
      take(event);  // the drop comes here, not to the chat box (nor opens the file in the tab)
      event.dataTransfer.dropEffect = 'copy';
      dragging(true);
    }, true);
  }
  window.addEventListener('dragleave', event => {
    if (!event.relatedTarget) dragging(false);  // the pointer left the window
  }, true);
  window.addEventListener('drop', event => {
    dragging(false);
    if (!hasFiles(event.dataTransfer) || inTray(event.target)) return;
    if (toTray([...event.dataTransfer.files])) take(event);
  }, true);
  window.addEventListener('change', event => {
    const input = event.target;
    if (!chatInput(input) || !input.files?.length) return;
    const files = [...input.files];
    if (toTray(files)) { take(event); input.value = ''; }
  }, true);
}
}</script>
<style>
body.vl-dragging-files .st-key-attach_area [data-testid="stFileUploaderDropzone"] {
  outline: 2px dashed rgba(255, 75, 75, 0.8); outline-offset: 2px;
}
</style>"""


def route_files_to_tray() -> None:
    """Add the page script that sends pasted, dropped and chat-box-chosen files to the attach tray (once per tab)."""
    st.html(_SCRIPT, unsafe_allow_javascript=True)
