"""The remote backend: RemoteAnswerer and the CLI on a `vlassist serve` process, and torch-free sizing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from api_support import start_serve, stop_serve
from conftest import ROOT, image_bytes

from vlassist.config import load_settings
from vlassist.conversation import GenerationOptions, Turn
from vlassist.images import load_image
from vlassist.remote import RemoteAnswerer, guess_family
from vlassist.remote.sizing import plan_size

SIZES = [(64, 48), (1920, 1080), (4000, 3000), (12, 1200), (1200, 9), (28, 28), (300, 5000), (801, 613)]


@pytest.fixture(scope="module")
def backend(tiny_qwen25, tmp_path_factory):
    """A serve process on the tiny Qwen2.5-VL checkpoint, no key: its base URL."""
    proc, url = start_serve(tiny_qwen25, tmp_path_factory.mktemp("remote") / "serve.log")
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def remote(backend):
    """A RemoteAnswerer configured the way the page and CLI build one: from VLASSIST_BACKEND_URL."""
    return RemoteAnswerer(load_settings({"VLASSIST_BACKEND_URL": backend, "VLASSIST_STREAM_TIMEOUT_S": "60"}))


@pytest.mark.enable_socket
def test_remote_answerer_describes_the_server_model(remote, tiny_qwen25):
    """Connecting lists the server's model, guesses its family from the name, and reports a remote device."""
    assert (remote.info.model_dir, remote.info.family, remote.info.device) == (tiny_qwen25.name, "qwen2_5_vl", "remote")
    assert remote.memory() == {} and remote.busy is False


@pytest.mark.enable_socket
def test_remote_answer_streams_with_stats_of_the_planned_images(remote):
    """An answer streams back with usage-based stats; images are sent, and recorded, at the planned size."""
    image = load_image(image_bytes((640, 480)))
    options = GenerationOptions(max_new_tokens=6, min_new_tokens=6, max_image_tokens=64)
    reply = remote.stream([Turn("user", "Describe", [image])], options)
    text = reply.consume()
    stats = reply.stats
    assert text and stats.new_tokens == 6 and stats.stop_reason == "length"
    assert stats.images == [remote.plan(image, options)] and stats.images[0].visual_tokens <= 64
    assert stats.prompt_tokens > stats.visual_tokens == stats.images[0].visual_tokens


@pytest.mark.enable_socket
def test_remote_json_schema_answer_validates(remote):
    """GenerationOptions.json_schema goes as response_format: the server's constrained answer validates."""
    from vlassist.answers.parsing import extract_json

    schema = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}
    reply = remote.stream([Turn("user", "JSON please", [load_image(image_bytes())])],
                          GenerationOptions(max_new_tokens=48, json_schema=json.dumps(schema)))
    assert extract_json(reply.consume(), schema).valid


@pytest.mark.enable_socket
def test_stop_mid_answer_closes_the_stream(remote, backend):
    """Setting the stop event mid-answer ends the Reply as "stopped", and the server is free again at once."""
    stop = threading.Event()
    reply = remote.stream([Turn("user", "Talk for a long time")],
                          GenerationOptions(max_new_tokens=3900, min_new_tokens=3900), stop=stop)
    for _ in reply:
        stop.set()
    assert reply.stats.stop_reason == "stopped"
    started = time.monotonic()
    quick = remote.stream([Turn("user", "quick")], GenerationOptions(max_new_tokens=2))
    quick.consume()
    # 3900 forced tokens take far longer on the CPU: a short wait in the server's queue means the stream's end
    # cancelled the long answer there.
    assert quick.stats.new_tokens == 2 and time.monotonic() - started < 15
    assert json.loads(urllib.request.urlopen(f"{backend}/health", timeout=5).read())["queued"] == 0


@pytest.mark.enable_socket
def test_cli_ask_answers_through_the_backend_url(backend, png_file):
    """`python -m vlassist ask` with VLASSIST_BACKEND_URL answers from the server, loading no model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update(VLASSIST_BACKEND_URL=backend, VLASSIST_MODEL_DIR="/nonexistent")
    done = subprocess.run([sys.executable, "-m", "vlassist", "ask", str(png_file), "-p", "Describe",
                           "--max-new-tokens", "6", "--json-stats"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and json.loads(done.stderr.splitlines()[-1])["new_tokens"] > 0


@pytest.mark.enable_socket
def test_an_unreachable_backend_is_one_clear_error():
    """A backend URL nobody answers on fails with a message naming the server, not a traceback."""
    from vlassist.remote import BackendError

    with pytest.raises(BackendError, match="cannot reach the server at http://127.0.0.1:9/v1"):
        RemoteAnswerer(load_settings({"VLASSIST_BACKEND_URL": "http://127.0.0.1:9"}))


@pytest.mark.parametrize("name,family", [("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
                                         ("Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"), ("qwen2_5_vl", "qwen2_5_vl"),
                                         ("Qwen2-VL-2B-Instruct", "qwen2_vl"), ("llava-1.6", None)])
def test_family_is_guessed_from_the_model_name(name, family):
    """Model names map to families: qwen3 → qwen3_vl, qwen2.5/qwen2_5 → qwen2_5_vl, qwen2 → qwen2_vl."""
    assert guess_family(name) == family


@pytest.mark.parametrize("low_res", [False, True])
def test_torch_free_sizing_matches_the_engine(low_res):
    """The remote planner gives the local engine's sizes (transformers' rule) for Qwen2.5-VL and Qwen3-VL."""
    from vlassist.engine.sizing import plan_size as engine_plan

    for size in SIZES:
        for budget in (16, 256, 1280):
            assert plan_size(size, "qwen2_5_vl", budget, low_res) == engine_plan(size, 28, budget, 3136, low_res)
            assert plan_size(size, "qwen3_vl", budget, low_res) == engine_plan(size, 32, budget, 65536, low_res)
