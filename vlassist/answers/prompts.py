"""Task presets: a well-written starting prompt for each kind of visual question."""

from __future__ import annotations

from dataclasses import dataclass

from vlassist.families import FAMILIES


@dataclass(frozen=True)
class Preset:
    """A one-click task: its label, the prompt it fills in, and whether it wants greedy decoding."""

    key: str
    label: str
    prompt: str
    precise: bool = True
    short: str = ""  # the button's label and the start of a title made from a preset alone
    icon: str = ""  # a Material icon name, drawn from the fonts Streamlit ships (nothing fetched)
    tip: str = ""  # one line on what the preset does


PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset("describe", "Describe",
               "Describe this image in detail: what it shows, the important elements and any visible text.",
               precise=False, short="Describe", icon="image_search",
               tip="Describe what the image shows and any visible text."),
        Preset("ocr", "Read all text (OCR)",
               "Read all the text in this image exactly as written, top to bottom and left to right. Keep line "
               "breaks, keep numbers and units exactly, and do not translate or summarise. Output only the text.",
               short="Read text", icon="text_fields",
               tip="Read all the text exactly as written (OCR), line by line."),
        Preset("json", "Extract fields as JSON",
               "Extract the key fields from this image as one JSON object. Use the labels shown in the image as "
               "keys, keep values exactly as written (numbers as numbers), and use null for anything missing. "
               "Output only the JSON.",
               short="Extract JSON", icon="data_object",
               tip="Pull the fields out as one JSON object; name the fields or pick a template below."),
        Preset("table", "Table → Markdown",
               "Convert the table in this image to a Markdown table. Keep every row and column in order, copy "
               "cell values exactly, and leave empty cells empty. Output only the table.",
               short="Table", icon="table",
               tip="Turn a table in the image into a Markdown table you can download as CSV."),
        Preset("chart", "Chart → data",
               "Read the data behind this chart as a Markdown table: one row per data point, one column per "
               "series, with the axis labels and units as column headers. Output only the table.",
               short="Chart data", icon="bar_chart",
               tip="Read the data points behind a chart into a table."),
        Preset("html", "UI screenshot → HTML",
               "Write one self-contained HTML page (inline CSS, no scripts, no external resources) that "
               "reproduces this user interface screenshot as closely as possible: layout, text, colours. Output "
               "only the HTML in a ```html code block.",
               short="UI to HTML", icon="code",
               tip="Rebuild a user-interface screenshot as one HTML page, with a preview."),
        Preset("grounding", "Find objects (boxes)",
               "Locate every {target} in this image. Output a JSON list where each item has \"bbox_2d\": "
               "[x1, y1, x2, y2] and \"label\".",
               short="Find objects", icon="center_focus_strong",
               tip="Find things in the image and draw boxes around them."),
    )
}


def preset_prompt(key: str, target: str = "object") -> str:
    """The prompt text for preset `key`; grounding asks for `target`."""
    preset = PRESETS[key]
    return preset.prompt.format(target=target) if "{target}" in preset.prompt else preset.prompt


def grounding_prompt(family: str, target: str = "object") -> str:
    """The "Find objects" prompt in the phrasing checkpoint family `family` (a model_type) was trained on."""
    # An unknown family (e.g. a stored chat from another model) gets the JSON-bbox phrasing most families share.
    known = FAMILIES.get(family, FAMILIES["qwen2_5_vl"])
    return known.grounding.format(target=target.strip() or "object")


def task_prompt(key: str, family: str, target: str = "object") -> str:
    """The prompt for preset `key` on checkpoint family `family` (grounding differs per family)."""
    return grounding_prompt(family, target) if key == "grounding" else preset_prompt(key, target)


def json_schema_prompt(schema_text: str) -> str:
    """The extraction prompt when the answer is constrained to a JSON Schema (the schema shows the fields)."""
    return ("Extract the information in this image as one JSON object that follows this JSON Schema. Copy "
            "values exactly as written, give numbers as numbers, and use null for anything not shown.\n"
            f"Schema:\n{schema_text}")


def json_question(text: str, schema_text: str) -> str:
    """What the model reads for a question held to a JSON Schema: the preset's prompt becomes the schema-bearing
    prompt; the user's own words are kept and the schema follows them."""
    if text.strip() == PRESETS["json"].prompt:
        return json_schema_prompt(schema_text)
    return f"{text}\n\nAnswer with one JSON object that follows this JSON Schema:\n{schema_text}"
