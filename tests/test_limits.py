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
    """The prompt limit is min(context - max_new_tokens, cap); the tiny checkpoint's context is 4096."""
    assert engine25.context_tokens == 4096
    assert prompt_limit(engine25, GenerationOptions(max_new_tokens=1000), 16384) == 3096
    assert prompt_limit(engine25, GenerationOptions(max_new_tokens=1000), 2000) == 2000


def test_huge_question_is_refused_with_size_limit_and_remedy(engine25):
    """A 200,000-character question is refused by the admission check, naming its size and the limit."""
    admit = context_admission(engine25, 16384, max_chars=10**7)
    with pytest.raises(VlassistError, match=r"over the limit of 3,072.*shorten the question.*lower resolution"):
        admit(Request([Turn("user", "word " * 40_000)], options=GenerationOptions(max_new_tokens=1024)))


def test_long_follow_up_suggests_a_new_conversation(engine25):
    """A follow-up over the limit says to start a new conversation; nothing is trimmed."""
    turns = [Turn("user", "hi"), Turn("assistant", "long " * 3000), Turn("user", "and?")]
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
    env.update(VLASSIST_DEVICE="cpu")
    done = subprocess.run([sys.executable, "-m", "vlassist", "ask", "--model", str(tiny_qwen25), str(png_file),
                           "-p", "Describe", "-p", "word " * 3900, "--max-new-tokens", "4"], cwd=ROOT, env=env,
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
