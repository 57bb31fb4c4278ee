"""Fit before load (vlassist/fit.py): estimates from the real Qwen configs, refusals naming what would fit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlassist.config import load_settings
from vlassist.fit import FitError, GiB, architecture, assess, check_fit, checkpoint_format, estimate

CONFIGS = Path(__file__).parent / "data" / "checkpoint_configs"  # config.json of the published checkpoints
# Parameter counts the published checkpoints' safetensors metadata gives.
PUBLISHED_PARAMETERS = {"Qwen2.5-VL-7B-Instruct": 8_292_166_656, "Qwen2.5-VL-32B-Instruct": 33_452_718_336,
                        "Qwen3-VL-8B-Instruct": 8_767_123_696}


def real(name: str, tmp_path: Path) -> Path:
    """A folder holding the published config.json of `name` (nothing else)."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(CONFIGS / f"{name}.json", folder / "config.json")
    return folder


def checkpoint_without_weights(name: str, tmp_path: Path, tiny: Path) -> Path:
    """A complete-looking checkpoint folder: the published config, a tiny model's other files, no real weights."""
    folder = real(name, tmp_path)
    for file in tiny.iterdir():
        if file.name not in ("config.json", "model.safetensors"):
            shutil.copy(file, folder / file.name)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_parameter_count_from_config_equals_the_published_checkpoint(name, tmp_path):
    """Counting from config.json gives exactly the parameters of the published 7B, 32B and Qwen3-VL-8B."""
    assert architecture(real(name, tmp_path)).parameters == PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("fixture", ["tiny_qwen25", "tiny_qwen3"])
def test_parameter_count_equals_the_loaded_model(request, fixture):
    """On the tiny checkpoints the count equals the real transformers model's parameters, one by one."""
    from transformers import AutoModelForImageTextToText

    folder = request.getfixturevalue(fixture)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert architecture(folder).parameters == sum(p.numel() for p in model.parameters())


def test_real_checkpoint_estimates(tmp_path):
    """Weights as shipped: 7B bf16 16.6 GB, 32B bf16 66.9 GB, 32B AWQ ~20.7 GB, Qwen3-VL-8B FP8 within 2 % of its
    10.7 GB download; K/V of the 32B 262,144 bytes a token; 32B AWQ with 8k context under 23 GiB."""
    seven, big = architecture(real("Qwen2.5-VL-7B-Instruct", tmp_path)), architecture(
        real("Qwen2.5-VL-32B-Instruct", tmp_path))
    awq, fp8 = architecture(real("Qwen2.5-VL-32B-Instruct-AWQ", tmp_path)), architecture(
        real("Qwen3-VL-8B-Instruct-FP8", tmp_path))
    assert (seven.checkpoint_format, big.checkpoint_format, awq.checkpoint_format, fp8.checkpoint_format) == (
        "bf16", "bf16", "awq", "fp8")
    assert round(estimate(seven).weights / 1e9, 1) == 16.6
    assert round(estimate(big).weights / 1e9, 1) == 66.9
    assert 20.0e9 < estimate(awq).weights < 21.5e9
    assert abs(estimate(fp8).weights / 10.7e9 - 1) < 0.02
    assert big.kv_bytes_per_token == 64 * 8 * 128 * 2 * 2 == 262_144
    assert estimate(awq, context=8192).total < 23 * GiB


def test_32b_bf16_is_refused_naming_its_awq_checkpoint(tmp_path):
    """32B in bf16 over a 24 GiB budget: one line with its need and that its AWQ checkpoint fits with 8k context."""
    with pytest.raises(FitError) as exc:
        check_fit(real("Qwen2.5-VL-32B-Instruct", tmp_path), None, 8192, 1280)
    message = str(exc.value)
    assert "\n" not in message
    assert "Qwen2.5-VL-32B-Instruct in bf16 needs ~64.8 GiB" in message and "24 GiB budget" in message
    assert "its AWQ checkpoint needs ~22 GiB with 8192 tokens of context" in message


def test_shorter_context_is_offered_when_only_the_kv_does_not_fit(tmp_path):
    """7B bf16 under a 16 GiB budget: the weights fit, so the refusal names a context length that fits."""
    folder = real("Qwen2.5-VL-7B-Instruct", tmp_path)
    with pytest.raises(FitError, match=r"in bf16 it fits with (\d+) tokens of context") as exc:
        check_fit(folder, 16, 8192, 1280)
    tokens = int(exc.value.args[0].split("it fits with ")[1].split()[0])
    assert check_fit(folder, 16, tokens, 1280).total <= 16 * GiB
    assert check_fit(folder, None, 8192, 1280).total < 24 * GiB  # and it fits a 24 GiB card as it is


