"""Schema-constrained decoding on the tiny checkpoints: every answer parses and validates."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import image_bytes

from vlassist.answers.parsing import extract_json, parse_boxes, validation_errors
from vlassist.answers.schemas import boxes_schema, fields_schema, template_schema
from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine.constrained import SchemaError, schema_logits_processor
from vlassist.images import load_image

SCHEMAS = {
    "nested_numbers": {"type": "object", "required": ["meter", "limits"], "properties": {
        "meter": {"type": "object", "required": ["value", "unit"], "properties": {
            "value": {"type": "number"}, "unit": {"enum": ["kPa", "bar", "psi"]}}},
        "limits": {"type": "array", "minItems": 2, "items": {"type": "integer"}}}},
    "array_of_strings": {"type": "array", "items": {"type": "string"}},
    "free_object": {"type": "object"},
    "fields": fields_schema("name, total:number, count:int, paid:bool, due:date, tags:list"),
    "invoice": template_schema("invoice"),
    "form": template_schema("form"),
    "meter": template_schema("meter"),
    "table_rows": template_schema("table_rows"),
}


def _generate(engine, schema: dict, max_new_tokens: int) -> tuple[str, bool]:
    image = load_image(image_bytes((64, 48)))
    inputs, _ = engine.encode([Turn("user", "Extract the fields as JSON.", [image])], GenerationOptions())
    tokenizer = engine.processor.tokenizer
    processor = schema_logits_processor(tokenizer, json.dumps(schema), engine.model.config,
                                        max_new_tokens=max_new_tokens)
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    logits_processor=[processor], pad_token_id=tokenizer.pad_token_id)
    new = out[0, inputs["input_ids"].shape[1]:]
    stopped = int(new[-1]) in engine.eos_ids
    return tokenizer.decode(new, skip_special_tokens=True), stopped


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_constrained_answer_validates(engine, name):
    """Random weights still produce a complete JSON document valid against the schema, ended by EOS."""
    # The invoice's keys alone take ~120 tokens with the tiny 512-token vocabulary.
    text, stopped = _generate(engine, SCHEMAS[name], max_new_tokens=256 if name == "invoice" else 112)
    assert stopped, text
    assert validation_errors(json.loads(text), SCHEMAS[name]) == ()


def test_engine_seam_constrains_answer(engine):
    """GenerationOptions.json_schema through Engine.stream yields text that validates, stopped by EOS."""
    schema = {"type": "object", "required": ["status", "level", "ok", "codes"], "properties": {
        "status": {"enum": ["normal", "alarm"]}, "level": {"type": "integer", "minimum": 0, "maximum": 9},
        "ok": {"type": "boolean"}, "codes": {"type": "array", "maxItems": 3, "items": {"enum": ["E1", "E2"]}}}}
    reply = engine.stream([Turn("user", "Status as JSON", [load_image(image_bytes())])],
                          GenerationOptions(max_new_tokens=64, json_schema=json.dumps(schema)))
    text = reply.consume()
    assert reply.stats.stop_reason == "eos"
    assert extract_json(text, schema).valid


def test_strict_box_answer_parses_into_every_box_it_lists(engine):
    """A "Find objects" answer held to the family's box schema ends by itself, validates, and every item it
    lists becomes a box inside the original image, even from random weights."""
    schema = boxes_schema(engine.info.family)
    image = load_image(image_bytes((200, 150)))
    reply = engine.stream([Turn("user", "Locate every object as JSON boxes.", [image])],
                          GenerationOptions(max_new_tokens=400, json_schema=json.dumps(schema)))
    text = reply.consume()
    assert reply.stats.stop_reason == "eos", text
    items = json.loads(text, strict=False)  # the grammar lets raw control characters into a label
    assert validation_errors(items, schema) == ()
    [sizing] = reply.stats.images
    boxes = parse_boxes(text, engine.info.family, sizing.input_size, sizing.original_size)
    assert len(boxes) == len(items)
    assert all(0 <= b.x1 <= b.x2 <= 200 and 0 <= b.y1 <= b.y2 <= 150 for b in boxes)


def test_logits_wider_than_tokenizer(engine):
    """When the config's vocabulary is padded past the tokenizer's, the extra logits are never allowed."""
    config = copy.deepcopy(engine.model.config)
    tokenizer = engine.processor.tokenizer
    config.get_text_config().vocab_size = len(tokenizer) + 64
    processor = schema_logits_processor(tokenizer, '{"type": "object"}', config, max_new_tokens=32)
    scores = processor(torch.zeros((1, 5), dtype=torch.long), torch.randn(1, len(tokenizer) + 64))
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    assert allowed and max(allowed) < len(tokenizer)
    assert all(tokenizer.decode([i]).startswith("{") for i in allowed)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"type": "no-such-type"}'])
def test_bad_schema_is_refused(engine3, text):
    """Text that is not a usable JSON Schema raises SchemaError with a message."""
    with pytest.raises(SchemaError):
        schema_logits_processor(engine3.processor.tokenizer, text, engine3.model.config)


def test_engine_seam_closes_json_within_a_short_answer_limit(engine):
    """Through Engine.stream, a schema answer under a short max_new_tokens still closes and validates."""
    schema = SCHEMAS["fields"]
    reply = engine.stream([Turn("user", "Extract the fields as JSON.", [load_image(image_bytes())])],
                          GenerationOptions(max_new_tokens=112, json_schema=json.dumps(schema)))
    text = reply.consume()
    assert reply.stats.stop_reason == "eos", text
    assert validation_errors(json.loads(text), schema) == ()


def test_forced_answer_length_lets_the_json_grammar_end(engine):
    """A forced answer length (VLASSIST_MIN_ANSWER_TOKENS, min_tokens) yields to a JSON Schema: the answer ends
    when its document is complete and stays valid JSON."""
    schema = fields_schema("vendor, total:number")
    reply = engine.stream([Turn("user", "Extract the fields as JSON.", [load_image(image_bytes((64, 48)))])],
                          GenerationOptions(max_new_tokens=300, min_new_tokens=300, json_schema=json.dumps(schema)))
    text = reply.consume()
    assert reply.stats.stop_reason == "eos", text
    assert validation_errors(json.loads(text), schema) == ()
