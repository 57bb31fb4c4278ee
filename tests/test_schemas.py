"""Field lists and templates become usable JSON Schemas."""

from __future__ import annotations

import jsonschema
import pytest

from vlassist.answers.schemas import TEMPLATES, fields_schema, template_schema
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
