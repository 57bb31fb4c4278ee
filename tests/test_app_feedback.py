"""Feedback on the page (AppTest on the tiny checkpoint): refusals by the chat box, result views over raw text,
and values that fail their field's format flagged in the JSON field table."""

from __future__ import annotations

import json

import pytest
from conftest import ask_app, start_app, stored, use_app_env
from test_app_results import downloads, insert_answer, paste_schema, reopen

from vlassist.answers.schemas import fields_schema

TABLE = "| Month | Sales (kEUR) |\n|---|---|\n| Jan | 3.5 |\n| Feb | 5 |"
DATED = fields_schema("vendor, due:date, total:number")


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_qwen25):
    """The app on the tiny Qwen2.5-VL checkpoint with a fresh data folder."""
    return use_app_env(monkeypatch, tmp_path / "data", tiny_qwen25)


def shown_markdown(block, text: str) -> int:
    """How many text elements in `block` (nested ones included) show exactly `text` (raw or as Markdown)."""
    return sum(m.value == text for m in block.code) + sum(m.value == text for m in block.markdown)


def answer_text_expander(block):
    """The "Answer text" expanders in `block`."""
    return [e for e in block.expander if e.label == "Answer text"]


def test_table_answer_text_is_folded_under_its_table(app_env):
    """A table answer shows its table once: the raw Markdown only inside a collapsed "Answer text" expander."""
    conversation, _ = insert_answer(app_env, TABLE, preset="table")
    reply = reopen(conversation).chat_message[1]
    [folded] = answer_text_expander(reply)
    assert shown_markdown(folded, TABLE) == 1 and shown_markdown(reply, TABLE) == 1
    assert not folded.proto.expanded
    assert len(reply.dataframe) == 1


def test_json_answer_text_is_folded_under_its_fields(app_env):
    """A JSON answer's raw document is inside the collapsed expander, not above its field table."""
    text = '{"vendor": "ACME", "due": "2024-03-01", "total": 12.5}'
    conversation, _ = insert_answer(app_env, text, preset="json", options={"json_schema": json.dumps(DATED)})
    reply = reopen(conversation).chat_message[1]
    [folded] = answer_text_expander(reply)
    assert shown_markdown(folded, text) == 1 and shown_markdown(reply, text) == 1
    assert list(reply.dataframe[0].value["field"]) == ["vendor", "due", "total"]


def test_free_answer_keeps_its_text_in_full(app_env):
    """An answer with no structured view shows its text directly, with nothing folded away."""
    text = "The panel shows a pressure gauge reading about 4 bar."
    conversation, _ = insert_answer(app_env, text, preset="describe")
    reply = reopen(conversation).chat_message[1]
    assert shown_markdown(reply, text) == 1 and not answer_text_expander(reply)


def test_stopped_table_answer_keeps_its_text_in_full(app_env):
    """A table answer that was stopped part-way shows its partial text unfolded, since it is incomplete."""
    conversation, _ = insert_answer(app_env, TABLE, preset="table", status="interrupted")
    reply = reopen(conversation).chat_message[1]
    assert shown_markdown(reply, TABLE) == 1 and not answer_text_expander(reply)


def test_json_without_a_document_keeps_its_text_in_full(app_env):
    """A JSON-preset answer with no JSON in it shows its text unfolded next to the "No JSON" note."""
    text = "I cannot read any fields in this image."
    conversation, _ = insert_answer(app_env, text, preset="json")
    reply = reopen(conversation).chat_message[1]
    assert shown_markdown(reply, text) == 1 and not answer_text_expander(reply)


def test_impossible_date_is_flagged_in_the_field_table(app_env):
    """A date field holding "6320-71-71" is named in a warning and marked in the table; downloads stay."""
    text = '{"vendor": "ACME", "due": "6320-71-71", "total": 12.5}'
    conversation, _ = insert_answer(app_env, text, preset="json", options={"json_schema": json.dumps(DATED)})
    at = reopen(conversation)
    reply = at.chat_message[1]
    [warning] = reply.warning
    assert "due" in warning.value and "6320-71-71" in warning.value
    frame = reply.dataframe[0].value
    checks = dict(zip(frame["field"], frame["check"]))
    assert checks["due"] and not checks["vendor"] and not checks["total"]
    assert downloads(at) >= {"Download JSON", "Download CSV"}


def test_real_date_gets_no_check_column(app_env):
    """A JSON answer whose date is real shows the plain field/value table with no warning."""
    text = '{"vendor": "ACME", "due": "2024-02-29", "total": 12.5}'
    conversation, _ = insert_answer(app_env, text, preset="json", options={"json_schema": json.dumps(DATED)})
    reply = reopen(conversation).chat_message[1]
    assert not reply.warning and list(reply.dataframe[0].value.columns) == ["field", "value"]


def test_refused_send_is_shown_by_the_chat_box_only(app_env):
    """A send refused for its JSON shape is reported once, after the presets (by the chat box), with no toast."""
    at = start_app()
    paste_schema(at, '{"type": "objekt"}').run()
    ask_app(at, "Read the panel")
    assert stored(app_env) == []
    nodes = list(at.main)
    [refusal] = [i for i, node in enumerate(nodes) if node.type == "error" and "Not sent" in node.value]
    last_preset = max(i for i, node in enumerate(nodes) if getattr(node, "key", None) == "preset_html")
    assert refusal > last_preset
    assert not at.toast
    assert at.chat_input(key="chat_input").value == "Read the panel"


def test_failed_answer_stats_line_does_not_claim_zero_tokens():
    """The stats line of an answer that failed before any token says nothing of "0 tokens" or "prompt 0"."""
    from vlassist.conversation import Stats
    from vlassist.ui.chat import stats_caption

    caption = stats_caption(Stats(stop_reason="error", error="out of memory"))
    assert "0 tokens" not in caption and "prompt 0" not in caption
    assert "prompt 12 (4 visual)" in stats_caption(Stats(stop_reason="eos", new_tokens=3, prompt_tokens=12,
                                                          visual_tokens=4))
