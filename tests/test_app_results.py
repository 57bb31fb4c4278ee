"""Structured results in the app (AppTest on the tiny checkpoint): JSON shapes, boxes, tables, HTML, zoom-in."""

from __future__ import annotations

import io
import json

import pytest
from conftest import ask_app, finish_answers, image_bytes, start_app, stored, use_app_env
from PIL import Image
from streamlit.testing.v1 import AppTest

from vlassist.answers.annotate import crop_box
from vlassist.answers.parsing import Box, parse_boxes, validation_errors
from vlassist.answers.prompts import PRESETS, grounding_prompt, json_schema_prompt
from vlassist.answers.schemas import boxes_schema, fields_schema, template_schema
from vlassist.conversation import Stats
from vlassist.images import Sizing, load_image
from vlassist.service.conversations import build_turns
from vlassist.store.history import History, NewImage

# The JSON grammar closes its document within the engine's default answer length; ask with that length.
JSON_LENGTH = 1024
PANEL = (1000, 800)  # original size of the stored test image
PANEL_INPUT = (500, 400)  # the size the model saw it at (Qwen2.5-VL boxes are pixels on this)
# The same region — x 100..300, y 80..240 in original pixels — in each family's own answer format.
BOX_ANSWERS = {
    "qwen2_5_vl": '```json\n[\n\t{"bbox_2d": [50, 40, 150, 120], "label": "gauge"}\n]\n```',
    "qwen3_vl": '```json\n[\n\t{"bbox_2d": [100, 100, 300, 300], "label": "压力表"}\n]\n```',
    "qwen2_vl": "<|object_ref_start|>gauge<|object_ref_end|><|box_start|>(100,100),(300,300)<|box_end|>",
}


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_qwen25):
    """The app on the tiny Qwen2.5-VL checkpoint with a fresh data folder."""
    return use_app_env(monkeypatch, tmp_path / "data", tiny_qwen25)


@pytest.fixture
def app_env3(monkeypatch, tmp_path, tiny_qwen3):
    """The app on the tiny Qwen3-VL checkpoint with a fresh data folder."""
    return use_app_env(monkeypatch, tmp_path / "data", tiny_qwen3)




def paste_schema(at, schema_text: str):
    """Choose the JSON preset, switch its control to a pasted schema, and paste `schema_text`."""
    at.button(key="preset_json").click().run()
    at.radio(key="json_source").set_value("schema").run()
    return at.text_area(key="json_schema_text").input(schema_text)


def panel_png() -> bytes:
    """A 1000×800 gradient, so a crop's pixels show where it was taken from."""
    buf = io.BytesIO()
    Image.linear_gradient("L").resize(PANEL).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def insert_answer(data_dir, text: str, *, preset: str | None, family: str = "qwen2_5_vl", status="complete",
                  options: dict | None = None, image: bytes | None = None) -> tuple[int, int]:
    """Store a question about the panel image and a fixed answer to it; return (conversation id, answer id)."""
    data = image or panel_png()
    loaded = load_image(data, "panel.png")
    history = History.open(data_dir)
    store = history.for_owner("local")
    conversation = store.create_conversation("fixed answer")
    store.add_user_message(conversation, "question", [NewImage(data, loaded, "panel.png")])
    stats = Stats(stop_reason="eos", new_tokens=20, prompt_tokens=300, visual_tokens=255,
                  images=[Sizing(loaded.size, PANEL_INPUT, 255)])
    answer = store.add_assistant_message(conversation, text, status, preset=preset, options=options or {},
                                         stats=stats, model_family=family)
    history.close()
    return conversation, answer


def reopen(conversation_id: int) -> AppTest:
    at = start_app()
    at.button(key=f"open_{conversation_id}").click().run()
    assert not at.exception, at.exception
    return at


def downloads(at) -> set[str]:
    # AppTest exposes download buttons as unknown elements carrying their label; only the answers' own count (the
    # conversation's export buttons sit in its menu beside the title).
    return {el.proto.label for message in at.chat_message for el in message.get("download_button")}


# ---- JSON extraction ----

def test_json_fields_answer_is_constrained_stored_and_shown(app_env):
    """Named fields constrain the answer: it parses, validates, keeps its schema, and shows a table and downloads."""
    at = start_app()
    at.button(key="preset_json").click().run()
    at.text_input(key="json_fields").input("vendor, total:number, paid:boolean").run()
    ask_app(at, PRESETS["json"].prompt, ("invoice.png", image_bytes((120, 80)), "image/png"), length=JSON_LENGTH)
    [conversation] = stored(app_env)
    question, answer = conversation.messages
    schema = json.dumps(fields_schema("vendor, total:number, paid:boolean"))
    assert answer.options["json_schema"] == schema
    assert validation_errors(json.loads(answer.text), schema) == ()
    assert answer.stats.stop_reason == "eos"
    assert len(at.chat_message[1].dataframe) == 1
    assert downloads(at) >= {"Download JSON", "Download CSV"}


