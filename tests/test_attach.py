"""The attach area (AppTest) and the shared PDF code: images and PDF pages shown with sizes before Send."""

from __future__ import annotations

import io

import pypdfium2 as pdfium
import pytest
from conftest import ask_app, finish_answers, image_bytes, start_app, stored, use_app_env
from test_batch import encrypted_pdf

from vlassist import pdf
from vlassist.errors import ImageError, VlassistError
from vlassist.ui import attach

SHORT = 16  # answer length: these tests are about what is sent, not what is answered


def make_pdf(*widths: int, height: int = 300) -> bytes:
    """A PDF made with pypdfium2, one blank page per width (points): the rendered sizes tell the pages apart."""
    doc = pdfium.PdfDocument.new()
    for width in widths:
        doc.new_page(width, height)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def rendered_size(points: int) -> int:
    """Pixels a side of `points` gets at the default resolution (rounded up, as pages are rendered)."""
    return -(-points * pdf.DEFAULT_DPI // pdf.POINTS_PER_INCH)


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_qwen25):
    """The app on the tiny checkpoint on CPU with a fresh data folder."""
    return use_app_env(monkeypatch, tmp_path / "data", tiny_qwen25)


def attach_files(at, *files: tuple[str, bytes, str]):
    """Drop files on the attach area's uploader and run the page."""
    [uploader] = at.file_uploader
    uploader.set_value(list(files)).run()
    assert not at.exception, at.exception
    return at


def send(at, question: str, length: int = SHORT):
    """Send a question from the chat box (no files of its own) and wait until its answer is stored."""
    return ask_app(at, question, length=length)


def captions(at) -> list[str]:
    """Every caption on the page, Markdown escapes removed."""
    return [c.value.replace("\\", "") for c in at.caption]


def page_names(conversation) -> list[str]:
    """The image names of the conversation's first question."""
    return [ref.name for ref in conversation.messages[0].images]


# ---- the shared PDF code ----

def test_page_lists_round_trip():
    """A page list formats as the shortest ranges and parses back to the same pages."""
    assert pdf.format_pages([7, 1, 2, 3, 9, 10]) == "1-3,7,9-10"
    assert pdf.select_pages(12, pdf.parse_pages("1-3,7,9-10")) == [1, 2, 3, 7, 9, 10]


def test_page_list_errors_name_the_field():
    """A bad page list is refused naming the field it was typed in and how to write one."""
    with pytest.raises(VlassistError, match=r"Pages 'x2'.*1-3,7"):
        pdf.parse_pages("x2", "Pages")


def test_pages_render_as_pngs_hashed_like_stored_images():
    """Each picked page is a PNG file of the page's size; its hash is the PNG's, as a stored image's is."""
    import hashlib

    [(png, loaded)] = pdf.render_pngs(make_pdf(200, 300), "doc.pdf", [2])
    assert png.startswith(b"\x89PNG") and loaded.format == "PNG"
    assert loaded.size == (rendered_size(300), rendered_size(300))
    assert loaded.sha256 == hashlib.sha256(png).hexdigest()


def test_damaged_pdf_is_refused_naming_the_file():
    """A truncated PDF cannot be attached: the error names the file and says it is damaged."""
    with pytest.raises(ImageError, match=r"^cut\.pdf: the PDF is damaged"):
        attach.open_file("cut.pdf", make_pdf(200)[:120])


def test_encrypted_pdf_is_refused_naming_the_file():
    """A password-protected PDF cannot be attached: the error names the file and says it is encrypted."""
    with pytest.raises(ImageError, match=r"^locked\.pdf: the PDF is encrypted"):
        attach.open_file("locked.pdf", encrypted_pdf())


# ---- the page ----

def test_attached_image_shows_its_sizes_before_send(app_env):
    """An attached image is shown at once with its size, format and visual tokens; nothing is stored yet."""
    at = attach_files(start_app(), ("shot.png", image_bytes((90, 120)), "image/png"))
    [caption] = [c for c in captions(at) if c.startswith("shot.png")]
    assert "90×120 PNG" in caption and "model sees" in caption and "visual tokens" in caption
    assert stored(app_env) == []


def test_visual_tokens_follow_the_settings(app_env):
    """Low-resolution mode changes the visual tokens shown for an attached image before it is sent."""
    at = attach_files(start_app(), ("big.png", image_bytes((900, 700)), "image/png"))
    before = [c for c in captions(at) if c.startswith("big.png")]
    at.toggle(key="opt_low_res").set_value(True).run()
    after = [c for c in captions(at) if c.startswith("big.png")]
    assert len(before) == len(after) == 1 and before != after


