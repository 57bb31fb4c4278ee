"""parse_boxes, JSON extraction and HTML extraction on fixed answers in each model family's real format."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlassist.answers.parsing import Box, extract_html, extract_json, flatten, parse_boxes
from vlassist.engine.sizing import plan_size
from vlassist.images import load_image, resize_for_model

QWEN25_ANSWER = """```json
[
	{"bbox_2d": [56, 28, 280, 196], "label": "OK button"},
	{"bbox_2d": [300, 100, 400, 200], "label": "温度计"}
]
```"""


def test_qwen25_boxes_scale_from_input_pixels_to_original():
    """Qwen2.5-VL boxes are pixels on the resized input; they scale by original/input per axis."""
    boxes = parse_boxes(QWEN25_ANSWER, "qwen2_5_vl", (560, 392), (1120, 1176))
    assert boxes == [Box("OK button", 112, 84, 560, 588), Box("温度计", 600, 300, 800, 600)]


def test_qwen3_boxes_are_relative_to_1000():
    """Qwen3-VL boxes are on a 0–1000 grid whatever the input size."""
    text = '```json\n[{"bbox_2d": [100, 250, 500, 1000], "label": "gauge"}]\n```'
    assert parse_boxes(text, "qwen3_vl", (640, 480), (2000, 800)) == [Box("gauge", 200, 200, 1000, 800)]


def test_qwen2_special_token_boxes():
    """Qwen2-VL's <|object_ref|><|box|>(x1,y1),(x2,y2) format is read on the 0–1000 grid; a ref may own two boxes."""
    text = ("<|object_ref_start|>the valve<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>"
            "<|box_start|>(500,500),(600,700)<|box_end|>")
    boxes = parse_boxes(text, "qwen2_vl", (448, 448), (1000, 2000))
    assert boxes == [Box("the valve", 100, 400, 300, 800), Box("the valve", 500, 1000, 600, 1400)]


def test_qwen2_boxes_with_special_tokens_stripped():
    """When the decoder dropped the special tokens, the words before each pair of corners become the label."""
    boxes = parse_boxes("the valve(100,200),(300,400)", "qwen2_vl", (448, 448), (1000, 1000))
    assert boxes == [Box("the valve", 100, 200, 300, 400)]


def test_truncated_list_keeps_complete_boxes():
    """An answer cut mid-box keeps every complete box and drops the partial one."""
    text = '```json\n[\n\t{"bbox_2d": [10, 20, 30, 40], "label": "a"},\n\t{"bbox_2d": [50, 60'
    assert parse_boxes(text, "qwen2_5_vl", (100, 100), (100, 100)) == [Box("a", 10, 20, 30, 40)]


def test_inverted_corners_are_sorted():
    """A box given bottom-right first comes back with x1 <= x2 and y1 <= y2."""
    text = '[{"bbox_2d": [300, 400, 100, 200], "label": "x"}]'
    assert parse_boxes(text, "qwen2_5_vl", (500, 500), (500, 500)) == [Box("x", 100, 200, 300, 400)]


def test_boxes_clamped_to_image():
    """Coordinates past the image edges are clamped to it."""
    text = '[{"bbox_2d": [-20, 10, 700, 520], "label": "x"}]'
    assert parse_boxes(text, "qwen2_5_vl", (640, 480), (640, 480)) == [Box("x", 0, 10, 640, 480)]


def test_points_have_equal_corners():
    """point_2d answers become zero-size boxes flagged as points."""
    text = '[{"point_2d": [250, 500], "label": "knob"}]'
    (box,) = parse_boxes(text, "qwen3_vl", (320, 320), (800, 600))
    assert (box.x1, box.y1, box.x2, box.y2, box.is_point) == (200, 300, 200, 300, True)


def test_bare_json_without_fence_and_closed_twice():
    """Bare JSON with prose around it and an extra closing bracket still yields its boxes."""
    text = 'Here are the boxes: [{"label": "a", "bbox_2d": [1, 2, 3, 4]}]] Hope this helps.'
    assert parse_boxes(text, "qwen2_5_vl", (10, 10), (20, 20)) == [Box("a", 2, 4, 6, 8)]


def test_no_boxes_in_plain_text():
    """A refusal or description has no boxes."""
    assert parse_boxes("I cannot see any buttons in this image.", "qwen3_vl", (64, 64), (64, 64)) == []


def test_unknown_family_is_refused():
    """A family without a known coordinate convention raises instead of guessing."""
    with pytest.raises(ValueError):
        parse_boxes("[]", "llava", (1, 1), (1, 1))


def _picture_with_exif(upright_size, box, orientation) -> bytes:
    # Draw on the upright picture, then store it rotated back with the EXIF tag a camera would write.
    upright = Image.new("RGB", upright_size, (255, 255, 255))
    ImageDraw.Draw(upright).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(0, 0, 200))
    undo = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
            5: Image.Transpose.TRANSPOSE, 2: Image.Transpose.FLIP_LEFT_RIGHT}[orientation]
    stored = upright.transpose(undo) if undo else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


