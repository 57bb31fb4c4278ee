"""Bounds on the grammars a request may ask for, checked before anything is compiled.

A grammar engine's work grows with counted repetitions (`x{1,30000}` is 30,000 states), enum sizes and nesting:
a 100-byte schema can hold the only answer worker for a minute. These checks refuse such schemas at once with the
JSON path of the part over a limit; `$ref` chains that loop without consuming any text, references that lead
nowhere and schemas nested deeper than a real document ever is are refused the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from vlassist.answers.schemas import SchemaError

MAX_SCHEMA_CHARS = 100_000  # the schema's JSON text
MAX_DEPTH = 64  # levels of objects and arrays inside the schema document
MAX_ENUM = 1_000  # values of one enum (and choices of one `choice` list)
MAX_PATTERN_SIZE = 2_000  # a regular expression's size with its counted repetitions expanded
MAX_REGEX_CHARS = 10_000  # a regular expression's own length
# Optional properties make the grammar offer every subset in order: its size grows with their square per object,
# and with the properties of the whole schema (2,000 optional properties in one object took 95 s to compile).
MAX_PROPERTIES = 1_000  # properties of all objects in the schema together
MAX_OPTIONAL = 64  # optional properties of one object
MAX_BRANCHES = 1_000  # anyOf / oneOf alternatives in the schema together

_COUNT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")
# Keywords whose subschemas match the same text as their parent: a `$ref` loop through these alone never ends.
_SAME_TEXT = ("allOf", "anyOf", "oneOf")


def pattern_size(pattern: str) -> int:
    """The size of `pattern` with every counted repetition ({m}, {m,}, {m,n}) written out (an upper bound)."""
    stack: list[list[int]] = [[]]  # per open group: the costs of its atoms so far
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            stack[-1].append(1)
            i += 2
            continue
        if c == "[":
            end = i + 1
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            stack[-1].append(1)
            i = end + 1
            continue
        if c == "(":
            stack.append([])
        elif c == ")" and len(stack) > 1:
            inner = stack.pop()
            stack[-1].append(max(1, sum(inner)))
        elif c == "{" and (m := _COUNT.match(pattern, i)) is not None:
            low, comma, high = m.group(1), m.group(2), m.group(3)
            times = int(high) if high else int(low)
            if comma and not high:
                times = int(low) + 1
            if stack[-1]:
                stack[-1][-1] *= max(times, 1)
            i = m.end()
            continue
        elif c not in "|*+?^$":
            stack[-1].append(1)
        i += 1
    return sum(sum(level) for level in stack)


def check_regex(pattern: str, where: str) -> None:
    """Refuse a regular expression that is too long or whose counted repetitions expand too far."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise SchemaError(f"{where}: the regular expression is {len(pattern):,} characters long, over the limit of "
                          f"{MAX_REGEX_CHARS:,}")
    size = pattern_size(pattern)
    if size > MAX_PATTERN_SIZE:
        raise SchemaError(f"{where}: the regular expression expands to {size:,} characters with its counted "
                          f"repetitions written out, over the limit of {MAX_PATTERN_SIZE:,}; use * or + for "
                          "long runs")


def check_choices(choices: list[str], where: str) -> None:
    """Refuse a `choice` list that is empty or longer than an enum may be."""
    if not choices:
        raise SchemaError(f"{where}: give at least one choice")
    if len(choices) > MAX_ENUM:
        raise SchemaError(f"{where}: {len(choices):,} choices, over the limit of {MAX_ENUM:,}")
    if (size := sum(len(c) for c in choices)) > MAX_SCHEMA_CHARS:
        raise SchemaError(f"{where}: the choices hold {size:,} characters, over the limit of {MAX_SCHEMA_CHARS:,}")


def _walk(schema: Any) -> Iterator[tuple[str, Any, int]]:
    """Every object and array in the schema document with its JSON path and depth, without recursion."""
    stack = [("$", schema, 0)]
    while stack:
        path, node, depth = stack.pop()
        yield path, node, depth
        if isinstance(node, dict):
            stack.extend((f"{path}.{key}" if re.fullmatch(r"[A-Za-z_$][\w$]*", key) else f"{path}[{json.dumps(key)}]",
                          value, depth + 1) for key, value in node.items() if isinstance(value, (dict, list)))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", value, depth + 1) for i, value in enumerate(node)
                         if isinstance(value, (dict, list)))


