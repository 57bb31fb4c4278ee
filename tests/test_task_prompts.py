"""Family-aware task prompts."""

from __future__ import annotations

from vlassist.answers.prompts import grounding_prompt, json_schema_prompt, task_prompt


def test_grounding_prompt_per_family():
    """Each family gets its own grounding phrasing, naming the target; JSON families ask for bbox_2d."""
    prompts = {f: grounding_prompt(f, "red valve") for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")}
    assert len(set(prompts.values())) == 3 and all("red valve" in p for p in prompts.values())
    assert "bbox_2d" in prompts["qwen2_5_vl"] and "bbox_2d" in prompts["qwen3_vl"]
    assert task_prompt("grounding", "qwen3_vl", "red valve") == prompts["qwen3_vl"]


def test_schema_prompt_shows_schema():
    """The constrained-extraction prompt carries the schema text so the model sees the field names."""
    assert '"total"' in json_schema_prompt('{"properties": {"total": {}}}')
