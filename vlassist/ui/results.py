"""Streamlit renderers for a finished assistant answer: JSON, boxes, tables, charts and HTML results."""

from __future__ import annotations

import io
import re
from typing import Any

import streamlit as st
import streamlit.components.v1 as components

from vlassist.answers.annotate import boxes_coco, boxes_csv, boxes_json, crop_box, draw_boxes
from vlassist.answers.html_preview import preview_document
from vlassist.answers.parsing import extract_html, extract_json, flatten, parse_boxes
from vlassist.answers.tables import Table, json_table, parse_markdown_tables, parse_table

CUT_MESSAGE = ("The answer was cut by the length limit before it was complete, so it is not shown as a result. "
               "Raise the answer length and ask again.")
STOPPED_MESSAGE = "The answer was stopped before the JSON was complete, so it is not shown as a result."
_BOX_MARKERS = re.compile(r'"(?:bbox_2d|point_2d)"|<\|box_start\|>')
_HTML_FENCE = re.compile(r"```\s*html\b", re.I)


def render_result(preset_key: str | None, text: str, *, family: str, images: list[dict], stop_reason: str,
                  key: str, schema: dict | str | None = None) -> dict | None:
    """Render the structured view of a finished answer; return a zoom-in request or None (see render_view)."""
    return render_view(preset_key, text, family=family, images=images, stop_reason=stop_reason, key=key,
                       schema=schema)[1]


def render_view(preset_key: str | None, text: str, *, family: str, images: list[dict], stop_reason: str,
                key: str, schema: dict | str | None = None) -> tuple[bool, dict | None]:
    """Render the structured view of a finished answer; return (a view was drawn, zoom-in request or None).

    preset_key: the task preset the question used ("json", "grounding", "table", "chart", "html"; others and
    None render nothing). text: the whole answer. family: the checkpoint's model_type. images: one dict per
    image of the question, each with "original_size" and "input_size" as (width, height) and, when available,
    "image" (a LoadedImage or PIL image) and "name". stop_reason: the engine's ("eos", "length", "stopped",
    "error"). key: unique per message, prefixes every widget key. schema: the JSON Schema the answer was
    constrained to, if any.

    The first value is False when only a message was drawn (no JSON, table, boxes or page found; a cut JSON
    answer), so the caller knows the answer's text is all there is to read. The second is {"action": "zoom",
    "image": PIL.Image (crop of the original at full resolution), "box": Box, "prompt": str} on the run where
    the user pressed "Zoom in", for the app to ask as a follow-up.
    """
    if preset_key == "json":
        return render_json(text, stop_reason=stop_reason, key=key, schema=schema), None
    if preset_key == "grounding":
        return render_boxes(text, family=family, images=images, key=key)
    if preset_key in ("table", "chart"):
        return render_table(text, stop_reason=stop_reason, key=key), None
    if preset_key == "html":
        return render_html(text, stop_reason=stop_reason, key=key), None
    return False, None


def guess_view(text: str) -> str | None:
    """The view a free answer lends itself to: "grounding" (boxes), "html" (a fenced page), "table" or None."""
    if _BOX_MARKERS.search(text):
        return "grounding"
    if _HTML_FENCE.search(text):
        return "html"
    if parse_markdown_tables(text):
        return "table"
    return None


def render_json(text: str, *, stop_reason: str, key: str, schema: dict | str | None = None) -> bool:
    """The JSON answer as a field/value table with JSON and CSV downloads; cut or broken answers say so.

    Values that fail their format (a date that is not a real date) are listed in a warning and marked in the
    table's "check" column. Returns whether the table was drawn.
    """
    if stop_reason in ("length", "stopped"):
        st.warning(CUT_MESSAGE if stop_reason == "length" else STOPPED_MESSAGE, icon=":material/content_cut:")
        return False
    result = extract_json(text, schema)
    if result is None:
        st.info("No JSON found in this answer.")
        return False
    if not result.valid:
        st.error("The JSON does not match the schema:\n\n" + "\n".join(f"- {e}" for e in result.errors[:10]))
        return False
    if result.repaired:
        st.caption("The JSON in this answer needed repair (a fence, extra text or brackets); shown repaired.")
    if result.flags:
        lines = [f"- {flag.path}: `{_show(flag.value).replace('`', chr(39))}` — {flag.reason}"
                 for flag in result.flags[:20]]
        st.warning("Check these values — they do not match their field's format:\n\n" + "\n".join(lines),
                   icon=":material/rule:")
    table = json_table(result.value)
    if table:
        rows = table_rows(table)
    else:
        checks = {flag.path: flag.reason for flag in result.flags}
        rows = [{"field": p, "value": _show(v)} | ({"check": checks.get(p, "")} if checks else {})
                for p, v in flatten(result.value)]
    st.dataframe(rows, key=f"{key}-json-table", hide_index=True, width="stretch")
    csv_text = table.to_csv() if table else _pairs_csv(flatten(result.value))
    left, right = st.columns(2)
    left.download_button("Download JSON", result.text, file_name="result.json", mime="application/json",
                         key=f"{key}-json-dl")
    right.download_button("Download CSV", csv_text, file_name="result.csv", mime="text/csv", key=f"{key}-json-csv")
    return True


