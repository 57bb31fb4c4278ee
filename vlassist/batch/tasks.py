"""The batch task: what is asked of every image, how it is named for resuming, and how its answers are parsed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from vlassist.answers.parsing import extract_json, parse_boxes
from vlassist.answers.tables import json_table, parse_table
from vlassist.conversation import GenerationOptions
from vlassist.service.jobs import Job

TEXT, JSON, SCHEMA, TABLE, BOXES = "text", "json", "schema", "table", "boxes"
KINDS_BY_PRESET = {"json": JSON, "table": TABLE, "chart": TABLE, "grounding": BOXES}


@dataclass(frozen=True)
class Task:
    """One question for every image: its prompt, its JSON Schema if constrained, and how answers are parsed."""

    name: str  # the preset, "schema" or "prompt": readable in the task id
    kind: str  # TEXT, JSON, SCHEMA, TABLE or BOXES
    prompt: str
    schema_text: str | None
    max_image_tokens: int
    low_res: bool

    @property
    def id(self) -> str:
        """Stable id of what is asked and how the image is seen; decoding options are left out on purpose.

        So a rerun with a larger --max-new-tokens and --retry-failed redoes only the rows cut short.
        """
        spec = json.dumps([self.kind, self.prompt, self.schema_text, self.max_image_tokens, self.low_res])
        return f"{self.name}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def make_task(preset: str | None, prompt: str, schema_text: str | None, options: GenerationOptions,
              boxes_schema_text: str | None = None) -> Task:
    """The task for a preset (or a free prompt) and an optional schema, under these image options.

    `boxes_schema_text` holds the grounding preset's answers to the family's box list (as the page's "Find
    objects"); they are still parsed as boxes.
    """
    if schema_text is not None:
        return Task("schema", SCHEMA, prompt, schema_text, options.max_image_tokens, options.low_res)
    name, kind = preset or "prompt", KINDS_BY_PRESET.get(preset or "", TEXT)
    schema = boxes_schema_text if kind == BOXES else None
    return Task(name, kind, prompt, schema, options.max_image_tokens, options.low_res)


def parse_answer(task: Task, job: Job, family: str) -> tuple[object, str | None]:
    """(parsed result, error) for a finished job: JSON, table rows or boxes in original pixels; error if unusable."""
    if job.outcome == "failed":
        return None, job.error or "the answer failed"
    text, stats = job.text, job.stats
    if task.schema_text is not None and stats.stop_reason == "length":
        return None, (f"the answer was cut by the length limit ({stats.new_tokens} tokens) before the JSON was "
                      "complete; raise --max-new-tokens and rerun with --retry-failed")
    if task.kind == SCHEMA:
        found = extract_json(text, task.schema_text)
        if found is None or not found.valid:
            why = "; ".join(found.errors[:3]) if found is not None else "no JSON in the answer"
            return None, f"no valid JSON document came back ({why})"
        return found.value, None
    if task.kind == JSON:
        found = extract_json(text)
        return (found.value if found is not None else None), None
    if task.kind == TABLE:
        table = parse_table(text)
        if table is None and (found := extract_json(text)) is not None:
            table = json_table(found.value)
        return ({"columns": table.columns, "rows": table.rows} if table is not None else None), None
    if task.kind == BOXES:
        if not stats.images:
            return None, None
        sizing = stats.images[0]
        try:
            boxes = parse_boxes(text, family, sizing.input_size, sizing.original_size)
        except ValueError as exc:
            return None, str(exc)
        return [box._asdict() for box in boxes], None
    return None, None
