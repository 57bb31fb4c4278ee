"""`python -m vlassist ask --preset json --schema/--fields/--template` prints one valid JSON document."""

from __future__ import annotations

import json

import pytest

from vlassist.__main__ import main
from vlassist.answers.parsing import validation_errors

BOUNDED = {"type": "object", "required": ["panel", "alarms"], "properties": {
    "panel": {"type": "object", "required": ["mode", "level", "on"], "properties": {
        "mode": {"enum": ["auto", "manual", "off"]}, "level": {"type": "integer", "minimum": 0, "maximum": 99},
        "on": {"type": "boolean"}}},
    "alarms": {"type": "array", "maxItems": 4, "items": {"enum": ["HI", "LO", "FAULT"]}}}}
NUMBERS = {"type": "object", "required": ["reading", "limits"], "properties": {
    "reading": {"type": "object", "required": ["value", "unit"], "properties": {
        "value": {"type": "number"}, "unit": {"enum": ["kPa", "bar"]}}},
    "limits": {"type": "array", "minItems": 2, "items": {"type": "integer"}}}}


@pytest.mark.parametrize("model", ["tiny_qwen25", "tiny_qwen3"])
def test_schema_file_gives_valid_document(request, model, png_file, tmp_path, capsys):
    """--preset json --schema FILE prints exactly one JSON document that validates against the file."""
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(BOUNDED))
    folder = request.getfixturevalue(model)
    code = main(["ask", str(png_file), "--model", str(folder), "--preset", "json", "--schema", str(schema_file)])
    out = capsys.readouterr().out
    assert code == 0
    assert validation_errors(json.loads(out), BOUNDED) == ()


def test_unbounded_numbers_close_within_default_limit(tiny_qwen25, png_file, tmp_path, capsys):
    """Free numbers and arrays (which random weights extend forever) still end in a valid document."""
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(NUMBERS))
    code = main(["ask", str(png_file), "--model", str(tiny_qwen25), "--preset", "json", "--schema", str(schema_file)])
    out = capsys.readouterr().out
    assert code == 0
    assert validation_errors(json.loads(out), NUMBERS) == ()


def test_too_small_limit_is_an_error_not_broken_json(tiny_qwen3, png_file, capsys):
    """When the limit cannot hold the document, the CLI says so on stderr and prints no JSON."""
    code = main(["ask", str(png_file), "--model", str(tiny_qwen3), "--template", "invoice", "--max-new-tokens", "8"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "length limit" in captured.err


def test_bad_schema_file_fails_before_loading(png_file, tmp_path, capsys):
    """A schema file that is not a JSON Schema is refused with one line on stderr."""
    schema_file = tmp_path / "schema.json"
    schema_file.write_text('{"type": 12}')
    code = main(["ask", str(png_file), "--model", str(tmp_path / "none"), "--schema", str(schema_file)])
    assert code == 2 and "JSON Schema" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["tiny_qwen25", "tiny_qwen3"])
def test_grounding_preset_prints_the_familys_box_list(request, model, png_file, capsys):
    """--preset grounding answers with a JSON box list in the family's coordinates, as the page's Find objects."""
    from vlassist.answers.schemas import boxes_schema
    from vlassist.checkpoint import inspect_checkpoint

    folder = request.getfixturevalue(model)
    code = main(["ask", str(png_file), "--model", str(folder), "--preset", "grounding", "--target", "valve",
                 "--max-new-tokens", "96"])
    out = capsys.readouterr().out
    assert code == 0
    assert validation_errors(json.loads(out), boxes_schema(inspect_checkpoint(folder).model_type)) == ()
