"""Conversation titles in the user's words: the typed question, else the task's name and the first file's name.

Through the page (AppTest on the tiny checkpoint) and through the conversation service the page calls.
"""

from __future__ import annotations

import pytest
from conftest import ask_app, image_bytes, shown_verbatim, start_app, stored, use_app_env

from vlassist.answers.prompts import PRESETS, grounding_prompt, preset_prompt
from vlassist.conversation import GenerationOptions
from vlassist.images import load_image
from vlassist.service import conversations
from vlassist.service.answering import AnswerService
from vlassist.store.history import History, NewImage
from vlassist.store.records import TITLE_LENGTH, make_title


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_qwen25):
    """Environment for the app: the tiny checkpoint on CPU and a fresh data folder."""
    return use_app_env(monkeypatch, tmp_path / "data", tiny_qwen25)


def png(name: str) -> tuple[str, bytes, str]:
    """An attachment for the chat box: (file name, PNG bytes, mime type)."""
    return name, image_bytes((80, 60)), "image/png"


def titles(at, data_dir) -> tuple[str, str]:
    """(the only stored conversation's title, the heading above the chat)."""
    [conversation] = stored(data_dir)
    return conversation.title, shown_verbatim(at, "vl-title")[0]


def test_typed_question_is_the_title(app_env):
    """A typed question titles the new conversation, stored and shown above the chat."""
    at = ask_app(start_app(), "  What does the red gauge read?  ", png("gauge.png"))
    assert titles(at, app_env) == ("What does the red gauge read?", "What does the red gauge read?")


def test_long_typed_question_is_shortened_like_make_title(app_env):
    """A long multi-line question is titled with its first line, cut to the title length with an ellipsis."""
    question = "Which of these " + "very " * 40 + "long lines matters?\nSecond line"
    at = ask_app(start_app(), question)
    title, heading = titles(at, app_env)
    assert title == heading == make_title(question)
    assert len(title) == TITLE_LENGTH and title.endswith("…") and "Second line" not in title


def test_unedited_preset_is_titled_with_its_short_name_and_first_file(app_env):
    """A preset sent as it filled the box is titled "<short name> · <first file>", never with its prompt."""
    at = start_app()
    at.button(key="preset_ocr").click().run()
    at = ask_app(at, preset_prompt("ocr"), png("invoice.png"), png("second.png"))
    assert titles(at, app_env) == ("Read text · invoice.png", "Read text · invoice.png")
    [conversation] = stored(app_env)
    assert conversation.messages[0].text == preset_prompt("ocr")  # the model still gets the whole prompt


def test_edited_preset_prompt_is_the_users_words(app_env):
    """Once the user changes a preset's prompt, the edited question titles the conversation."""
    at = start_app()
    at.button(key="preset_ocr").click().run()
    at = ask_app(at, "Only the serial number, please", png("label.png"))
    assert titles(at, app_env)[0] == "Only the serial number, please"


def test_json_preset_with_a_template_is_titled_with_the_task(app_env):
    """The JSON preset's prompt (not the user's words) gives "Extract JSON · <file>"."""
    at = start_app()
    at.button(key="preset_json").click().run()
    at.radio(key="json_source").set_value("template").run()
    at = ask_app(at, PRESETS["json"].prompt, png("invoice.png"))
    assert titles(at, app_env)[0] == "Extract JSON · invoice.png"
    [conversation] = stored(app_env)
    assert conversation.messages[0].options["json_schema"] and "Schema" not in conversation.title


def test_find_objects_with_a_new_target_is_titled_with_the_task(app_env):
    """Changing what "Find objects" looks for rewrites the prompt; it stays the preset's words in the title."""
    at = start_app()
    at.button(key="preset_grounding").click().run()
    at.text_input(key="grounding_target").input("gauge").run()
    prompt = grounding_prompt("qwen2_5_vl", "gauge")
    assert at.chat_input(key="chat_input").value == prompt
    at = ask_app(at, prompt, png("panel.png"))
    assert titles(at, app_env)[0] == "Find objects · panel.png"


def test_image_without_words_is_titled_describe_and_its_name(app_env):
    """An image sent with no text and no preset is described, titled "Describe · <file>"."""
    at = ask_app(start_app(), "", png("photo.png"))
    assert titles(at, app_env)[0] == "Describe · photo.png"


def test_a_made_title_can_still_be_renamed(app_env):
    """A title made from a preset and a file is renamed from the conversation's menu like any other."""
    at = start_app()
    at.button(key="preset_table").click().run()
    at = ask_app(at, preset_prompt("table"), png("sheet.png"))
    [conversation] = stored(app_env)
    assert conversation.title == "Table · sheet.png"
    at.text_input(key=f"rename_{conversation.id}").input("March figures").run()
    assert stored(app_env)[0].title == "March figures" and shown_verbatim(at, "vl-title")[0] == "March figures"


@pytest.fixture
def service_store(engine25, tmp_path):
    """(answer service, one owner's store) over the tiny Qwen2.5-VL engine and a fresh history."""
    history = History.open(tmp_path)
    service = AnswerService(engine25)
    yield service, history.for_owner("local")
    service.close()
    history.close()


def picture(name: str) -> NewImage:
    """A small decoded image as the page hands it to the service."""
    data = image_bytes()
    return NewImage(data, load_image(data, name), name)


def test_service_titles_a_new_conversation_with_the_given_title(service_store):
    """conversations.ask with a title names the new conversation so; the question text is stored whole."""
    service, store = service_store
    prompt = preset_prompt("ocr")
    job = conversations.ask(service, store, None, prompt, [picture("scan.png")],
                            GenerationOptions(max_new_tokens=4), "ocr", title="Read text · scan.png")
    assert job.wait(120)
    conversation = store.get_conversation(job.request.conversation_id)
    assert conversation.title == "Read text · scan.png" and conversation.messages[0].text == prompt


def test_service_titles_from_the_question_without_a_title(service_store):
    """Without a title the new conversation is titled by make_title from the question's first line."""
    service, store = service_store
    job = conversations.ask(service, store, None, "\n  Total due?\nand the date", [picture("a.png")],
                            GenerationOptions(max_new_tokens=4))
    assert job.wait(120)
    assert store.get_conversation(job.request.conversation_id).title == "Total due?"


def test_service_keeps_the_title_of_an_existing_conversation(service_store):
    """A follow-up question never renames its conversation, whatever title it is sent with."""
    service, store = service_store
    first = conversations.ask(service, store, None, "First question", [picture("a.png")],
                              GenerationOptions(max_new_tokens=4))
    assert first.wait(120)
    conversation_id = first.request.conversation_id
    again = conversations.ask(service, store, conversation_id, "Second", options=GenerationOptions(max_new_tokens=4),
                              title="Other title")
    assert again.wait(120)
    assert store.get_conversation(conversation_id).title == "First question"