def test_an_attached_image_is_kept_only_at_its_model_input_size(app_env):
    """A large attached image stays in the session at the size the model sees, not its original pixels; its
    caption still gives the original size."""
    at = start_app()
    at.toggle(key="opt_low_res").set_value(True).run()
    at = attach_files(at, ("big.png", image_bytes((1800, 1400)), "image/png"))
    [caption] = [c for c in captions(at) if c.startswith("big.png")]
    assert "1800×1400 PNG" in caption
    [item] = at.session_state[attach.TRAY_KEY]
    assert item.image.loaded.size == (1800, 1400)
    assert f"model sees {item.image.loaded.image.width}×{item.image.loaded.image.height}" in caption
    assert item.image.loaded.image.width * item.image.loaded.image.height < 1800 * 1400 / 4


@pytest.fixture
def bare_tray():
    """The attach tray outside a page run (Streamlit's bare mode), emptied afterwards."""
    import streamlit as st

    yield
    st.session_state.pop(attach.TRAY_KEY, None)


def test_an_image_kept_small_is_decoded_again_when_more_detail_is_asked(bare_tray):
    """Attached under a small fit, then sent under a larger one: the image sent is decoded again from its file at
    the new size (never an enlarged copy of the small one); under the same fit it is sent as kept."""
    data = image_bytes((1200, 900))
    item = attach.open_file("shot.png", data, fit=lambda size: (120, 90))
    attach.add(item)
    assert item.image.loaded.image.size == (120, 90)
    [same] = attach.images(lambda size: (120, 90))
    assert same.loaded.image.size == (120, 90)
    [sharper] = attach.images(lambda size: (600, 450))
    assert sharper.loaded.image.size == (600, 450) and sharper.loaded.size == (1200, 900)
    assert sharper.data == data and sharper.name == "shot.png"


def test_damaged_file_is_refused_at_once(app_env):
    """A file that is not an image is refused when dropped, naming it; it is not attached and nothing is stored."""
    at = attach_files(start_app(), ("notes.png", b"not an image", "image/png"),
                      ("ok.png", image_bytes(), "image/png"))
    assert any(e.value.startswith("Not attached — notes.png: not a supported image") for e in at.error)
    assert any(c.startswith("ok.png") for c in captions(at))
    assert not any(c.startswith("notes.png") for c in captions(at))
    assert stored(app_env) == []


def test_attached_image_goes_with_the_question_and_the_area_empties(app_env):
    """Send takes the attached image with the question; afterwards the attach area is empty and a new uploader."""
    at = attach_files(start_app(), ("shot.png", image_bytes(), "image/png"))
    key = at.file_uploader[0].key
    at = send(at, "What is it?")
    assert page_names(stored(app_env)[0]) == ["shot.png"]
    assert at.file_uploader[0].key != key
    assert not any(b.key and b.key.startswith("remove_") for b in at.button)


def test_removed_image_is_not_sent(app_env):
    """Remove takes an image out of the attach area: the question goes without it."""
    at = attach_files(start_app(), ("a.png", image_bytes(color=(1, 2, 3)), "image/png"),
                      ("b.png", image_bytes(color=(4, 5, 6)), "image/png"))
    [first] = [b for b in at.button if b.key and b.key.startswith("remove_")][:1]
    first.click().run()
    send(at, "Which one?")
    assert page_names(stored(app_env)[0]) == ["b.png"]


def test_pdf_pages_show_with_sizes_and_go_with_the_question(app_env):
    """A 3-page PDF shows each page with its size and visual tokens; Send stores the pages as named images."""
    at = attach_files(start_app(), ("report.pdf", make_pdf(200, 300, 400), "application/pdf"))
    pages = [c for c in captions(at) if c.startswith("report.pdf p")]
    assert [c.split()[1] for c in pages] == ["p1.png", "p2.png", "p3.png"]
    for caption, width in zip(pages, (200, 300, 400)):
        assert f"{rendered_size(width)}×{rendered_size(300)} PDF page" in caption and "visual tokens" in caption
    send(at, "Summarise the report")
    [conversation] = stored(app_env)
    assert page_names(conversation) == ["report.pdf p1.png", "report.pdf p2.png", "report.pdf p3.png"]
    assert [ref.size[0] for ref in conversation.messages[0].images] == [rendered_size(w) for w in (200, 300, 400)]