def _dark_bbox(img: Image.Image) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.asarray(img.convert("L")) < 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("family,factor", [("qwen2_5_vl", 28), ("qwen3_vl", 32)])
@pytest.mark.parametrize("size,box,orientation", [
    ((333, 517), (41, 77, 190, 300), 1),
    ((517, 333), (300, 20, 480, 301), 6),
    ((1001, 701), (5, 600, 997, 690), 8),
    ((257, 911), (100, 100, 101, 850), 3),
    ((640, 359), (320, 10, 600, 350), 5),
])
def test_boxes_round_trip_through_model_input(family, factor, size, box, orientation):
    """A box the model reads off the resized input maps back to the drawn box within 1 px, EXIF included."""
    loaded = load_image(_picture_with_exif(size, box, orientation))
    assert loaded.size == size
    sizing = plan_size(loaded.size, factor, 1280)
    seen = _dark_bbox(resize_for_model(loaded.image, sizing))  # what the model sees, in input pixels
    if family == "qwen2_5_vl":
        coords = list(seen)
    else:
        w, h = sizing.input_size
        coords = [round(seen[0] / w * 1000), round(seen[1] / h * 1000), round(seen[2] / w * 1000),
                  round(seen[3] / h * 1000)]
    text = f'```json\n[{{"bbox_2d": {coords}, "label": "target"}}]\n```'
    (found,) = parse_boxes(text, family, sizing.input_size, loaded.size)
    assert max(abs(a - b) for a, b in zip(found[1:], box)) <= 1


def test_json_in_fence():
    """A fenced JSON answer parses without repair."""
    result = extract_json('```json\n{"total": 12.5, "items": ["a"]}\n```')
    assert (result.value, result.repaired) == ({"total": 12.5, "items": ["a"]}, False)


def test_truncated_json_is_repaired_and_flagged():
    """A JSON answer cut mid-value is repaired and marked as repaired."""
    result = extract_json('{"name": "ACME", "lines": [{"qty": 2}, {"qty"')
    assert result.repaired and result.value["name"] == "ACME" and result.value["lines"][0] == {"qty": 2}


def test_json_closed_twice_keeps_first_document():
    """Extra closing braces after a complete object are dropped."""
    assert extract_json('{"a": {"b": 1}}}}').value == {"a": {"b": 1}}


def test_json_checked_against_schema():
    """Schema violations are reported with the path of the offending value."""
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    result = extract_json('{"total": "twelve"}', schema)
    assert not result.valid and result.errors[0].startswith("total:")


def test_prose_is_not_json():
    """An answer with no JSON gives None rather than a quoted string."""
    assert extract_json("The meter reads 42 kPa.") is None


def test_flatten_gives_dotted_paths():
    """Nested values flatten to dotted paths with list indices."""
    assert flatten({"a": {"b": 1}, "c": [2, {"d": None}]}) == [("a.b", 1), ("c[0]", 2), ("c[1].d", None)]


def test_html_from_fence():
    """The ```html block is the page, without the surrounding prose."""
    assert extract_html("Here it is:\n```html\n<!DOCTYPE html><html><body>x</body></html>\n```\nDone.") == (
        "<!DOCTYPE html><html><body>x</body></html>")


def test_html_without_fence():
    """A bare <html> document is found inside prose."""
    assert extract_html("Sure. <html><body><p>Hi</p></body></html> That is all.") == (
        "<html><body><p>Hi</p></body></html>")


def test_no_html_in_prose():
    """An answer without markup has no HTML."""
    assert extract_html("I cannot reproduce this interface.") is None


DATED = {"type": "object", "properties": {"vendor": {"type": "string"},
                                          "due": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
                                          "seen": {"type": "string", "format": "date-time"}}}


def test_impossible_date_is_flagged_not_rejected():
    """A date field holding "6320-71-71" keeps the document valid but flags that field and value."""
    result = extract_json('{"vendor": "ACME", "due": "6320-71-71"}', DATED)
    assert result.valid
    assert [(f.path, f.value) for f in result.flags] == [("due", "6320-71-71")]


def test_real_dates_and_nulls_are_not_flagged():
    """A real calendar date (a leap day included) and a null date raise no flag."""
    assert extract_json('{"due": "2024-02-29", "seen": "2024-02-29T23:59:59Z"}', DATED).flags == ()
    assert extract_json('{"due": null}', DATED).flags == ()


def test_day_past_the_month_end_is_flagged():
    """February 29th of a common year is flagged although every digit is in range."""
    assert [f.value for f in extract_json('{"due": "2023-02-29"}', DATED).flags] == ["2023-02-29"]


def test_other_iso_spellings_of_a_date_are_flagged():
    """Only YYYY-MM-DD counts as a date: the basic 20240229 and week 2024-W09-4 forms are flagged."""
    for text in ("20240229", "2024-W09-4"):
        assert len(extract_json(json.dumps({"due": text}), DATED).flags) == 1, text


def test_impossible_date_time_is_flagged():
    """A date-time with hour 25 is flagged with its path."""
    assert [f.path for f in extract_json('{"seen": "2024-01-01T25:00:00Z"}', DATED).flags] == ["seen"]


def test_flags_name_nested_values_by_their_table_path():
    """A bad date inside a list of objects is flagged under the same dotted path the field table shows."""
    schema = {"type": "array", "items": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}
    result = extract_json('[{"d": "2024-01-01"}, {"d": "2024-13-01"}]', schema)
    assert [f.path for f in result.flags] == ["[1].d"] and "[1].d" in dict(flatten(result.value))


def test_no_schema_means_no_flags():
    """Without a schema nothing is known about formats, so a date-like string is not flagged."""
    assert extract_json('{"due": "6320-71-71"}').flags == ()
