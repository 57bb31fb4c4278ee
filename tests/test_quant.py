"""Quantized weights (AWQ, FP8 blocks, compressed-tensors W4A16, int8/int4 on load) against float32 references.

Each format's tiny checkpoint is written by scripts/make_tiny_model.py from the same random weights. Its reference
is a plain float32 checkpoint holding the same quantized tensors dequantized by code that is not the engine's:
AutoAWQ's documented nibble order (element by element), compressed-tensors' own `unpack_from_int32`, an FP8 tile
expansion by Kronecker product, and for on-load formats the integers the engine kept on disk. The reference is
loaded by the stock (unquantized) loader, so the engine's quantized layers, kernels and loading are what differ.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import _make_tiny_model, image_bytes
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlassist.config import load_settings
from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine import load_engine
from vlassist.engine.quant import awq, onload, w4a16
from vlassist.errors import ConfigError
from vlassist.images import load_image

FORCED = GenerationOptions(max_new_tokens=24, min_new_tokens=24, max_image_tokens=64)
# Every format's checkpoint and the family it is tested on (FP8 on Qwen3-VL, as Qwen ships FP8 for Qwen3-VL).
CHECKPOINT_FORMATS = {"awq": "qwen2_5_vl", "w4a16": "qwen2_5_vl", "fp8": "qwen3_vl"}
ON_LOAD = ("int8", "int4")
ALL = (*CHECKPOINT_FORMATS, *ON_LOAD)
# AutoAWQ's packing order, as documented in casper-hansen/AutoAWQ awq/utils/packing_utils.py (AWQ_ORDER): the nibble
# at bits 4k..4k+3 of a word holds column AWQ_ORDER[k] of that word's eight columns.
AUTOAWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _settings(folder: Path, cache: Path, **extra):
    env = {"VLASSIST_MODEL_DIR": str(folder), "VLASSIST_DEVICE": "cpu", "VLASSIST_CACHE_DIR": str(cache),
           "VLASSIST_STREAM_TIMEOUT_S": "60", **extra}
    return load_settings(env)


def _awq_reference_ints(packed: torch.Tensor) -> torch.Tensor:
    """Unpack AWQ words one nibble at a time with AutoAWQ's documented order (no engine code)."""
    rows = []
    for row in packed.tolist():
        values = [0] * (8 * len(row))
        for word_index, word in enumerate(row):
            word &= 0xFFFFFFFF
            for slot in range(8):
                values[8 * word_index + AUTOAWQ_ORDER[slot]] = (word >> (4 * slot)) & 0xF
        rows.append(values)
    return torch.tensor(rows, dtype=torch.float32)


def _dequantized(fmt: str, parts: dict[str, torch.Tensor], group: int) -> torch.Tensor:
    """One quantized linear's tensors → its float32 (out, in) weight, by reference code."""
    if fmt == "awq":
        q = _awq_reference_ints(parts["qweight"])  # (in, out)
        z = _awq_reference_ints(parts["qzeros"]).repeat_interleave(group, 0)
        s = parts["scales"].float().repeat_interleave(group, 0)
        return ((q - z) * s).t().contiguous()
    if fmt == "w4a16":
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

        shape = torch.Size(parts["weight_shape"].tolist())
        q = unpack_from_int32(parts["weight_packed"], 4, shape).float()  # signed values
        return q * parts["weight_scale"].float().repeat_interleave(group, 1)
    weight, scale = parts["weight"].float(), parts["weight_scale_inv"].float()  # fp8
    return weight * torch.kron(scale, torch.ones(group, group))


