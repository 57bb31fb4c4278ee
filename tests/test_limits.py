"""Context admission: prompts are counted without the model, and oversized ones are refused before queueing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, image_bytes

from vlassist.config import load_settings
from vlassist.conversation import GenerationOptions, Turn
from vlassist.errors import VlassistError
from vlassist.images import load_image
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Request
from vlassist.service.limits import check_prompt, context_admission, default_admission, prompt_limit

SHORT = GenerationOptions(max_new_tokens=8)


def _img(size=(96, 64)):
    return load_image(image_bytes(size))


def test_count_matches_the_encoded_prompt(engine):
    """count_prompt_tokens equals the prompt length the engine reports, text and images, across turns."""
    turns = [Turn("user", "Compare these", [_img(), _img((64, 128))]), Turn("assistant", "Two pictures."),
             Turn("user", "Which is taller?", [_img((200, 120))])]
    counted = engine.count_prompt_tokens(turns, SHORT)
    reply = engine.stream(turns, SHORT)
    reply.consume()
    assert counted == reply.stats.prompt_tokens


def test_limit_is_the_context_less_the_answer_or_the_cap(engine25):
    """The prompt limit is min(context - max_new_tokens, cap); the tiny checkpoint's context is 16384."""
    assert engine25.context_tokens == 16384
    assert prompt_limit(engine25, GenerationOptions(max_new_tokens=1000), 16384) == 15384
    assert prompt_limit(engine25, GenerationOptions(max_new_tokens=1000), 2000) == 2000


def test_huge_question_is_refused_with_size_limit_and_remedy(engine25):
    """A 200,000-character question is refused by the admission check, naming its size and the limit."""
    admit = context_admission(engine25, 16384, max_chars=10**7)
    with pytest.raises(VlassistError, match=r"over the limit of 15,360.*shorten the question.*lower resolution"):
        admit(Request([Turn("user", "word " * 40_000)], options=GenerationOptions(max_new_tokens=1024)))


def test_long_follow_up_suggests_a_new_conversation(engine25):
    """A follow-up over the limit says to start a new conversation; nothing is trimmed."""
    turns = [Turn("user", "hi"), Turn("assistant", "long " * 20000), Turn("user", "and?")]
    with pytest.raises(VlassistError, match="start a new conversation"):
        check_prompt(engine25, turns, SHORT, 16384)


def test_question_character_limit_comes_first():
    """The default admission refuses an over-long question by characters, even for an answerer that cannot count."""
    settings = load_settings({"VLASSIST_MAX_QUESTION_CHARS": "100"})
    checks = default_admission(object(), settings)
    with pytest.raises(VlassistError, match=r"101 characters long, over the limit of 100"):
        for check in checks:
            check(Request([Turn("user", "x" * 101)]))


def test_service_refuses_before_queueing(engine25):
    """AnswerService with the default admission raises on submit and queues nothing."""
    service = AnswerService(engine25, default_admission(engine25, load_settings({})))
    try:
        with pytest.raises(VlassistError, match="tokens"):
            service.submit(Request([Turn("user", "word " * 3900)], options=GenerationOptions(max_new_tokens=1024)))
        job = service.submit(Request([Turn("user", "Describe", [_img()])], options=SHORT))
        assert job.wait(120) and job.outcome == "complete"
    finally:
        service.close()


def test_cli_refuses_a_long_question_in_one_line():
    """The CLI exits 2 with one line for a question over VLASSIST_MAX_QUESTION_CHARS, before loading a model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env["VLASSIST_MAX_QUESTION_CHARS"] = "1000"
    done = subprocess.run([sys.executable, "-m", "vlassist", "ask", "-p", "x" * 100_000], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "100,000 characters long, over the limit of 1,000" in done.stderr


def test_cli_refuses_a_follow_up_over_the_context(tiny_qwen25, png_file):
    """A follow-up that no longer fits the tiny model's context ends the CLI with exit 2 and one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update(VLASSIST_DEVICE="cpu", VLASSIST_MAX_QUESTION_CHARS="100000")  # the context refuses, not the cap
    done = subprocess.run([sys.executable, "-m", "vlassist", "ask", "--model", str(tiny_qwen25), str(png_file),
                           "-p", "Describe", "-p", "word " * 4300, "--max-new-tokens", "4"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "start a new conversation" in done.stderr


HUGE = "Describe every detail of this picture once more. " * 4100  # ~200,000 characters


def under_8_gib(command: list[str]) -> list[str]:
    """`command` under an 8 GiB address-space limit (prlimit), as the issue's reference run."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    return ["prlimit", f"--as={8 * 2**30}", *command]


def test_cli_refuses_a_200k_character_question_under_8_gib(tiny_qwen25, png_file):
    """Under an 8 GiB limit, a 200k-character question (read from stdin) ends the CLI with exit 2 and one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update(VLASSIST_DEVICE="cpu")
    done = subprocess.run(under_8_gib([sys.executable, "-m", "vlassist", "ask", "--model", str(tiny_qwen25),
                                       str(png_file), "-p", "-"]),
                          cwd=ROOT, env=env, input=HUGE, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "over the limit" in done.stderr


def test_cli_refuses_a_200k_character_follow_up_under_8_gib(tiny_qwen25, png_file):
    """Under an 8 GiB limit, a short question is answered and a 200k-character follow-up is refused in one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update(VLASSIST_DEVICE="cpu", VLASSIST_MAX_QUESTION_CHARS="1000000")  # let the token count decide
    done = subprocess.run(under_8_gib([sys.executable, "-m", "vlassist", "ask", "--model", str(tiny_qwen25),
                                       str(png_file), "-p", "Describe", "-p", "-", "--max-new-tokens", "4"]),
                          cwd=ROOT, env=env, input=HUGE, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip()  # the first answer came
    assert done.stderr.count("\n") == 1 and "tokens" in done.stderr and "limit" in done.stderr


def test_refusal_caused_by_the_answer_length_names_a_shorter_answer(engine25):
    """When the prompt fits but not with room for the chosen answer length, the refusal says to choose a shorter
    answer length (and how long fits), not to shorten the question."""
    turns = [Turn("user", "word " * 3000)]
    with pytest.raises(VlassistError, match=r"choose a shorter answer length \(up to [\d,]+ tokens fit\)") as caught:
        check_prompt(engine25, turns, GenerationOptions(max_new_tokens=8192), 16384)
    assert "shorten the question" not in str(caught.value)


def test_tiny_context_holds_a_screenshot_a_follow_up_and_a_long_answer(engine25):
    """The tiny checkpoint's context fits a 1920×1080 screenshot at the default detail, an earlier answer, a
    follow-up question and room for a 2,048-token answer: the "try it without a model" path is not refused."""
    options = GenerationOptions(max_new_tokens=2048)
    turns = [Turn("user", "Read all the text in this screenshot.", [_img((1920, 1080))]),
             Turn("assistant", "text " * 1024), Turn("user", "Now list the buttons you see.")]
    check_prompt(engine25, turns, options, 16384)  # raises if refused
