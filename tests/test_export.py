"""Conversation export: Markdown, JSON with embedded images, and a zip with the original images."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
from conftest import image_bytes
from markdown_it import MarkdownIt

from vlassist.conversation import Stats
from vlassist.images import Sizing, load_image
from vlassist.store import export
from vlassist.store.history import History, NewImage


@pytest.fixture
def stored(tmp_path):
    """A store holding one conversation with two images (one attached twice) and two answers."""
    history = History.open(tmp_path)
    store = history.for_owner("ann")
    conversation = store.create_conversation("Receipt check")
    a, b = image_bytes((40, 30)), image_bytes((30, 40), (0, 90, 0), fmt="JPEG")
    store.add_user_message(conversation, "Read it", [NewImage(a, load_image(a), "a.png")])
    store.add_assistant_message(conversation, "TOTAL 12", "complete", preset="ocr", model_family="qwen3_vl",
                                stats=Stats(new_tokens=3, images=[Sizing((40, 30), (56, 28), 2)]))
    store.add_user_message(conversation, "And these?", [NewImage(a, load_image(a), "a.png"),
                                                        NewImage(b, load_image(b), "b.jpg")])
    store.add_assistant_message(conversation, "half", "interrupted")
    yield store, store.get_conversation(conversation), {load_image(a).sha256: a, load_image(b).sha256: b}
    history.close()


def test_markdown_has_every_message_and_links_each_image(stored):
    """The Markdown export lists each turn in order, marks a stopped answer, and links images by file."""
    _, conversation, _ = stored
    md = export.to_markdown(conversation)
    assert md.startswith("# Receipt check")
    shown = MarkdownIt("commonmark").render(md)  # escapes in the Markdown are gone once a viewer shows it
    assert shown.index("Read it") < shown.index("TOTAL 12") < shown.index("And these?") < shown.index("half")
    assert "## Assistant (interrupted)" in md
    for message in conversation.messages:
        for ref in message.images:
            assert f"(images/{export.image_filename(ref)})" in md


def test_json_embeds_original_image_bytes(stored):
    """The JSON export carries each image's original bytes as base64, plus the answer details."""
    store, conversation, originals = stored
    data = json.loads(export.to_json(conversation, store.image_data))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    answer = data["messages"][1]
    assert answer["preset"] == "ocr" and answer["model_family"] == "qwen3_vl"
    assert Stats.from_dict(answer["stats"]) == Stats(new_tokens=3, images=[Sizing((40, 30), (56, 28), 2)])
    assert data["messages"][0]["images"][0]["input_size"] == [56, 28]
    for message in data["messages"]:
        for image in message["images"]:
            assert base64.b64decode(image["data_base64"]) == originals[image["sha256"]]


def test_zip_holds_markdown_json_and_each_image_once(stored):
    """The zip has conversation.md, conversation.json and every distinct image exactly once."""
    store, conversation, originals = stored
    archive = zipfile.ZipFile(io.BytesIO(export.to_zip(conversation, store.image_data)))
    names = archive.namelist()
    images = [n for n in names if n.startswith("images/")]
    assert {"conversation.md", "conversation.json"} <= set(names)
    assert len(images) == len(set(images)) == len(originals)
    assert sorted(archive.read(n) for n in images) == sorted(originals.values())
    markdown = archive.read("conversation.md").decode()
    assert all(f"({name})" in markdown for name in images)


def test_slug_is_safe_for_file_names():
    """Titles become lower-case dash-separated file names, never empty."""
    assert export.slug("Invoice: March/April 2025!") == "invoice-march-april-2025"
    assert export.slug("???") == "conversation"


def test_failed_answer_gives_its_reason_in_markdown(tmp_path):
    """A failed answer is headed with its status and quotes the error its stats recorded."""
    history = History.open(tmp_path)
    store = history.for_owner("ann")
    conversation = store.create_conversation("Oops")
    answer = store.start_answer(conversation)
    store.update_answer(answer, "", status="error", stats=Stats(stop_reason="error", error="out of memory"))
    md = export.to_markdown(store.get_conversation(conversation))
    history.close()
    assert "## Assistant (error)" in md and "> Error: out of memory" in md


def test_markdown_export_escapes_html_in_answers_titles_and_file_names():
    """HTML and <script> in titles, answers and image names show as text in Markdown; JSON keeps the text as is."""
    import json

    from vlassist.images import Sizing
    from vlassist.store.export import to_json, to_markdown
    from vlassist.store.records import ImageRef, StoredConversation, StoredMessage

    evil = "<script>alert(1)</script>"
    ref = ImageRef(sha256="a" * 64, name=f"{evil}.png", format="PNG", width=8, height=8, nbytes=10,
                   sizing=Sizing((8, 8), (28, 28), 1))
    conv = StoredConversation(id=1, owner="local", title=f"t {evil}", created_at=0.0, updated_at=0.0, messages=[
        StoredMessage(id=1, role="user", text=f"q {evil}", status="complete", created_at=0.0, images=[ref]),
        StoredMessage(id=2, role="assistant", text=f"<img src=x onerror=alert(1)> {evil}", status="complete",
                      created_at=0.0)])
    md = to_markdown(conv)
    shown = MarkdownIt("commonmark").render(md)  # HTML on, as Markdown viewers have it
    assert "<script>" not in shown and "<img src=x" not in shown and "&lt;script&gt;" in shown
    data = json.loads(to_json(conv))
    assert data["title"] == f"t {evil}" and data["messages"][1]["text"].startswith("<img src=x")
