"""LoRA adapters: merged answers equal peft's merge; the side path equals the merge; bad adapters are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import _make_tiny_model, image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.images import load_image

FAMILIES = {"qwen2_5_vl": "tiny_qwen25", "qwen3_vl": "tiny_qwen3"}
ANSWER = GenerationOptions(max_new_tokens=12, min_new_tokens=12)


@pytest.fixture(scope="module", params=list(FAMILIES))
def adapted(request, tmp_path_factory):
    """(base folder, adapter with legacy names, the same adapter with today's names) for each family."""
    base = request.getfixturevalue(FAMILIES[request.param])
    maker = _make_tiny_model()
    root = tmp_path_factory.mktemp("adapter")
    legacy = maker.build_adapter(base, root / "legacy", seed=7, legacy_names=True)
    current = maker.build_adapter(base, root / "current", seed=7, legacy_names=False)
    return base, legacy, current


def _engine(base, adapter, mode="auto"):
    from vlassist.config import load_settings
    from vlassist.engine import load_engine

    return load_engine(load_settings({"VLASSIST_MODEL_DIR": str(base), "VLASSIST_DEVICE": "cpu",
                                      "VLASSIST_ADAPTER": str(adapter), "VLASSIST_ADAPTER_MODE": mode,
                                      "VLASSIST_STREAM_TIMEOUT_S": "60"}))


def _peft_reference(base, adapter):
    """The base in float32 with the adapter merged by peft (an implementation vlassist does not share)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


def _turns():
    return [Turn("user", "Read all text in the image.", [load_image(image_bytes((96, 64), (20, 120, 220)))])]


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits.float()


def _reference_answer(engine, model, turns) -> str:
    inputs, _ = engine.encode(turns, ANSWER)
    tokenizer = engine.processor.tokenizer
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=ANSWER.max_new_tokens, min_new_tokens=ANSWER.min_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_merged_adapter_matches_peft_reference(adapted):
    """Legacy-named adapter merged at load: logits equal peft's merge (atol 1e-5, float32 rounding of one add per
    weight) and greedy answers, first and follow-up, are identical; the adapter really changes the model."""
    from vlassist.engine.loader import load_model

    base, legacy, current = adapted
    engine = _engine(base, legacy)
    reference = _peft_reference(base, current)
    assert "merged" in engine.info.adapter_detail and engine.info.adapter == str(legacy)
    inputs, _ = engine.encode(_turns(), ANSWER)
    ours, theirs = _logits(engine.model, inputs), _logits(reference, inputs)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    plain, _, _ = load_model(base, torch.float32, "cpu", [("sdpa", "")])
    assert (ours - _logits(plain, inputs)).abs().max() > 1e-3  # a no-op adapter would pass the check above
    turns = _turns()
    first = engine.stream(turns, ANSWER).consume()
    assert first == _reference_answer(engine, reference, turns)
    turns += [Turn("assistant", first), Turn("user", "And the title?")]
    assert engine.stream(turns, ANSWER).consume() == _reference_answer(engine, reference, turns)
    engine.close()


def test_side_path_answers_equal_merged_answers(adapted):
    """Every target kept as a low-rank side path (forced on a float base) answers as the merged adapter does."""
    from vlassist.engine.adapters import LoraSidePath

    base, legacy, _ = adapted
    merged, side = _engine(base, legacy), _engine(base, legacy, "side")
    wrapped = [m for m in side.model.modules() if isinstance(m, LoraSidePath)]
    assert wrapped and "side path" in side.info.adapter_detail
    assert any(name.startswith("model.visual.") and isinstance(m, LoraSidePath)
               for name, m in side.model.named_modules())
    inputs, _ = merged.encode(_turns(), ANSWER)
    torch.testing.assert_close(_logits(side.model, inputs), _logits(merged.model, inputs), atol=1e-4, rtol=1e-4)
    assert side.stream(_turns(), ANSWER).consume() == merged.stream(_turns(), ANSWER).consume()
    merged.close()
    side.close()


class _OpaqueLinear(torch.nn.Module):
    """A linear layer that is not an nn.Linear (as a quantized one is not): only forward(x) is known."""

    def __init__(self, linear: torch.nn.Linear, state_features: bool = True):
        super().__init__()
        self.inner = linear
        if state_features:
            self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("state_features", [True, False])
def test_side_path_wraps_any_linear_like_module(tmp_path, state_features):
    """On a module that is not an nn.Linear (stating its in/out features or not), auto mode adds the side path and
    its output equals a merged Linear."""
    from safetensors.torch import save_file

    from vlassist.engine.adapters import LoraSidePath, apply_adapter

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 24))
    opaque = torch.nn.Sequential(_OpaqueLinear(torch.nn.Linear(16, 24), state_features))
    opaque[0].inner.load_state_dict(plain[0].state_dict())
    a, b = torch.randn(3, 16), torch.randn(24, 3)
    save_file({"base_model.model.0.lora_A.weight": a, "base_model.model.0.lora_B.weight": b},
              str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 3, "lora_alpha": 6,
                                                              "target_modules": ["0"]}))
    x = torch.randn(5, 16)
    expected = plain[0](x) + x @ (2.0 * b @ a).T
    assert apply_adapter(opaque, tmp_path).side == 1 and isinstance(opaque[0], LoraSidePath)
    assert apply_adapter(plain, tmp_path).merged == 1
    torch.testing.assert_close(opaque(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)


def _one_line(exc) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_adapter_for_another_base_is_refused(tiny_qwen25, tiny_qwen3, tmp_path):
    """A Qwen3-VL adapter on a Qwen2.5-VL model is refused at load, naming the file and the unknown module."""
    from vlassist.engine.adapters import AdapterError

    adapter = _make_tiny_model().build_adapter(tiny_qwen3, tmp_path / "q3")
    with pytest.raises(AdapterError) as exc:
        _engine(tiny_qwen25, adapter)
    message = _one_line(exc)
    assert str(adapter / "adapter_model.safetensors") in message and "does not exist in this model" in message


def test_adapter_with_wrong_shapes_is_refused(tiny_qwen25, tmp_path):
    """A factor whose size differs from the model's layer is refused with both shapes named."""
    from safetensors.torch import load_file, save_file

    from vlassist.engine.adapters import AdapterError

    adapter = _make_tiny_model().build_adapter(tiny_qwen25, tmp_path / "a")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0], 80)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(AdapterError) as exc:
        _engine(tiny_qwen25, adapter)
    assert "64×80 in the adapter but 64×64 in the model" in _one_line(exc)