def test_on_load_quantization_is_estimated_for_16_bit_checkpoints_only(tmp_path):
    """int4 on load shrinks a bf16 checkpoint's estimate; an AWQ checkpoint stays AWQ whatever is asked."""
    seven = real("Qwen2.5-VL-7B-Instruct", tmp_path)
    assert assess(seven, None, 8192, 1280, "int4").weights_format == "int4"
    assert assess(seven, None, 8192, 1280, "int4").estimate.total < assess(seven, None, 8192, 1280).estimate.total
    assert assess(real("Qwen2.5-VL-7B-Instruct-AWQ", tmp_path), None, 8192, 1280, "int4").weights_format == "awq"


@pytest.mark.parametrize("quant,expected", [
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True}, "awq"),
    ({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}, "fp8"),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
        "weights": {"num_bits": 4, "type": "int", "group_size": 128, "symmetric": True}, "targets": ["Linear"]}}},
     "w4a16"),
    (None, "bf16"),
])
def test_format_is_read_from_quantization_config(quant, expected):
    """config.json's quantization_config names the format: AWQ, FP8, compressed-tensors W4A16, else the dtype."""
    config = {"torch_dtype": "bfloat16"} | ({"quantization_config": quant} if quant else {})
    assert checkpoint_format(config) == expected


def test_unsupported_quantization_is_named():
    """A W8A8 compressed-tensors or GPTQ checkpoint is refused with the reason, not estimated as bf16."""
    w8a8 = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
        "weights": {"num_bits": 8, "type": "int"}, "input_activations": {"num_bits": 8}}}}
    with pytest.raises(FitError, match="other than W4A16"):
        checkpoint_format({"quantization_config": w8a8})
    with pytest.raises(FitError, match="'gptq' is not supported"):
        checkpoint_format({"quantization_config": {"quant_method": "gptq", "bits": 4}})


def test_load_is_refused_before_torch_is_imported(tmp_path, tiny_qwen25):
    """Loading a 32B bf16 checkpoint under the default budget fails at once, in a process that never imported torch."""
    folder = checkpoint_without_weights("Qwen2.5-VL-32B-Instruct", tmp_path, tiny_qwen25)
    code = ("import sys\nfrom vlassist.backends import load_answerer\nfrom vlassist.config import load_settings\n"
            "try:\n    load_answerer(load_settings())\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    env = {"VLASSIST_MODEL_DIR": str(folder), "VLASSIST_DEVICE": "auto", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent).stdout
    assert "FitError Qwen2.5-VL-32B-Instruct in bf16 needs" in out and "its AWQ checkpoint" in out
    assert "torch imported: False" in out


def test_cpu_device_is_not_held_to_the_gpu_budget(tiny_qwen25):
    """VLASSIST_DEVICE=cpu skips the GPU budget; the tiny checkpoint fits any budget under auto."""
    from vlassist.backends import check_local_fit

    check_local_fit(load_settings({"VLASSIST_MODEL_DIR": str(tiny_qwen25), "VLASSIST_DEVICE": "auto",
                                   "VLASSIST_GPU_MEMORY_GB": "1"}))


def test_listing_carries_format_size_and_fit(tmp_path, tiny_qwen25):
    """The models folder listing gives each checkpoint its format, size on disk and whether it fits, with why not."""
    from vlassist.service.models import list_checkpoints

    root = tmp_path / "models"
    root.mkdir()
    (root / "tiny").symlink_to(tiny_qwen25, target_is_directory=True)
    checkpoint_without_weights("Qwen2.5-VL-32B-Instruct", root, tiny_qwen25)
    settings = load_settings({"VLASSIST_MODEL_DIR": str(root / "tiny"), "VLASSIST_DEVICE": "auto"})
    found = {c.name: c.fit for c in list_checkpoints(root, settings)}
    assert found["tiny"].fits and found["tiny"].weights_format == "fp32"
    assert found["tiny"].disk_bytes == (tiny_qwen25 / "model.safetensors").stat().st_size
    big = found["Qwen2.5-VL-32B-Instruct"]
    assert not big.fits and "needs ~64.8 GiB" in big.reason and big.summary().startswith("bf16 · 0.0 GiB on disk")


def test_readme_card_table_shows_what_fit_computes(tmp_path):
    """README's "Which model for my card" rows carry fit.py's own weights, K/V and total for each checkpoint."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Which model for my card", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| Qwen")]
    assert len(rows) == 4
    for row in rows:
        name, _fmt, weights, kv, total, fetch = [cell.strip() for cell in row.strip("|").split("|")]
        arch = architecture(real(name, tmp_path))
        need = estimate(arch)
        assert weights == f"{need.weights / GiB:.1f} GiB"
        assert kv == f"{arch.kv_bytes_per_token * 1024 / 2**20:.0f} MiB"
        assert total.startswith(f"~{need.total / GiB:.1f} GiB")
        assert fetch == f"`.venv/bin/python scripts/fetch_model.py Qwen/{name}`"


def test_parameter_count_of_a_qwen2_vl_model(tmp_path):
    """Qwen2-VL names its tower's width embed_dim (hidden_size is the output's): the count still equals the model's."""
    import warnings

    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Qwen2VLForConditionalGeneration(config)
    config.save_pretrained(tmp_path)
    assert architecture(tmp_path).parameters == sum(p.numel() for p in model.parameters())
