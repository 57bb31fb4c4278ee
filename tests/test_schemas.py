"""Field lists and templates become usable JSON Schemas."""

from __future__ import annotations

import jsonschema
import pytest

from vlassist.answers.schemas import TEMPLATES, boxes_schema, fields_schema, template_schema
from vlassist.errors import VlassistError


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_templates_are_valid_schemas(name):
    """Each template is a valid Draft 2020-12 schema."""
    jsonschema.Draft202012Validator.check_schema(template_schema(name))


def test_fields_schema_types_and_nulls():
    """`name:type` picks the type; every field is required and may be null."""
    schema = fields_schema("vendor, total:number, paid:bool")
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"vendor": "ACME", "total": 9.5, "paid": None})
    assert not validator.is_valid({"vendor": "ACME", "total": "9.5", "paid": True})
    assert not validator.is_valid({"vendor": "ACME", "total": 9.5})


@pytest.mark.parametrize("fields", ["", "a, a", "x:colour"])
def test_bad_field_lists_are_refused(fields):
    """Empty lists, repeated names and unknown types are refused with a message."""
    with pytest.raises(VlassistError):
        fields_schema(fields)


def test_date_fields_carry_the_date_format():
    """A `name:date` field is a string with JSON Schema's "date" format, so checkers and grammars know it."""
    schema = fields_schema("vendor, due:date")
    [date_branch] = [s for s in schema["properties"]["due"]["anyOf"] if s.get("type") == "string"]
    assert date_branch["format"] == "date"
    assert "format" not in schema["properties"]["vendor"]["anyOf"][0]


def test_date_format_compiles_to_a_calendar_grammar():
    """xgrammar compiles the date field's schema, takes a real date and refuses month 71 (the format is honoured)."""
    import json

    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as accepts

    grammar = xgr.Grammar.from_json_schema(json.dumps(fields_schema("due:date")), any_whitespace=False,
                                           strict_mode=True)
    assert accepts(grammar, '{"due": "2024-01-31"}') and accepts(grammar, '{"due": null}')
    assert not accepts(grammar, '{"due": "6320-71-71"}')


def test_boxes_schema_follows_each_family_s_coordinates():
    """The "Find objects" schema bounds corners by the family's grid (0-1000 for Qwen3-VL, input pixels for
    Qwen2.5-VL) and is absent for Qwen2-VL, which answers with box tokens rather than JSON."""
    assert boxes_schema("qwen2_vl") is None
    for family, top in (("qwen3_vl", 1000), ("qwen2_5_vl", 32767)):
        schema = boxes_schema(family)
        jsonschema.Draft202012Validator.check_schema(schema)
        valid = [{"bbox_2d": [0, 5, top, top], "label": "gauge"}]
        assert not list(jsonschema.Draft202012Validator(schema).iter_errors(valid))
        for bad in ([{"bbox_2d": [0, 5, top + 1, 9], "label": "gauge"}], [{"bbox_2d": [0, 5, 9], "label": "x"}],
                    [{"bbox_2d": [0, 5, 9, 9]}]):
            assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)), bad