def render_table(text: str, *, stop_reason: str, key: str) -> bool:
    """A Markdown/CSV table answer as a dataframe with a CSV download; returns whether a table was found."""
    table = parse_table(text)
    if table is None:
        st.info("No table found in this answer.")
        return False
    if stop_reason == "length":
        st.warning("The answer was cut by the length limit: the table below may be missing rows.",
                   icon=":material/content_cut:")
    st.dataframe(table_rows(table), key=f"{key}-table", hide_index=True, width="stretch")
    st.download_button("Download CSV", table.to_csv(), file_name="table.csv", mime="text/csv", key=f"{key}-table-csv")
    return True


def render_html(text: str, *, stop_reason: str, key: str) -> bool:
    """The HTML page as code, as a live preview that can reach no network and run no script, and a download.

    Returns whether a page was found.
    """
    page = extract_html(text)
    if page is None:
        st.info("No HTML found in this answer.")
        return False
    if stop_reason == "length":
        st.warning("The answer was cut by the length limit: the page may be incomplete.", icon=":material/content_cut:")
    preview, code = st.tabs(["Preview", "HTML"])
    with preview:
        components.html(preview_document(page), height=480, scrolling=True)
    with code:
        st.code(page, language="html")
    st.download_button("Download HTML", page, file_name="page.html", mime="text/html", key=f"{key}-html-dl")
    return True


def render_boxes(text: str, *, family: str, images: list[dict], key: str) -> tuple[bool, dict | None]:
    """Boxes drawn on the image they are about, with a table, JSON/CSV/COCO exports and a zoom-in action.

    With several images the user picks which one the boxes are about (the answer does not say); the boxes
    are then mapped with that image's own sizes. Returns (boxes were shown, zoom-in request or None).
    """
    if not images:
        st.info("Boxes need the image the question was about.")
        return False, None
    info = images[_chosen_image(images, key)]
    original, model_input = tuple(info["original_size"]), tuple(info["input_size"])
    boxes = parse_boxes(text, family, model_input, original)
    if not boxes:
        st.info("No boxes found in this answer.")
        return False, None
    picture = _pil(info.get("image"))
    name = info.get("name") or "image.png"
    left, right = st.columns([3, 2])
    if picture is not None:
        left.image(draw_boxes(picture, boxes), caption=f"{len(boxes)} found", width="stretch")
    right.dataframe([{"#": i, "label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2}
                     for i, b in enumerate(boxes, 1)], key=f"{key}-boxes", hide_index=True)
    a, b, c = right.columns(3)
    a.download_button("JSON", boxes_json(boxes, original), file_name="boxes.json", mime="application/json",
                      key=f"{key}-boxes-json")
    b.download_button("CSV", boxes_csv(boxes), file_name="boxes.csv", mime="text/csv", key=f"{key}-boxes-csv")
    c.download_button("COCO", boxes_coco(boxes, original, name), file_name="boxes_coco.json",
                      mime="application/json", key=f"{key}-boxes-coco")
    if picture is None:
        return True, None
    choice = right.selectbox("Box to zoom into", range(len(boxes)), key=f"{key}-zoom-pick",
                             format_func=lambda i: f"{i + 1}: {boxes[i].label or 'box'}")
    if right.button("Zoom in", key=f"{key}-zoom", help="Ask about this region at full resolution"):
        box = boxes[choice]
        return True, {"action": "zoom", "image": crop_box(picture, box), "box": box,
                      "prompt": f"Look closely at this region{f' ({box.label})' if box.label else ''} and "
                                "describe what it shows, reading any text exactly."}
    return True, None


def _chosen_image(images: list[dict], key: str) -> int:
    if len(images) == 1:
        return 0
    return st.selectbox("Boxes are on image", range(len(images)), key=f"{key}-boxes-image",
                        format_func=lambda i: f"{i + 1}: {images[i].get('name') or 'image'}",
                        help="The question had several images; Qwen-VL answers in the coordinates of one.")


def table_rows(table: Table) -> list[dict[str, str]]:
    """Table rows as dicts keyed by column name (what st.dataframe shows with the right headers)."""
    return [dict(zip(table.columns, row)) for row in table.rows]


def _pil(image: Any):
    if image is None:
        return None
    return getattr(image, "image", image)  # a LoadedImage carries its PIL image


def _show(value: Any) -> str:
    return "" if value is None else str(value)


def _pairs_csv(pairs: list[tuple[str, Any]]) -> str:
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["field", "value"])
    writer.writerows((p, _show(v)) for p, v in pairs)
    return buf.getvalue()