def test_json_fields_question_is_stored_as_typed_with_its_schema_as_option(app_env):
    """The "Name fields" question is stored as the user typed it; its schema is kept as the question's option."""
    at = start_app()
    at.button(key="preset_json").click().run()
    at.text_input(key="json_fields").input("vendor, total:number").run()
    ask_app(at, "Read the receipt", ("invoice.png", image_bytes((120, 80)), "image/png"), length=JSON_LENGTH)
    [conversation] = stored(app_env)
    question, _ = conversation.messages
    assert question.text == "Read the receipt"
    assert question.options == {"json_schema": json.dumps(fields_schema("vendor, total:number"))}


def test_json_fields_question_shows_schema_folded_under_it(app_env):
    """The shown question is the typed text; the schema sits in a folded expander under it, not in the text."""
    at = start_app()
    at.button(key="preset_json").click().run()
    at.text_input(key="json_fields").input("vendor, total:number").run()
    ask_app(at, PRESETS["json"].prompt, ("invoice.png", image_bytes((120, 80)), "image/png"), length=JSON_LENGTH)
    [question_html] = [h.proto.body for h in at.chat_message[0].get("html")]
    assert PRESETS["json"].prompt in question_html and "properties" not in question_html
    [folded] = at.chat_message[0].expander
    assert folded.label == "JSON Schema" and not folded.proto.expanded
    assert json.loads(folded.json[0].value) == fields_schema("vendor, total:number")


def test_json_question_reaches_the_model_with_its_schema(tmp_path):
    """A question stored with its schema as option is read by the model with the schema-bearing prompt."""
    history = History.open(tmp_path / "data")
    store = history.for_owner("local")
    conversation = store.create_conversation("receipt")
    schema = json.dumps(fields_schema("total:number"))
    store.add_question(conversation, PRESETS["json"].prompt, preset="json", question_schema=schema)
    [turn] = build_turns(store.get_conversation(conversation), store)
    history.close()
    assert turn.text == json_schema_prompt(schema)


def test_json_template_answer_validates_on_qwen3(app_env3):
    """A template (meter panel) constrains a Qwen3-VL answer to JSON valid against that template."""
    at = start_app()
    at.button(key="preset_json").click().run()
    at.radio(key="json_source").set_value("template").run()
    at.selectbox(key="json_template").set_value("meter").run()
    ask_app(at, PRESETS["json"].prompt, ("meter.png", image_bytes((96, 96)), "image/png"), length=JSON_LENGTH)
    [conversation] = stored(app_env3)
    answer = conversation.messages[-1]
    assert json.loads(answer.options["json_schema"]) == template_schema("meter")
    assert validation_errors(json.loads(answer.text), template_schema("meter")) == ()


def test_invalid_pasted_schema_is_reported_under_the_control(app_env):
    """A pasted schema that is not JSON is reported at once, before anything is sent."""
    at = start_app()
    paste_schema(at, '{"type": "object", "properties": ').run()
    assert any("not valid JSON" in e.value for e in at.error)


def test_sending_with_invalid_schema_stores_nothing_and_keeps_everything(app_env):
    """Sending under a bad schema stores nothing; the question, the pasted schema and the image are kept."""
    at = start_app()
    paste_schema(at, '{"type": "objekt"}').run()
    ask_app(at, "Read the panel", ("panel.png", image_bytes(), "image/png"))
    assert stored(app_env) == []
    assert any("Not sent" in e.value for e in at.error)
    assert at.chat_input(key="chat_input").value == "Read the panel"
    assert at.text_area(key="json_schema_text").value == '{"type": "objekt"}'
    assert any("panel.png" in c.value for c in at.caption)


def test_fixed_schema_sends_the_kept_image(app_env):
    """After a refused send, fixing the schema sends the question with the image kept from the first try."""
    at = start_app()
    paste_schema(at, "[]").run()
    ask_app(at, "Read the panel", ("panel.png", image_bytes(), "image/png"))
    schema = {"type": "object", "properties": {"reading": {"type": "number"}}, "required": ["reading"]}
    at.text_area(key="json_schema_text").input(json.dumps(schema)).run()
    ask_app(at, "Read the panel", length=JSON_LENGTH)
    [conversation] = stored(app_env)
    question, answer = conversation.messages
    assert [i.name for i in question.images] == ["panel.png"]
    assert validation_errors(json.loads(answer.text), schema) == ()


