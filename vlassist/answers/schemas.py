"""JSON Schemas for extraction: built from a list of field names, or one of the ready-made templates."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from vlassist.errors import VlassistError
from vlassist.families import BOX_JSON, RELATIVE, RELATIVE_SCALE, family


class SchemaError(VlassistError):
    """The JSON Schema cannot be used for constrained decoding."""


def load_schema(schema_text: str | dict) -> dict:
    """Parse and check a JSON Schema, raising SchemaError with a readable reason."""
    import jsonschema

    if isinstance(schema_text, dict):
        schema = schema_text
    else:
        try:
            schema = json.loads(schema_text)
        except ValueError as exc:
            raise SchemaError(f"the JSON Schema is not valid JSON ({exc})") from None
        except RecursionError:
            raise SchemaError("the JSON Schema is nested too deeply") from None
    if not isinstance(schema, dict):
        raise SchemaError("a JSON Schema must be a JSON object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"not a valid JSON Schema at {exc.json_path}: {exc.message}") from None
    return schema


def schema_text(schema_path: Path | None = None, fields: str | None = None, template: str | None = None) -> str | None:
    """Checked JSON Schema text from a schema file, a field list or a template name (None if none given)."""
    if schema_path is not None:
        try:
            raw = Path(schema_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SchemaError(f"{schema_path}: cannot read ({exc.strerror or exc})") from None
        schema = load_schema(raw)
    elif fields:
        schema = fields_schema(fields)
    elif template:
        schema = template_schema(template)
    else:
        return None
    return json.dumps(schema, ensure_ascii=False)


# Field types a user can write as `name:type`; every field may also be null when the image lacks it. A date
# carries its JSON Schema format: xgrammar turns it into a month 01-12, day 01-31 grammar, and answers are
# checked for a real calendar date (parsing.format_flags), which no grammar or pattern can promise.
FIELD_TYPES = {
    "string": {"type": "string"},
    "text": {"type": "string"},
    "number": {"type": "number"},
    "integer": {"type": "integer"},
    "int": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "bool": {"type": "boolean"},
    "date": {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    "list": {"type": "array", "items": {"type": "string"}},
}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict, nullable: tuple[str, ...] = ()) -> dict:
    # Every key is required so the answer always has the same shape; missing values come back as null.
    props = {k: (_nullable(v) if k in nullable else v) for k, v in properties.items()}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


_STR, _NUM = {"type": "string"}, {"type": "number"}

TEMPLATES: dict[str, tuple[str, dict]] = {
    "invoice": ("Invoice / receipt", _obj({
        "invoice_number": _STR,
        "invoice_date": _STR,
        "due_date": _STR,
        "seller": _obj({"name": _STR, "address": _STR, "tax_id": _STR}, nullable=("address", "tax_id")),
        "buyer": _obj({"name": _STR, "address": _STR}, nullable=("name", "address")),
        "currency": _STR,
        "line_items": {"type": "array", "items": _obj({
            "description": _STR, "quantity": _NUM, "unit_price": _NUM, "amount": _NUM,
        }, nullable=("quantity", "unit_price"))},
        "subtotal": _NUM,
        "tax": _NUM,
        "total": _NUM,
    }, nullable=("invoice_number", "invoice_date", "due_date", "currency", "subtotal", "tax", "total"))),
    "form": ("Form (label → value)", _obj({
        "title": _STR,
        "fields": {"type": "array", "items": _obj({
            "label": _STR, "value": _STR, "checked": {"type": "boolean"},
        }, nullable=("value", "checked"))},
    }, nullable=("title",))),
    "meter": ("Meter / instrument panel", _obj({
        "instrument": _STR,
        "readings": {"type": "array", "items": _obj({
            "name": _STR, "value": _NUM, "unit": _STR, "display_text": _STR,
        }, nullable=("value", "unit"))},
        "status": {"enum": ["normal", "warning", "alarm", "off", "unknown"]},
        "warnings": {"type": "array", "items": _STR},
    }, nullable=("instrument",))),
    "table_rows": ("Table rows", _obj({
        "columns": {"type": "array", "items": _STR, "minItems": 1},
        "rows": {"type": "array", "items": {"type": "array", "items": {"anyOf": [_STR, _NUM, {"type": "null"}]}}},
    })),
}


def template_schema(name: str) -> dict:
    """A copy of the named template's JSON Schema (invoice, form, meter, table_rows)."""
    try:
        return copy.deepcopy(TEMPLATES[name][1])
    except KeyError:
        raise VlassistError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}") from None


def fields_schema(fields: str | list[str]) -> dict:
    """A JSON Schema for an object with these fields; `name:type` picks a type (default string), all nullable."""
    items = [f.strip() for f in (fields.split(",") if isinstance(fields, str) else fields) if f.strip()]
    if not items:
        raise VlassistError("name at least one field")
    properties = {}
    for item in items:
        name, _, kind = item.rpartition(":") if re.search(r":\s*[A-Za-z]+$", item) else (item, "", "string")
        name, kind = name.strip(), kind.strip().lower()
        if kind not in FIELD_TYPES:
            raise VlassistError(f"field {item!r}: unknown type {kind!r}; use one of {', '.join(FIELD_TYPES)}")
        if not name:
            raise VlassistError(f"field {item!r} has no name")
        if name in properties:
            raise VlassistError(f"field {name!r} is named twice")
        properties[name] = FIELD_TYPES[kind]
    return _obj(properties, nullable=tuple(properties))


# The longest side a model input can have, in pixels: bounds absolute box coordinates so a constrained answer
# cannot spin out an endless number (real coordinates never come near it; parse_boxes clamps to the image).
_MAX_INPUT_SIDE = 32767
_MAX_LABEL = 120  # characters: a label names a thing, it does not describe it


def boxes_schema(model_type: str) -> dict | None:
    """The JSON Schema of a "Find objects" answer for this family: a list of {"bbox_2d": [x1, y1, x2, y2],
    "label"} in the family's coordinates; None for families that answer with box tokens instead of JSON."""
    known = family(model_type)
    if known.box_format != BOX_JSON:
        return None
    top = int(RELATIVE_SCALE) if known.coordinates == RELATIVE else _MAX_INPUT_SIDE
    corner = {"type": "integer", "minimum": 0, "maximum": top}
    return {"type": "array", "items": _obj({
        "bbox_2d": {"type": "array", "items": corner, "minItems": 4, "maxItems": 4},
        "label": {"type": "string", "maxLength": _MAX_LABEL},
    })}


def boxes_schema_text(model_type: str) -> str | None:
    """boxes_schema as the JSON text GenerationOptions.json_schema takes; None for box-token families."""
    schema = boxes_schema(model_type)
    return json.dumps(schema) if schema is not None else None
