"""Model text → structured data: grounding boxes in original-image pixels, JSON documents, HTML pages."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import json_repair
import jsonschema

from vlassist.families import RELATIVE, RELATIVE_SCALE
from vlassist.families import family as family_of

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_NUMBER = r"-?\d+(?:\.\d+)?"
# Qwen2-VL: <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>; the special
# tokens vanish when the text was decoded with skip_special_tokens, so the markers are optional.
_REF_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<ref>.*?)<\|object_ref_end\|>)?\s*(?:<\|box_start\|>)?\s*"
    rf"\(\s*(?P<x1>{_NUMBER})\s*,\s*(?P<y1>{_NUMBER})\s*\)\s*,\s*\(\s*(?P<x2>{_NUMBER})\s*,\s*(?P<y2>{_NUMBER})\s*\)"
    r"\s*(?:<\|box_end\|>)?", re.S)
_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_POINT_KEYS = ("point_2d", "point")
_LABEL_KEYS = ("label", "name", "text", "category", "object")


class Box(NamedTuple):
    """A labelled box in original-image pixels; a point has x1 == x2 and y1 == y2."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def is_point(self) -> bool:
        """True when the model gave a point rather than a box."""
        return self.x1 == self.x2 and self.y1 == self.y2


def parse_boxes(text: str, family: str, input_size: tuple[int, int], original_size: tuple[int, int]) -> list[Box]:
    """Boxes and points from a grounding answer, mapped to original-image pixels, sorted corners, clamped.

    `family` is the checkpoint's model_type; `input_size` the (width, height) the processor fed the model;
    `original_size` the (width, height) the user sees (after EXIF rotation).
    """
    coordinates = family_of(family).coordinates  # UnknownFamilyError (a ValueError) for an unsupported family
    raw = _json_boxes(text) or _tuple_boxes(text)
    in_w, in_h = input_size
    out_w, out_h = original_size
    if coordinates == RELATIVE:
        sx, sy = out_w / RELATIVE_SCALE, out_h / RELATIVE_SCALE
    else:
        sx, sy = out_w / in_w, out_h / in_h
    boxes = []
    for label, (x1, y1, x2, y2) in raw:
        x1, x2 = sorted((_clamp(x1 * sx, out_w), _clamp(x2 * sx, out_w)))
        y1, y2 = sorted((_clamp(y1 * sy, out_h), _clamp(y2 * sy, out_h)))
        boxes.append(Box(label, round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)))
    return boxes


def _clamp(value: float, limit: float) -> float:
    return min(max(value, 0.0), float(limit))


def _json_boxes(text: str) -> list[tuple[str, tuple[float, float, float, float]]]:
    found = []
    for item in _dicts(_load_lenient(text)):
        coords = _first_numbers(item, _BOX_KEYS, 4)
        if coords is None:
            point = _first_numbers(item, _POINT_KEYS, 2)
            if point is None:
                continue
            coords = (point[0], point[1], point[0], point[1])
        label = next((str(item[k]) for k in _LABEL_KEYS if isinstance(item.get(k), (str, int, float))), "")
        found.append((label.strip(), coords))
    return found


def _first_numbers(item: dict, keys: tuple[str, ...], count: int) -> tuple[float, ...] | None:
    for key in keys:
        value = item.get(key)
        if isinstance(value, list) and len(value) == count and all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dicts(value: Any):
    """Every dict in a parsed JSON value, outermost first."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            if isinstance(child, (dict, list)):
                yield from _dicts(child)
    elif isinstance(value, list):
        for child in value:
            yield from _dicts(child)


def _tuple_boxes(text: str) -> list[tuple[str, tuple[float, float, float, float]]]:
    found, label, previous_end = [], "", 0
    for match in _REF_BOX.finditer(text):
        if match.group("ref") is not None:
            label = match.group("ref").strip()
        else:
            # Markers stripped: the label is the words since the previous box (none: same object again).
            words = re.split(r"[\n.:;]", text[previous_end:match.start()])[-1].strip(" ,-\t")
            label = words or label
        previous_end = match.end()
        found.append((label, tuple(float(match.group(k)) for k in ("x1", "y1", "x2", "y2"))))
    return found


# ---- JSON -------------------------------------------------------------------------------------------------


class FieldFlag(NamedTuple):
    """A value of the right type that is not what its format says, e.g. "6320-71-71" for a date."""

    path: str  # dotted, as flatten() names it
    value: Any
    reason: str


@dataclass(frozen=True)
class JsonResult:
    """A JSON value found in an answer, whether it needed repair, schema errors (empty when valid), and flags.

    `errors` are about the document's shape (types, required keys, patterns); `flags` name values that have
    that shape but fail their format (a date that is not a real date): the document is still usable, those
    values need checking.
    """

    value: Any
    repaired: bool
    errors: tuple[str, ...] = ()
    text: str = ""  # the document as JSON text: the model's own when it needed no repair (digits kept exactly)
    flags: tuple[FieldFlag, ...] = ()

    @property
    def valid(self) -> bool:
        """True when the value satisfied the schema (or no schema was given)."""
        return not self.errors


def json_candidate(text: str) -> str:
    """The part of an answer that holds the JSON: a fenced block's body, else from the first { or [ on."""
    for match in _FENCE.finditer(text):
        if match.group(1).lower() in ("", "json", "jsonc", "json5") and match.group(2).strip()[:1] in "{[":
            return match.group(2).strip()
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    return text[start:].strip() if start >= 0 else text.strip()