def test_stored_schema_checks_the_answer_when_reopened(app_env):
    """An answer is validated against the schema stored with it: a mismatch is reported, not tabled."""
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    conversation, _ = insert_answer(app_env, '{"total": "twelve"}', preset="json",
                                    options={"json_schema": json.dumps(schema)})
    at = reopen(conversation)
    assert any("total" in e.value for e in at.chat_message[1].error)
    assert len(at.chat_message[1].dataframe) == 0


def test_stopped_json_answer_is_not_shown_as_a_result(app_env):
    """A JSON answer stopped part-way says so and shows no table or download."""
    conversation, _ = insert_answer(app_env, '{"vendor": "ACME", "total": 1', preset="json", status="interrupted")
    at = reopen(conversation)
    assert any("stopped" in w.value for w in at.chat_message[1].warning)
    assert len(at.chat_message[1].dataframe) == 0 and not downloads(at)


# ---- grounding ----

@pytest.mark.parametrize("family_env", ["app_env", "app_env3"])
def test_find_objects_preset_asks_in_the_family_format(family_env, request):
    """"Find objects" fills in the prompt of the loaded family and rewrites it for what the user wants found."""
    request.getfixturevalue(family_env)
    family = {"app_env": "qwen2_5_vl", "app_env3": "qwen3_vl"}[family_env]
    at = start_app()
    at.button(key="preset_grounding").click().run()
    assert at.chat_input(key="chat_input").value == grounding_prompt(family, "object")
    at.text_input(key="grounding_target").input("pressure gauge").run()
    assert at.chat_input(key="chat_input").value == grounding_prompt(family, "pressure gauge")



def test_find_objects_holds_the_answer_to_the_box_list_unless_turned_off(app_env):
    """"Find objects" sends the family's box schema with the question (the answer is stored under it); with
    "Strict box list" unticked the next question goes out free."""
    at = start_app()
    at.button(key="preset_grounding").click().run()
    ask_app(at, grounding_prompt("qwen2_5_vl", "gauge"), ("panel.png", panel_png(), "image/png"), length=400)
    answer = stored(app_env)[0].messages[1]
    assert answer.preset == "grounding"
    assert json.loads(answer.options["json_schema"]) == boxes_schema("qwen2_5_vl")
    # strict=False: the grammar lets raw control characters into a random model's label
    assert validation_errors(json.loads(answer.text, strict=False), boxes_schema("qwen2_5_vl")) == ()
    at.button(key="preset_grounding").click().run()
    at.checkbox(key="grounding_strict").uncheck().run()
    ask_app(at, grounding_prompt("qwen2_5_vl", "dial"), length=8)
    follow_up = stored(app_env)[0].messages[3]
    assert follow_up.preset == "grounding" and follow_up.options.get("json_schema") is None

@pytest.mark.parametrize("family", list(BOX_ANSWERS))
def test_boxes_answer_from_history_is_drawn_in_original_pixels(app_env, family):
    """A stored grounding answer in each family's format shows the drawn image and its box in original pixels."""
    conversation, answer = insert_answer(app_env, BOX_ANSWERS[family], preset="grounding", family=family)
    at = reopen(conversation)
    reply = at.chat_message[1]
    frame = reply.dataframe[0].value
    assert (frame["x1"][0], frame["y1"][0], frame["x2"][0], frame["y2"][0]) == (100, 80, 300, 240)
    assert len(reply.image) == 1
    assert downloads(at) >= {"JSON", "CSV", "COCO"}


def test_free_answer_with_boxes_offers_the_boxes_view(app_env):
    """An answer without the grounding preset that holds boxes still gets the boxes view."""
    conversation, _ = insert_answer(app_env, BOX_ANSWERS["qwen2_5_vl"], preset=None)
    at = reopen(conversation)
    assert [e.label for e in at.chat_message[1].expander].count("Boxes view") == 1
    assert len(at.chat_message[1].dataframe) == 1


