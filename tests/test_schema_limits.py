"""Grammar bounds checked before compiling (vlassist/answers/schema_limits.py): sizes, patterns, enums, $ref loops."""

from __future__ import annotations

import pytest

from vlassist.answers.schema_limits import MAX_DEPTH, check_choices, check_schema_limits, pattern_size
from vlassist.answers.schemas import SchemaError


@pytest.mark.parametrize("pattern,size", [("abc", 3), ("^x{1,30000}$", 30000), ("(ab{2}){10}", 30),
                                          (r"\d{4}-\d{2}", 7), ("[a-z]{3,}", 4), (r"(a|b)*c", 3)])
def test_pattern_size_writes_out_counted_repetitions(pattern, size):
    """A pattern's size counts each atom once per counted repetition, nested counts multiplied."""
    assert pattern_size(pattern) == size


def test_a_recursive_schema_through_properties_is_allowed():
    """A tree (a $ref back to the root under a property) matches text at each level: no loop."""
    check_schema_limits({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}})


@pytest.mark.parametrize("schema,words", [
    ({"$ref": "#"}, "$ref loop"),
    ({"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"oneOf": [{"$ref": "#"}]}}}, "$ref loop"),
    ({"$ref": "http://example.com/s.json"}, "only local references"),
    ({"type": "object", "properties": {"a": {"enum": list(range(1001))}}}, "$.properties.a.enum: 1,001 values"),
    ({"type": "string", "pattern": "(a{50}){50}"}, "$.pattern: the regular expression expands to 2,500"),
    ({"description": "x" * 100_001}, "over the limit of 100,000"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(65)}},
     "$.properties: 65 optional properties in one object"),
    ({"type": "object", "properties": {f"p{i}": {"type": "object", "properties": {f"q{j}": {} for j in range(40)},
                                                  "required": [f"q{j}" for j in range(40)]} for i in range(30)},
      "required": [f"p{i}" for i in range(30)]}, "over 1,000 properties in all"),
    ({"anyOf": [{"anyOf": [{"const": i}, {"const": -i}]} for i in range(600)]}, "alternatives in all"),
])
def test_schemas_over_a_limit_are_refused_with_their_path(schema, words):
    """Each kind of costly or looping schema raises SchemaError whose message names where and which limit."""
    with pytest.raises(SchemaError) as caught:
        check_schema_limits(schema)
    assert words in str(caught.value)


def test_nesting_past_the_depth_limit_is_refused_without_recursion():
    """A schema nested thousands of levels deep is refused (walked without Python recursion)."""
    schema: dict = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match=f"nested more than {MAX_DEPTH} levels"):
        check_schema_limits(schema, text="{}")


def test_choice_lists_must_be_non_empty_and_bounded():
    """An empty choice list or one over the enum limit is refused."""
    with pytest.raises(SchemaError, match="at least one"):
        check_choices([], "choice")
    with pytest.raises(SchemaError, match="over the limit"):
        check_choices([str(i) for i in range(2000)], "choice")
    with pytest.raises(SchemaError, match="100,001 characters"):
        check_choices(["x" * 100_001], "choice")