def _reference_folder(quantized: Path, fmt: str, out: Path) -> Path:
    """A float32 checkpoint holding `quantized`'s weights dequantized by reference code, under transformers 5 names."""
    shutil.copytree(quantized, out)
    config = json.loads((out / "config.json").read_text())
    quant = config.pop("quantization_config")
    group = quant.get("group_size") or (quant.get("weight_block_size") or [None])[0] or \
        quant["config_groups"]["group_0"]["weights"]["group_size"]
    (out / "config.json").write_text(json.dumps(config))
    tensors, layers = {}, {}
    for name, tensor in load_file(str(quantized / "model.safetensors")).items():
        name = name if name.startswith("model.language_model.") or name.startswith("model.visual.") else (
            name.replace("model.", "model.language_model.", 1) if name.startswith("model.")
            else name.replace("visual.", "model.visual.", 1) if name.startswith("visual.") else name)
        module, _, part = name.rpartition(".")
        if ".layers." in module and module.endswith("_proj") and "visual" not in module and part != "bias":
            layers.setdefault(module, {})[part] = tensor
        else:
            tensors[name] = tensor.float() if tensor.is_floating_point() else tensor
    for module, parts in layers.items():
        tensors[f"{module}.weight"] = _dequantized(fmt, parts, group)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _on_load_reference(plain: Path, engine, out: Path) -> Path:
    """A float32 checkpoint holding the integers the engine kept on disk, dequantized here."""
    shutil.copytree(plain, out)
    kept = load_file(engine.info.quant.rsplit(" ", 1)[-1])
    tensors = load_file(str(plain / "model.safetensors"))
    for layer in [k[:-2] for k in kept if k.endswith(".q")]:
        name = layer if f"{layer}.weight" in tensors else layer.replace("model.language_model.", "model.", 1)
        original = tensors[f"{name}.weight"]
        if f"{layer}.zeros" not in kept:  # int8: W = q · s per row
            weight = kept[f"{layer}.q"].float() * kept[f"{layer}.scales"][:, None]
            step = kept[f"{layer}.scales"][:, None]
        else:  # int4: two values a byte (high nibble first), W = q · s + (zero - 8 s) per group
            packed = kept[f"{layer}.q"]
            q = torch.stack([packed >> 4, packed & 0xF], -1).reshape(original.shape).float()
            group = original.shape[1] // kept[f"{layer}.scales"].shape[1]
            s = kept[f"{layer}.scales"].repeat_interleave(group, 1)
            weight = (q - 8) * s + kept[f"{layer}.zeros"].repeat_interleave(group, 1)
            step = s
        # The kept integers really are the original weights rounded: off by at most half a step.
        assert ((weight - original).abs() <= step / 2 + 1e-6).all(), name
        tensors[f"{name}.weight"] = weight
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def tiny_plain(tmp_path_factory) -> dict[str, Path]:
    """Plain tiny checkpoints of both families (the source of the on-load formats)."""
    root = tmp_path_factory.mktemp("plain")
    return {family: _make_tiny_model().build(root / family, family) for family in ("qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="module")
def pair(request, tmp_path_factory, tiny_plain):
    """(engine on the quantized checkpoint, engine on its float32 reference) for one format."""
    fmt = request.param
    root = tmp_path_factory.mktemp(fmt)
    if fmt in ON_LOAD:
        quantized = load_engine(_settings(tiny_plain["qwen2_5_vl"], root / "cache", VLASSIST_QUANT=fmt))
        reference = _on_load_reference(tiny_plain["qwen2_5_vl"], quantized, root / "reference")
    else:
        folder = _make_tiny_model().build(root / "quantized", CHECKPOINT_FORMATS[fmt], weights=fmt)
        quantized = load_engine(_settings(folder, root / "cache"))
        reference = _reference_folder(folder, fmt, root / "reference")
    return quantized, load_engine(_settings(reference, root / "cache"))


def _image(size=(96, 64), color=(200, 30, 30)):
    return load_image(image_bytes(size, color))


@pytest.mark.parametrize("pair", ALL, indirect=True)
def test_logits_match_the_dequantized_float32_reference(pair):
    """Prompt logits agree with the reference to 1e-4 of their largest magnitude.

    Both models compute in float32 with the same dequantized weight values; they differ only in how the product
    is formed (the int4 kernel applies scale and zero inside its tiles, int8 scales after the product, FP8 on the
    CPU is widened into a plain Linear, the reference multiplies a dense matrix), so only float32 rounding order
    differs: 0 to ~1e-6 of the largest logit here. 1e-4 leaves room for other CPUs' kernels (vector width and
    thread count change the summation order) yet catches any wrong nibble, group or scale: quantizing at all
    moves this model's logits by ~3 % of the largest, a misread tensor by at least as much.
    """
    quantized, reference = pair
    assert quantized.info.weights_format != reference.info.weights_format == "fp32"
    inputs, _ = quantized.encode([Turn("user", "what is in the picture?", [_image()])], FORCED)
    with torch.no_grad():
        got = quantized.model(**inputs).logits
        want = reference.model(**inputs).logits
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-4 * scale
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("pair", ALL, indirect=True)
def test_greedy_answers_first_and_follow_up_equal_the_reference(pair):
    """The first answer and a follow-up reusing the first turn's KV cache are the reference's, token for token."""
    quantized, reference = pair
    first = [Turn("user", "look at this", [_image()])]
    text = quantized.stream(first, FORCED).consume()
    assert text == reference.stream(first, FORCED).consume()
    turns = first + [Turn("assistant", text), Turn("user", "and now?")]
    reply = quantized.stream(turns, FORCED)
    assert reply.consume() == reference.stream(turns, FORCED).consume()
    assert reply.stats.reused_tokens > 0


@pytest.mark.parametrize("pair", ALL, indirect=True)
def test_batched_decode_and_json_schema_work_on_the_format(pair):
    """`vlassist batch`'s batched decode gives each row its single answer; a schema answer is valid JSON."""
    quantized, _ = pair
    conversations = [[Turn("user", "what is this?", [_image()])],
                     [Turn("user", "describe the colours at length", [_image((120, 90), (0, 0, 200))])]]
    batched = [text for text, _ in quantized.answer_batch(conversations, FORCED)]
    quantized.prefixes.clear()
    assert batched == [quantized.stream(turns, FORCED).consume() for turns in conversations]
    schema = json.dumps({"type": "object", "properties": {"name": {"type": "string"}, "total": {"type": "number"}},
                         "required": ["name", "total"], "additionalProperties": False})
    options = GenerationOptions(max_new_tokens=200, json_schema=schema, max_image_tokens=64)
    answer = json.loads(quantized.stream(conversations[0], options).consume())
    assert set(answer) == {"name", "total"}


@pytest.mark.parametrize("fmt", ["awq", "int4"])
def test_static_decode_buffers_give_the_eager_answer(fmt, tmp_path, tiny_plain):
    """The preallocated-buffer decode (the CUDA graph path without the graph) answers as the eager path does."""
    if fmt == "awq":
        folder, extra = _make_tiny_model().build(tmp_path / "awq", "qwen2_5_vl", weights="awq"), {}
    else:
        folder, extra = tiny_plain["qwen2_5_vl"], {"VLASSIST_QUANT": "int4"}
    engine = load_engine(_settings(folder, tmp_path / "cache", VLASSIST_COMPILE="static",
                                   VLASSIST_DECODE_CONTEXT="256", **extra))
    assert engine.info.decode == "static"
    turns = [Turn("user", "what is this", [_image()])]
    eager = GenerationOptions(max_new_tokens=16, min_new_tokens=16, max_image_tokens=64, use_cache=False)
    static = GenerationOptions(max_new_tokens=16, min_new_tokens=16, max_image_tokens=64)
    assert engine.stream(turns, static).consume() == engine.stream(turns, eager).consume()


def test_awq_unpacking_agrees_with_autoawq_order_on_any_word():
    """The engine's AWQ unpacking equals AutoAWQ's documented order on random words, sign bit included."""
    words = torch.randint(-2**31, 2**31 - 1, (5, 6), dtype=torch.int64).to(torch.int32)
    assert torch.equal(awq.unpack(words).float(), _awq_reference_ints(words))


def test_w4a16_unpacking_agrees_with_compressed_tensors():
    """The engine's W4A16 unpacking equals compressed-tensors' unpack_from_int32 (minus its +8 offset)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    words = torch.randint(-2**31, 2**31 - 1, (4, 5), dtype=torch.int64).to(torch.int32)
    theirs = unpack_from_int32(words, 4, torch.Size([4, 40]))
    assert torch.equal(w4a16.unpack(words).to(torch.int16) - 8, theirs.to(torch.int16))


def test_engine_info_names_the_weights_format(pair_info_engines):
    """`weights_format` is fp32 for a plain checkpoint on the CPU and the format's name for quantized ones."""
    assert pair_info_engines == {"plain": "fp32", "awq": "awq"}


@pytest.fixture(scope="module")
def pair_info_engines(tmp_path_factory, tiny_plain):
    """weights_format of a plain and an AWQ engine."""
    root = tmp_path_factory.mktemp("info")
    folder = _make_tiny_model().build(root / "awq", "qwen2_5_vl", weights="awq")
    return {"plain": load_engine(_settings(tiny_plain["qwen2_5_vl"], root / "c")).info.weights_format,
            "awq": load_engine(_settings(folder, root / "c")).info.weights_format}


def test_restart_reads_kept_int4_weights_instead_of_quantizing(tiny_plain, tmp_path, monkeypatch):
    """A second start with the same cache folder loads the kept int4 weights; nothing is quantized again."""
    first = load_engine(_settings(tiny_plain["qwen2_5_vl"], tmp_path, VLASSIST_QUANT="int4"))
    assert "written to" in first.info.quant
    answer = first.stream([Turn("user", "hi")], FORCED).consume()

    def refuse(*args):
        raise AssertionError("quantized again")

    monkeypatch.setattr(onload, "int4_quantize", refuse)
    second = load_engine(_settings(tiny_plain["qwen2_5_vl"], tmp_path, VLASSIST_QUANT="int4"))
    assert "read from" in second.info.quant
    assert second.stream([Turn("user", "hi")], FORCED).consume() == answer


def test_a_damaged_kept_file_is_quantized_again(tiny_plain, tmp_path):
    """A truncated kept-weights file is ignored: the model quantizes again, rewrites it and answers the same."""
    first = load_engine(_settings(tiny_plain["qwen2_5_vl"], tmp_path, VLASSIST_QUANT="int8"))
    answer = first.stream([Turn("user", "hi")], FORCED).consume()
    kept = Path(first.info.quant.rsplit(" ", 1)[-1])
    kept.write_bytes(kept.read_bytes()[:100])
    second = load_engine(_settings(tiny_plain["qwen2_5_vl"], tmp_path, VLASSIST_QUANT="int8"))
    assert "written to" in second.info.quant
    assert second.stream([Turn("user", "hi")], FORCED).consume() == answer


@pytest.fixture(scope="module")
def awq_folder(tmp_path_factory) -> Path:
    """A tiny AWQ checkpoint to damage copies of."""
    return _make_tiny_model().build(tmp_path_factory.mktemp("awq") / "awq", "qwen2_5_vl", weights="awq")


def _damaged(source: Path, out: Path, drop: str | None = None, config: dict | None = None) -> Path:
    shutil.copytree(source, out)
    if drop is not None:
        tensors = load_file(str(out / "model.safetensors"))
        del tensors[drop]
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        data = json.loads((out / "config.json").read_text())
        data["quantization_config"].update(config)
        (out / "config.json").write_text(json.dumps(data))
    return out


def _load_error(folder: Path, cache: Path, **extra) -> str:
    with pytest.raises(ConfigError) as err:
        load_engine(_settings(folder, cache, **extra))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_awq_checkpoint_missing_scales_is_refused_naming_file_and_tensor(awq_folder, tmp_path):
    """A layer without its scales is refused in one line naming the weight file, the layer and `scales`."""
    folder = _damaged(awq_folder, tmp_path / "m", drop="model.layers.1.mlp.up_proj.scales")
    message = _load_error(folder, tmp_path / "c")
    assert "model.safetensors" in message and "layers.1.mlp.up_proj" in message and "scales" in message


def test_awq_wrong_group_size_is_refused(awq_folder, tmp_path):
    """A config whose group_size does not match the stored scales is refused naming the file and group size."""
    folder = _damaged(awq_folder, tmp_path / "g", config={"group_size": 64})
    message = _load_error(folder, tmp_path / "c")
    assert "model.safetensors" in message and "group_size 64" in message


def test_truncated_weight_file_is_refused_naming_it(awq_folder, tmp_path):
    """A weight file cut short (an interrupted copy) is refused in one line naming the file."""
    folder = _damaged(awq_folder, tmp_path / "t")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:1000])
    message = _load_error(folder, tmp_path / "c")
    assert "model.safetensors" in message and "not a readable safetensors file" in message


