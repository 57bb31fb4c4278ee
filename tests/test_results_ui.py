"""The result renderers in a small Streamlit script, driven with AppTest."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import streamlit as st
from PIL import Image
from vlassist.ui.results import render_result

case = json.loads({case!r})
images = []
if case.get("size"):
    images = [{{"original_size": case["size"], "input_size": case["input"],
               "image": Image.new("RGB", tuple(case["size"]), (255, 255, 255)), "name": "panel.png"}}]
for i, (size, input_size) in enumerate(case.get("images") or []):
    images.append({{"original_size": size, "input_size": input_size,
                   "image": Image.new("RGB", tuple(size), (255, 255, 255)), "name": f"image-{{i + 1}}.png"}})
request = render_result(case["preset"], case["text"], family=case["family"], images=images,
                        stop_reason=case["stop"], key="m1", schema=case.get("schema"))
if request:
    st.session_state["zoom"] = {{"size": list(request["image"].size), "label": request["box"].label,
                                 "prompt": request["prompt"]}}
"""


def _app(preset, text, stop="eos", family="qwen2_5_vl", size=None, input_size=None, schema=None, images=None):
    from conftest import ROOT

    case = {"preset": preset, "text": text, "stop": stop, "family": family, "size": size, "input": input_size,
            "schema": schema, "images": images}
    at = AppTest.from_string(SCRIPT.format(root=str(ROOT), case=json.dumps(case)), default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    return at


def _downloads(at) -> dict[str, str]:
    # AppTest exposes download buttons as unknown elements carrying their label and file URL.
    return {el.proto.label: el.proto.url for el in at.get("download_button")}


def test_json_result_table_and_downloads():
    """A valid JSON answer shows a field table and offers JSON and CSV downloads."""
    at = _app("json", '```json\n{"vendor": "ACME", "total": 12.5, "lines": [{"qty": 2}]}\n```')
    frame = at.dataframe[0].value
    assert list(frame["field"]) == ["vendor", "total", "lines[0].qty"]
    assert set(_downloads(at)) == {"Download JSON", "Download CSV"}


def test_json_cut_by_length_shows_message_not_result():
    """An answer cut by the length limit says so and shows no result table or download."""
    at = _app("json", '{"vendor": "ACME", "total": 1', stop="length")
    assert "length limit" in at.warning[0].value
    assert not at.dataframe and not _downloads(at)


def test_json_schema_mismatch_is_an_error():
    """JSON that fails the schema is reported, not shown as a result."""
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    at = _app("json", '{"total": "n/a"}', schema=schema)
    assert "total" in at.error[0].value and not at.dataframe


def test_table_answer_as_dataframe():
    """A Markdown table answer becomes a dataframe with its headers, and a CSV download."""
    at = _app("chart", "| Month | Sales |\n|---|---|\n| Jan | 3 |\n| Feb | 5 |")
    frame = at.dataframe[0].value
    assert list(frame.columns) == ["Month", "Sales"] and list(frame["Sales"]) == ["3", "5"]
    assert "Download CSV" in _downloads(at)


def test_html_answer_shows_code_and_download():
    """An HTML answer shows the extracted page as code and offers it for download."""
    at = _app("html", "```html\n<html><body><h1>Login</h1></body></html>\n```")
    assert at.code[0].value == "<html><body><h1>Login</h1></body></html>"
    assert "Download HTML" in _downloads(at)


def test_boxes_drawn_with_table_and_exports():
    """A grounding answer lists its boxes in original pixels and offers JSON, CSV and COCO."""
    text = '```json\n[{"bbox_2d": [100, 100, 500, 300], "label": "gauge"}]\n```'
    at = _app("grounding", text, family="qwen3_vl", size=[2000, 1000], input_size=[640, 320])
    frame = at.dataframe[0].value
    assert (frame["x1"][0], frame["y1"][0], frame["x2"][0], frame["y2"][0]) == (200, 100, 1000, 300)
    assert set(_downloads(at)) == {"JSON", "CSV", "COCO"}


def test_zoom_in_returns_full_resolution_crop():
    """Pressing Zoom in returns a crop of the original image around the chosen box, for a follow-up."""
    text = '[{"bbox_2d": [10, 10, 60, 30], "label": "a"}, {"bbox_2d": [100, 50, 200, 150], "label": "b"}]'
    at = _app("grounding", text, family="qwen2_5_vl", size=[1000, 800], input_size=[250, 200])
    at.selectbox(key="m1-zoom-pick").set_value(1)
    at.button(key="m1-zoom").click()
    at.run()
    zoom = at.session_state["zoom"]
    assert zoom["label"] == "b" and zoom["size"] == [480, 480]


@pytest.mark.parametrize(("family", "first", "second"), [
    ("qwen2_5_vl", (200, 100, 1000, 300), (50, 75, 250, 225)),  # pixels of each image's own model input
    ("qwen3_vl", (200, 100, 1000, 300), (30, 75, 150, 225)),  # thousandths of each image's own size
])
def test_boxes_on_the_second_image_use_its_sizes(family, first, second):
    """With two images, the boxes follow the image the user picks, mapped with that image's own sizes."""
    text = '```json\n[{"bbox_2d": [100, 100, 500, 300], "label": "gauge"}]\n```'
    at = _app("grounding", text, family=family, images=[[[2000, 1000], [1000, 1000]], [[300, 750], [600, 1000]]])
    assert tuple(at.dataframe[0].value.iloc[0][["x1", "y1", "x2", "y2"]]) == first
    at.selectbox(key="m1-boxes-image").set_value(1).run()
    assert not at.exception, at.exception
    assert tuple(at.dataframe[0].value.iloc[0][["x1", "y1", "x2", "y2"]]) == second
    at.button(key="m1-zoom").click().run()
    width, height = at.session_state["zoom"]["size"]
    assert width <= 300 and height <= 750  # cropped from the second image, not the 2000-wide first


@pytest.mark.parametrize("preset", ["describe", "ocr", None])
def test_free_text_presets_render_nothing(preset):
    """Presets without a structured view add no elements."""
    at = _app(preset, "Some text.")
    assert not at.dataframe and not at.warning and not at.info
