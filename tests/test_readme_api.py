"""The README's API examples work as printed: its curl command and its Python snippet against a real `vlassist serve`.

The examples are read out of README.md itself (only the address is changed to the test server's free port), so
a README edit that breaks them fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from api_support import start_serve, stop_serve
from conftest import ROOT, image_bytes

pytestmark = pytest.mark.enable_socket

README_ADDRESS = "http://127.0.0.1:8000"


def readme_block(language: str, marker: str) -> str:
    """The README's fenced `language` code block that contains `marker`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one {language} block with {marker!r} in README.md, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def server(tiny_qwen25, tmp_path_factory):
    """A serve process without a key, as the README's examples assume: its base URL."""
    proc, url = start_serve(tiny_qwen25, tmp_path_factory.mktemp("readme-api") / "serve.log")
    yield url
    stop_serve(proc)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_example_gets_a_chat_completion(server):
    """The README's curl command, run by bash as printed, gets an OpenAI-shaped completion with usage."""
    command = readme_block("bash", "curl -s " + README_ADDRESS)
    assert README_ADDRESS in command
    done = subprocess.run(["bash", "-c", command.replace(README_ADDRESS, server)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["prompt_tokens"] > 0 and 0 < reply["usage"]["completion_tokens"] <= 32
    assert reply["vlassist"]["stats"]["visual_tokens"] > 0


def test_the_readme_python_example_prints_the_answer_usage_and_stats(server, tmp_path):
    """The README's Python snippet, run in its own interpreter beside a screenshot.png, prints answer, usage, stats."""
    snippet = readme_block("python", "from openai import OpenAI")
    assert f'base_url="{README_ADDRESS}/v1"' in snippet
    (tmp_path / "screenshot.png").write_bytes(image_bytes((320, 200)))
    done = subprocess.run([sys.executable, "-c", snippet.replace(README_ADDRESS, server)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "CompletionUsage(" in done.stdout and "prompt_tokens=" in done.stdout
    assert "'visual_tokens':" in done.stdout.splitlines()[-1]
