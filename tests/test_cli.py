"""`python -m vlassist`: streamed answers, follow-ups, stats, and one-line errors with exit status 2."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, image_bytes


def run_cli(*args, timeout=300, prefix=()):
    """Run the CLI in a fresh interpreter and return the completed process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    return subprocess.run([*prefix, sys.executable, "-m", "vlassist", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_ask_streams_an_answer_and_exits_zero(tiny_qwen25, png_file):
    """ask prints an answer on stdout and exits 0."""
    done = run_cli("ask", "--model", tiny_qwen25, png_file, "--prompt", "Describe", "--max-new-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and done.stderr == ""


def test_two_prompts_are_one_conversation_with_json_stats(tiny_qwen3, png_file):
    """Two --prompt options give two answers; the second's prompt contains the first exchange."""
    done = run_cli("ask", "--model", tiny_qwen3, png_file, "-p", "Describe", "-p", "And the colour?",
                   "--max-new-tokens", "6", "--json-stats")
    assert done.returncode == 0, done.stderr
    stats = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(stats) == 2
    assert stats[1]["prompt_tokens"] > stats[0]["prompt_tokens"] + stats[0]["new_tokens"]
    assert stats[0]["visual_tokens"] == stats[1]["visual_tokens"] > 0
    assert set(stats[0]) >= {"ttft_s", "tokens_per_s", "stop_reason", "images"}


def _bomb() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")
    return buf.getvalue()


def _tiff_cut_in_its_tags() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, "TIFF")
    return buf.getvalue()[:40]


BAD_IMAGES = {
    "empty.png": b"",
    "text.png": b"just some text renamed to .png\n",
    "truncated.png": image_bytes((300, 300), fmt="PNG", color=(9, 99, 199))[:400],
    "truncated.jpg": image_bytes((300, 300), fmt="JPEG")[:600],
    "truncated-ifd.tif": _tiff_cut_in_its_tags(),  # Pillow warns "Corrupt EXIF data" before it gives up
    "strip.png": image_bytes((1, 5000)),
    "bomb.png": _bomb(),
    "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="9" height="9"/></svg>',
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_gives_one_line_and_exit_2(tmp_path, tiny_qwen25, name):
    """Each kind of bad image prints exactly one line on stderr, naming the file, and exits 2."""
    path = tmp_path / name
    path.write_bytes(BAD_IMAGES[name])
    done = run_cli("ask", "--model", tiny_qwen25, path, "-p", "Describe")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlassist: error: ") and name in lines[0]


def test_missing_model_gives_one_line_and_exit_2(tmp_path, png_file):
    """A model folder that does not exist is one clear line naming it and the fetch command."""
    done = run_cli("ask", "--model", tmp_path / "absent", png_file, "-p", "Describe")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "absent" in done.stderr and "fetch_model.py" in done.stderr


def test_bad_setting_gives_one_line_and_exit_2(png_file):
    """An invalid VLASSIST_* value is one line naming the variable."""
    env = {**os.environ, "VLASSIST_DEVICE": "tpu"}
    done = subprocess.run([sys.executable, "-m", "vlassist", "ask", str(png_file), "-p", "x"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "VLASSIST_DEVICE" in done.stderr


def test_info_describes_the_model(tiny_qwen3):
    """info prints family, device, attention with its reason, and memory."""
    done = run_cli("info", "--model", tiny_qwen3)
    assert done.returncode == 0, done.stderr
    assert "qwen3_vl" in done.stdout and "cpu (float32)" in done.stdout
    assert "sdpa — " in done.stdout and "GiB" in done.stdout
    assert "decode:     eager" in done.stdout  # CPU never compiles the decode step


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) to create a network namespace")
def test_ask_works_with_no_network_interface(tiny_qwen25, png_file):
    """In a network namespace with no interface up at all, ask still answers and exits 0."""
    done = run_cli("ask", "--model", tiny_qwen25, png_file, "-p", "Describe", "--max-new-tokens", "4",
                   prefix=("unshare", "--net"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