def _resolve(root: dict, ref: str, where: str) -> Any:
    if not ref.startswith("#"):
        raise SchemaError(f"{where}: $ref {ref!r} points outside the schema; only local references (#/…) are used")
    node: Any = root
    for raw in filter(None, ref[1:].split("/")):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"{where}: $ref {ref!r} points to nothing in the schema")
    return node


def _same_text(root: dict, path: str, node: dict) -> list[tuple[str, Any]]:
    """The subschemas `node` matches its own text with: its `$ref` target and its allOf/anyOf/oneOf entries."""
    found = []
    if isinstance(ref := node.get("$ref"), str):
        found.append((ref, _resolve(root, ref, path)))
    for key in _SAME_TEXT:
        if isinstance(node.get(key), list):
            found.extend((f"{path}.{key}[{i}]", sub) for i, sub in enumerate(node[key]))
    return [(where, sub) for where, sub in found if isinstance(sub, dict)]


def _ref_loops(root: dict, nodes: list[tuple[str, dict]]) -> None:
    """Refuse a cycle of `$ref`s (through allOf/anyOf/oneOf too) that never matches a character of text."""
    state: dict[int, int] = {}  # id → 1 while on the current path, 2 once fully explored
    for start_path, start in nodes:
        if id(start) in state:
            continue
        trail = [(start_path, start, iter(_same_text(root, start_path, start)))]
        state[id(start)] = 1
        while trail:
            path, node, edges = trail[-1]
            step = next(edges, None)
            if step is None:
                state[id(node)] = 2
                trail.pop()
                continue
            where, sub = step
            if state.get(id(sub)) == 1:
                loop = " → ".join([p for p, _, _ in trail] + [where])
                raise SchemaError(f"{start_path}: $ref loop ({loop}) that never matches any text")
            if id(sub) not in state:
                state[id(sub)] = 1
                trail.append((where, sub, iter(_same_text(root, where, sub))))


def check_schema_limits(schema: dict, text: str | None = None) -> None:
    """Refuse a JSON Schema over a size, depth, enum or pattern limit, or with a bad or looping `$ref`."""
    size = len(text) if text is not None else len(json.dumps(schema))
    if size > MAX_SCHEMA_CHARS:
        raise SchemaError(f"$: the schema is {size:,} characters long, over the limit of {MAX_SCHEMA_CHARS:,}")
    objects: list[tuple[str, dict]] = []
    properties = branches = 0
    for path, node, depth in _walk(schema):
        if depth > MAX_DEPTH:
            shown = path if len(path) <= 100 else path[:100] + "…"
            raise SchemaError(f"{shown}: the schema is nested more than {MAX_DEPTH} levels deep")
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("enum"), list) and len(node["enum"]) > MAX_ENUM:
            raise SchemaError(f"{path}.enum: {len(node['enum']):,} values, over the limit of {MAX_ENUM:,}")
        if isinstance(node.get("pattern"), str):
            check_regex(node["pattern"], f"{path}.pattern")
        if isinstance(node.get("properties"), dict) and node["properties"]:
            names = node["properties"]
            properties += len(names)
            if properties > MAX_PROPERTIES:
                raise SchemaError(f"{path}.properties: the schema has over {MAX_PROPERTIES:,} properties in all")
            required = node.get("required") if isinstance(node.get("required"), list) else []
            optional = len(set(names) - set(required))
            if optional > MAX_OPTIONAL:
                raise SchemaError(f"{path}.properties: {optional:,} optional properties in one object, over the "
                                  f"limit of {MAX_OPTIONAL}; list most of them in `required` (nullable if need be)")
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                branches += len(node[key])
                if branches > MAX_BRANCHES:
                    raise SchemaError(f"{path}.{key}: the schema has over {MAX_BRANCHES:,} anyOf/oneOf "
                                      "alternatives in all")
        objects.append((path, node))
    _ref_loops(schema, objects)
