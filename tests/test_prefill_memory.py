"""Prefill after a reused prefix uses memory like a fresh prefill: no dense (new × all tokens) mask."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from vlassist.engine import attention
from vlassist.engine.decode import cache_layers, new_cache, prefill

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from vlassist.config import load_settings
from vlassist.engine import load_engine
from vlassist.engine.decode import cache_layers, new_cache, prefill

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

model = load_engine(load_settings({"VLASSIST_MODEL_DIR": sys.argv[2], "VLASSIST_DEVICE": "cpu"})).model
length, reused, peaks = int(sys.argv[3]), 100, {}
ids = torch.randint(10, 400, (1, length), generator=torch.Generator().manual_seed(0))
pos = torch.arange(length).view(1, 1, length).expand(4, 1, length)
with torch.inference_mode():
    prefill(model, ids[:, :64], pos[:, :, :64], new_cache(model))  # first-call allocations out of the way
    for mode in ("fresh", "cached"):
        if mode == "cached":
            first = new_cache(model)
            prefill(model, ids[:, :reused], pos[:, :, :reused], first)
            cache, start = new_cache(model, cache_layers(first, reused), reused), reused
        else:
            cache, start = new_cache(model), 0
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident size (VmHWM) to the current one
        prefill(model, ids[:, start:], pos[:, :, start:], cache)
        peaks[mode] = (status("VmHWM") - before) / 1024
        del cache
print(json.dumps(peaks))
"""


def test_cached_prefix_prefill_peak_is_like_a_fresh_one(tiny_qwen25):
    """A 3,900-token prefill after a 100-token reused prefix peaks at ≤ 1.5× the fresh prefill's memory."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable here: the peak resident size cannot be reset")
    # Large blocks straight from mmap: freed memory leaves the resident size, so the peak is what was live.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(tiny_qwen25), "4000"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"prefill peak MiB: {peaks}")
    assert peaks["cached"] <= 1.5 * max(peaks["fresh"], 1.0)


def test_blockwise_prefill_matches_a_fresh_prefill(engine, monkeypatch):
    """Logits after a reused prefix, computed in many small query blocks, equal the fresh prefill's."""
    monkeypatch.setitem(attention.MASK_ELEMENTS, "cpu", 4096)  # force dozens of blocks
    model, length, reused = engine.model, 700, 123
    ids = torch.randint(10, 400, (1, length), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(length).view(1, 1, length).expand(4, 1, length)
    with torch.inference_mode():
        fresh = prefill(model, ids, pos, new_cache(model))
        first = new_cache(model)
        prefill(model, ids[:, :reused], pos[:, :, :reused], first)
        cached = prefill(model, ids[:, reused:], pos[:, :, reused:], new_cache(model, cache_layers(first, reused),
                                                                               reused))
    assert attention.block_size(length, torch.device("cpu")) < length - reused
    torch.testing.assert_close(cached, fresh, rtol=1e-4, atol=1e-4)


def test_text_model_uses_the_blockwise_attention(engine25):
    """An SDPA-loaded engine's text model runs the blockwise attention; the vision tower is left alone."""
    config = engine25.model.config
    assert config.get_text_config()._attn_implementation == attention.NAME
    assert config.vision_config._attn_implementation != attention.NAME