def test_an_extra_tensor_on_a_quantized_layer_is_refused(awq_folder, tmp_path):
    """A tensor the format does not have (e.g. GPTQ's act-order g_idx) on a quantized layer is refused, not ignored."""
    folder = _damaged(awq_folder, tmp_path / "x")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.layers.0.mlp.down_proj.g_idx"] = torch.zeros(128, dtype=torch.int32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    message = _load_error(folder, tmp_path / "c")
    assert "model.safetensors" in message and "down_proj.g_idx" in message


def test_batch_quant_option_quantizes_the_model(tiny_plain, tmp_path, monkeypatch, png_file):
    """`vlassist batch --quant int8` answers every image with the int8 model (its weights kept in the cache); a
    4-token answer may end at the length limit (status truncated, exit 1), never fail."""
    from vlassist.__main__ import main

    monkeypatch.setenv("VLASSIST_DEVICE", "cpu")
    monkeypatch.setenv("VLASSIST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VLASSIST_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "rows.jsonl"
    assert main(["batch", str(png_file), "--out", str(out), "--prompt", "what is it", "--max-new-tokens", "4",
                 "--model", str(tiny_plain["qwen2_5_vl"]), "--quant", "int8"]) in (0, 1)  # 1: cut at 4 tokens
    assert [json.loads(line)["status"] for line in out.read_text().splitlines()] in (["ok"], ["truncated"])
    assert list((tmp_path / "cache" / "quantized").glob("*-int8-*.safetensors"))


def test_fp8_missing_scales_is_refused(tmp_path):
    """An FP8 weight without weight_scale_inv is refused naming the file and the missing tensor."""
    folder = _make_tiny_model().build(tmp_path / "fp8", "qwen3_vl", weights="fp8")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors[next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight_scale_inv"))]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    message = _load_error(folder, tmp_path / "c")
    assert "model.safetensors" in message and "weight_scale_inv" in message and "q_proj" in message


def test_unsupported_quantization_and_double_quantization_are_refused(awq_folder, tmp_path):
    """A GPTQ config is refused by name; int8 on load of an AWQ checkpoint is refused instead of ignored."""
    gptq = _damaged(awq_folder, tmp_path / "q", config={"quant_method": "gptq"})
    assert "'gptq' is not supported" in _load_error(gptq, tmp_path / "c")
    assert "already quantized (awq)" in _load_error(awq_folder, tmp_path / "c", VLASSIST_QUANT="int8")


def test_fp8_on_a_gpu_without_fp8_is_refused_naming_it(monkeypatch):
    """On a CUDA GPU older than compute capability 8.9 the FP8 format refuses in one line naming the GPU."""
    from vlassist.engine.quant import fp8

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA GeForce RTX 3090")
    with pytest.raises(ConfigError, match=r"RTX 3090 is 8\.6") as err:
        fp8.Fp8Blocks((128, 128)).check_device("cuda")
    assert "\n" not in str(err.value)


def test_quant_setting_is_validated():
    """VLASSIST_QUANT accepts none, int8 and int4 and refuses anything else by name."""
    assert load_settings({"VLASSIST_QUANT": "INT4"}).quant == "int4"
    assert load_settings({}).quant == "none"
    with pytest.raises(ConfigError, match="VLASSIST_QUANT"):
        load_settings({"VLASSIST_QUANT": "nf4"})


def test_tiny_awq_checkpoint_uses_transformers_4_names(awq_folder):
    """The AWQ tiny checkpoint is named as Qwen's AWQ uploads are, so the loader's renaming is exercised."""
    with safe_open(str(awq_folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.qweight" in keys and any(k.startswith("visual.") for k in keys)


def test_cli_quant_option_loads_int8_and_info_says_so(tiny_plain, tmp_path, monkeypatch, capsys):
    """`vlassist info --quant int8` loads the 16-bit checkpoint as int8 and prints the weights line."""
    from vlassist.__main__ import main

    monkeypatch.setenv("VLASSIST_DEVICE", "cpu")
    monkeypatch.setenv("VLASSIST_CACHE_DIR", str(tmp_path))
    assert main(["info", "--model", str(tiny_plain["qwen2_5_vl"]), "--quant", "int8"]) == 0
    assert "weights:    int8 — int8: quantized at load" in capsys.readouterr().out


def test_quant_with_a_remote_backend_is_refused():
    """Quantization asked of a remote server's model is refused rather than silently ignored."""
    from vlassist.backends import load_answerer

    settings = load_settings({"VLASSIST_BACKEND_URL": "http://127.0.0.1:9", "VLASSIST_QUANT": "int4"})
    with pytest.raises(ConfigError, match="applies to a local model"):
        load_answerer(settings)


def test_switching_the_same_checkpoint_to_int4_reloads_it_quantized(tiny_plain, tmp_path):
    """The page's Weights choice: switching the model in use to int4 loads the same folder quantized."""
    from vlassist.service.models import ModelSlot, choice_of

    slot = ModelSlot(_settings(tiny_plain["qwen2_5_vl"], tmp_path))
    try:
        assert slot.start_load() and slot.wait(120) and slot.current is not None
        current = choice_of(slot.current)
        assert current.quant == "none"
        slot.switch(replace(current, quant="int4"))
        assert slot.wait(120) and slot.current.info.weights_format == "int4"
        assert choice_of(slot.current).quant == "int4"
    finally:
        slot.close()


def test_lora_adapter_on_an_awq_checkpoint_answers_as_peft_merged_into_the_dequantized_weights(tmp_path, tiny_plain):
    """A LoRA adapter on a tiny AWQ checkpoint: its quantized text layers take the low-rank side path (the float
    vision layers are merged), and the model answers greedily as the float32 reference does, where the reference
    is the AWQ weights dequantized by AutoAWQ's order with the adapter merged by peft; logits within the same 1e-4
    of the largest magnitude as the formats above (only float32 summation order differs)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlassist.engine.adapters import LoraSidePath
    from vlassist.engine.quant.linear import Int4Linear

    maker = _make_tiny_model()
    folder = maker.build(tmp_path / "awq", "qwen2_5_vl", weights="awq")
    # Same seed, same shapes: an adapter written for the plain checkpoint fits the AWQ one.
    adapter = maker.build_adapter(tiny_plain["qwen2_5_vl"], tmp_path / "adapter", seed=7)
    # The same tensors under today's module names, which peft needs to find the modules.
    for_peft = maker.build_adapter(tiny_plain["qwen2_5_vl"], tmp_path / "for_peft", seed=7, legacy_names=False)
    engine = load_engine(_settings(folder, tmp_path / "cache", VLASSIST_ADAPTER=str(adapter)))
    wrapped = [m for m in engine.model.modules() if isinstance(m, LoraSidePath)]
    assert wrapped and all(isinstance(m.base, Int4Linear) for m in wrapped)
    assert "side path" in engine.info.adapter_detail and "merged" in engine.info.adapter_detail
    assert engine.info.weights_format == "awq"
    reference_folder = _reference_folder(folder, "awq", tmp_path / "reference")
    base = AutoModelForImageTextToText.from_pretrained(reference_folder, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(for_peft)).merge_and_unload().eval()
    turns = [Turn("user", "what is in the picture?", [_image()])]
    inputs, _ = engine.encode(turns, FORCED)
    with torch.no_grad():
        got, want = engine.model(**inputs).logits, reference(**inputs).logits
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    tokenizer = engine.processor.tokenizer
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=FORCED.max_new_tokens, min_new_tokens=FORCED.min_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
    want_text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert engine.stream(turns, FORCED).consume() == want_text
    engine.close()