def test_zoom_in_asks_a_follow_up_with_the_full_resolution_crop(app_env):
    """Zoom in adds a question with the box's crop of the original as a new image, and its answer."""
    conversation, answer = insert_answer(app_env, BOX_ANSWERS["qwen2_5_vl"], preset="grounding")
    at = reopen(conversation)
    at.select_slider(key="opt_max_new_tokens").set_value(128)
    at.button(key=f"msg{answer}-zoom").click().run()
    assert not at.exception, at.exception
    finish_answers(at)
    [stored_conversation] = stored(app_env)
    assert [m.role for m in stored_conversation.messages] == ["user", "assistant", "user", "assistant"]
    question, reply = stored_conversation.messages[2:]
    expected = crop_box(load_image(panel_png()).image, Box("gauge", 100, 80, 300, 240))
    [ref] = question.images
    history = History.open(app_env)
    crop = load_image(history.for_owner("local").image_data(ref.sha256)).image
    history.close()
    assert crop.size == expected.size and crop.tobytes() == expected.tobytes()
    assert reply.status == "complete" and reply.stats.images[-1].original_size == expected.size
    assert [m.name for m in at.chat_message] == ["user", "assistant", "user", "assistant"]


TWO_IMAGE_BOX = '```json\n[{"bbox_2d": [100, 50, 300, 150], "label": "gauge"}]\n```'


def tall_png() -> bytes:
    """A 300×900 image: another size and shape than the panel, so each maps boxes differently."""
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((300, 900)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def box_row(frame) -> tuple:
    return (frame["x1"][0], frame["y1"][0], frame["x2"][0], frame["y2"][0])


@pytest.mark.parametrize("family_env", ["app_env", "app_env3"])
def test_boxes_about_the_second_image_are_mapped_with_its_own_sizes(family_env, request):
    """A question with two images: each image row keeps the size the model saw it at, and boxes the user puts
    on the second image are mapped with the second image's sizes, not the first's."""
    data_dir = request.getfixturevalue(family_env)
    family = {"app_env": "qwen2_5_vl", "app_env3": "qwen3_vl"}[family_env]
    at = start_app()
    at.button(key="preset_grounding").click().run()
    ask_app(at, grounding_prompt(family, "gauge"), ("panel.png", panel_png(), "image/png"),
            ("tall.png", tall_png(), "image/png"))
    [conversation] = stored(data_dir)
    question, answer = conversation.messages
    assert answer.preset == "grounding" and answer.model_family == family
    # The engine's own report of what it fed the model, image by image, is what each image row now holds.
    assert [ref.sizing for ref in question.images] == answer.stats.images
    first, second = answer.stats.images
    assert first.original_size == PANEL and second.original_size == (300, 900)
    # The tiny model's text is random: give the stored answer a known box.
    history = History.open(data_dir)
    assert history.for_owner("local").update_answer(answer.id, TWO_IMAGE_BOX, status="complete")
    history.close()
    on_first = parse_boxes(TWO_IMAGE_BOX, family, first.input_size, first.original_size)[0]
    on_second = parse_boxes(TWO_IMAGE_BOX, family, second.input_size, second.original_size)[0]
    assert on_first[1:] != on_second[1:]

    at = reopen(conversation.id)
    reply = at.chat_message[1]
    assert box_row(reply.dataframe[0].value) == on_first[1:]
    at.selectbox(key=f"msg{answer.id}-boxes-image").set_value(1).run()
    assert not at.exception, at.exception
    reply = at.chat_message[1]
    assert box_row(reply.dataframe[0].value) == on_second[1:]
    assert len(reply.image) == 1


# ---- tables, charts and HTML ----

@pytest.mark.parametrize("preset", ["table", "chart"])
def test_table_answer_from_history_is_a_dataframe_with_csv(app_env, preset):
    """A stored table or chart answer shows as a dataframe with its headers and a CSV download."""
    text = "| Month | Sales (kEUR) |\n|---|---|\n| Jan | 3.5 |\n| Feb | 5 |"
    conversation, _ = insert_answer(app_env, text, preset=preset)
    at = reopen(conversation)
    frame = at.chat_message[1].dataframe[0].value
    assert list(frame.columns) == ["Month", "Sales (kEUR)"] and len(frame) == 2
    assert "Download CSV" in downloads(at)


def test_html_answer_from_history_shows_code_preview_and_download(app_env):
    """A stored UI → HTML answer shows the page as code, a preview frame and a download."""
    page = '<!DOCTYPE html>\n<html><body><button style="color:red">Log in</button></body></html>'
    conversation, _ = insert_answer(app_env, f"Here it is:\n```html\n{page}\n```", preset="html")
    at = reopen(conversation)
    assert page in [c.value for c in at.chat_message[1].code]
    assert len(at.get("iframe")) == 1
    assert "Download HTML" in downloads(at)