def test_picked_pages_are_the_ones_sent(app_env):
    """Typing pages in the PDF's page box sends only those pages."""
    at = attach_files(start_app(), ("report.pdf", make_pdf(200, 300, 400, 500), "application/pdf"))
    [box] = [t for t in at.text_input if t.key.startswith("pages_")]
    box.input("2,4").run()
    assert [c.split()[1] for c in captions(at) if c.startswith("report.pdf p")] == ["p2.png", "p4.png"]
    send(at, "Compare the pages")
    assert page_names(stored(app_env)[0]) == ["report.pdf p2.png", "report.pdf p4.png"]


def test_removing_a_page_takes_it_out_of_the_pick(app_env):
    """A page's remove control drops that page from the page box."""
    at = attach_files(start_app(), ("report.pdf", make_pdf(200, 300, 400), "application/pdf"))
    [drop] = [b for b in at.button if b.key and b.key.startswith("drop_") and b.key.endswith("_2")]
    drop.click().run()
    [box] = [t for t in at.text_input if t.key.startswith("pages_")]
    assert box.value == "1,3"


def test_long_pdf_starts_with_the_first_pages_up_to_the_limit(app_env):
    """A PDF over the page limit shows its first pages up to the limit and says how many it has."""
    at = attach_files(start_app(), ("long.pdf", make_pdf(*[200] * (attach.MAX_PAGES + 4)), "application/pdf"))
    [box] = [t for t in at.text_input if t.key.startswith("pages_")]
    assert box.value == f"1-{attach.MAX_PAGES}"
    assert len([c for c in captions(at) if c.startswith("long.pdf p")]) == attach.MAX_PAGES
    assert any(f"{attach.MAX_PAGES} of {attach.MAX_PAGES + 4} pages" in c for c in captions(at))


def test_more_pages_than_the_limit_are_refused(app_env):
    """Picking more pages than the limit shows the limit and how to pick; Send is refused and stores nothing."""
    at = attach_files(start_app(), ("long.pdf", make_pdf(*[200] * (attach.MAX_PAGES + 4)), "application/pdf"))
    [box] = [t for t in at.text_input if t.key.startswith("pages_")]
    box.input("1-").run()
    [error] = [e.value for e in at.error]
    assert f"at most {attach.MAX_PAGES} pages" in error and "Pages" in error
    at = send(at, "All of it")
    assert any(e.value.startswith("Not sent — long.pdf:") for e in at.error)
    assert stored(app_env) == []
    assert at.chat_input(key="chat_input").value == "All of it"


def test_pdf_in_the_chat_box_sends_its_pages(app_env):
    """A short PDF dropped in the chat box itself goes with the question as its pages."""
    ask_app(start_app(), "From the box", ("memo.pdf", make_pdf(200, 300), "application/pdf"), length=SHORT)
    assert page_names(stored(app_env)[0]) == ["memo.pdf p1.png", "memo.pdf p2.png"]


def test_long_pdf_in_the_chat_box_waits_in_the_attach_area(app_env):
    """A PDF over the limit dropped in the chat box is not sent: it moves to the attach area to pick pages."""
    at = ask_app(start_app(), "Too long", ("long.pdf", make_pdf(*[200] * (attach.MAX_PAGES + 1)), "application/pdf"),
                 length=SHORT)
    assert any("long.pdf" in e.value and "pick its pages" in e.value for e in at.error)
    assert any(t.key.startswith("pages_") for t in at.text_input)
    assert stored(app_env) == []


def test_refused_send_keeps_the_chat_box_images_in_the_attach_area(app_env):
    """When a send is refused, a good image from the chat box waits in the attach area and goes with the next one."""
    at = start_app()
    at.button(key="preset_json").click().run()
    at.radio(key="json_source").set_value("schema").run()
    at.text_area(key="json_schema_text").input("{not json").run()
    at.chat_input(key="chat_input").set_value("Extract").upload("kept.png", image_bytes(), "image/png")
    at.run()
    assert any("Not sent" in e.value for e in at.error)
    assert any(c.startswith("kept.png") for c in captions(at))
    at.radio(key="json_source").set_value("fields").run()
    finish_answers(send(at, "Extract"))
    assert page_names(stored(app_env)[0]) == ["kept.png"]