def _load_lenient(text: str) -> Any:
    candidate = json_candidate(text)
    try:
        return json.loads(candidate)
    except ValueError:
        pass
    try:
        return json_repair.loads(candidate)
    except Exception:  # json-repair gives up on some inputs; that means "no JSON here"
        return None


def extract_json(text: str, schema: dict | str | None = None) -> JsonResult | None:
    """The JSON document in an answer (fenced, bare, truncated or doubly closed), checked against `schema`."""
    candidate = json_candidate(text)
    repaired = False
    try:
        value = json.loads(candidate)
    except ValueError:
        try:
            value, _ = json.JSONDecoder().raw_decode(candidate)  # a complete document followed by extra text
        except ValueError:
            value = _load_lenient(text)
        repaired = True
    if not isinstance(value, (dict, list)) and (repaired or value is None):
        return None  # a repaired scalar is prose that json-repair quoted, not an answer
    errors = validation_errors(value, schema) if schema is not None else ()
    flags = format_flags(value, schema) if schema is not None else ()
    return JsonResult(value, repaired, errors, candidate if not repaired else json.dumps(value, ensure_ascii=False),
                      flags)


def validation_errors(value: Any, schema: dict | str) -> tuple[str, ...]:
    """Human-readable reasons `value` fails `schema` (empty when it validates)."""
    schema = json.loads(schema) if isinstance(schema, str) else schema
    validator = jsonschema.validators.validator_for(schema)(schema)
    return tuple(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                 for e in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))))


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:\d{2})?")


def is_iso_date(value: str) -> bool:
    """True for a real calendar date written YYYY-MM-DD ("2024-02-29" yes, "2023-02-29" and "6320-71-71" no)."""
    if not _ISO_DATE.fullmatch(value):
        return False  # fromisoformat alone would also take 20240229 and 2024-W09-4
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def is_iso_date_time(value: str) -> bool:
    """True for a real date and time written YYYY-MM-DDTHH:MM[:SS[.f]] with an optional Z or ±HH:MM offset."""
    if not _ISO_DATE_TIME.fullmatch(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_REASONS = {"date": "not a real date (YYYY-MM-DD)", "date-time": "not a real date and time (ISO 8601)"}
_FORMATS = jsonschema.FormatChecker(formats=())  # only the formats below: others are not checked
# A non-string is the type check's to report, so the format checks pass it.
_FORMATS.checks("date")(lambda value: not isinstance(value, str) or is_iso_date(value))
_FORMATS.checks("date-time")(lambda value: not isinstance(value, str) or is_iso_date_time(value))


def format_flags(value: Any, schema: dict | str) -> tuple[FieldFlag, ...]:
    """Values whose schema gives them a "date" or "date-time" format they do not meet, in document order."""
    schema = json.loads(schema) if isinstance(schema, str) else schema
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=_FORMATS)
    found: dict[str, FieldFlag] = {}

    def visit(errors) -> None:
        # A nullable field fails its anyOf as a whole; the format failure is one of the branch errors under it.
        for error in errors:
            if error.validator == "format" and error.validator_value in _REASONS:
                path = _dotted(error.absolute_path)
                found.setdefault(path, FieldFlag(path, error.instance, _REASONS[error.validator_value]))
            visit(error.context or ())

    visit(validator.iter_errors(value))
    order = {path: i for i, (path, _) in enumerate(flatten(value))}
    return tuple(sorted(found.values(), key=lambda flag: order.get(flag.path, len(order))))


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "value"


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, scalar) pairs for showing any JSON value as a two-column table."""
    if isinstance(value, dict):
        if not value:
            return [(prefix, {})] if prefix else []
        return [pair for k, v in value.items() for pair in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list):
        if not value:
            return [(prefix, [])] if prefix else []
        return [pair for i, v in enumerate(value) for pair in flatten(v, f"{prefix}[{i}]")]
    return [(prefix or "value", value)]


# ---- HTML -------------------------------------------------------------------------------------------------

_HTML_DOC = re.compile(r"(<!DOCTYPE\s+html.*?</html\s*>|<html\b.*?</html\s*>)", re.S | re.I)


def extract_html(text: str) -> str | None:
    """The HTML page in an answer: a ```html block, else a <!DOCTYPE>/<html> document, else any tagged block."""
    for match in _FENCE.finditer(text):
        if match.group(1).lower() in ("html", "htm", "xhtml"):
            return match.group(2).strip()
    match = _HTML_DOC.search(text)
    if match:
        return match.group(1).strip()
    for match in _FENCE.finditer(text):
        if re.search(r"<[a-zA-Z][^>]*>", match.group(2)):
            return match.group(2).strip()
    start = re.search(r"<(?:!DOCTYPE|html|head|body|div|table|form|main|section)\b", text, re.I)
    return text[start.start():].strip() if start else None