@pytest.mark.parametrize("damage,problem", [
    ("adapter_model.safetensors", "adapter_model.safetensors: missing"),
    ("adapter_config.json", "adapter_config.json: missing"),
    ("truncate", "adapter_model.safetensors: cannot be read"),
    ("dora", "use_dora is set"),
])
def test_damaged_adapter_folder_is_refused(tiny_qwen25, tmp_path, damage, problem):
    """A missing or unreadable file, or an adapter kind vlassist does not apply, is one line naming the file."""
    from vlassist.engine.adapters import AdapterError

    adapter = _make_tiny_model().build_adapter(tiny_qwen25, tmp_path / "a")
    if damage == "truncate":
        path = adapter / "adapter_model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "dora":
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    else:
        (adapter / damage).unlink()
    with pytest.raises(AdapterError) as exc:
        _engine(tiny_qwen25, adapter)
    message = _one_line(exc)
    assert problem in message and str(adapter) in message
    shutil.rmtree(adapter)


def test_opaque_module_of_another_width_is_refused(tmp_path):
    """A factor for 20 inputs on a module that takes 16 (and does not say so) is refused naming the module."""
    from safetensors.torch import save_file

    from vlassist.engine.adapters import AdapterError, apply_adapter

    model = torch.nn.Sequential(_OpaqueLinear(torch.nn.Linear(16, 24), state_features=False))
    save_file({"base_model.model.0.lora_A.weight": torch.randn(2, 20), "base_model.model.0.lora_B.weight":
               torch.randn(24, 2)}, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    with pytest.raises(AdapterError, match="does not take 20 inputs"):
        apply_adapter(model, tmp_path)


def test_fusing_leaves_side_path_projections_unfused(tiny_qwen25, tmp_path):
    """The GPU's q/k/v and gate/up fusion skips layers wrapped in a side path; the model's logits do not change."""
    from vlassist.engine.adapters import apply_adapter
    from vlassist.engine.fuse import fuse_projections
    from vlassist.engine.loader import load_model

    model, _, _ = load_model(tiny_qwen25, torch.float32, "cpu", [("sdpa", "")])
    apply_adapter(model, _make_tiny_model().build_adapter(tiny_qwen25, tmp_path / "a"), "side")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    before = model(input_ids=ids).logits
    described = fuse_projections(model)
    assert "q/k/v fused in 0 of 2 layers" in described  # q_proj and v_proj carry a side path
    torch.testing.assert_close(model(input_ids=ids).logits, before)
