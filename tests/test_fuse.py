"""q/k/v and gate/up fused into one product each: same weights, same logits, same answers."""

import pytest
import torch
from conftest import image_bytes

from vlassist.config import load_settings
from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine import Engine, warm_up
from vlassist.engine.fuse import fuse_projections
from vlassist.engine.loader import load
from vlassist.images import load_image

FORCED = GenerationOptions(max_new_tokens=12, min_new_tokens=12, max_image_tokens=256)


def _engine(folder, fuse: bool):
    settings = load_settings({"VLASSIST_MODEL_DIR": str(folder), "VLASSIST_DEVICE": "cpu",
                              "VLASSIST_COMPILE": "static", "VLASSIST_DECODE_CONTEXT": "256"})
    model, processor, _family, info = load(settings)
    if fuse:
        info.fused = fuse_projections(model)
    engine = Engine(model, processor, info, settings)
    warm_up(engine)
    return engine


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def pair(request):
    """The same tiny checkpoint loaded twice: stock, and with its projections fused."""
    folder = request.getfixturevalue({"qwen2_5_vl": "tiny_qwen25", "qwen3_vl": "tiny_qwen3"}[request.param])
    return request.param, _engine(folder, False), _engine(folder, True)


def test_weights_are_shared_not_copied(pair):
    """The stock parameters become views of the fused tensors: same values, same count, no second copy."""
    family, stock, fused = pair
    assert dict(stock.model.named_parameters()).keys() == dict(fused.model.named_parameters()).keys()
    assert all(torch.equal(a, b) for a, b in zip(stock.model.state_dict().values(),
                                                  fused.model.state_dict().values()))
    layer = fused.model.model.language_model.layers[0]
    assert layer.mlp.gate_proj.weight.data_ptr() == layer.mlp.gate_up_weight.data_ptr()
    if family == "qwen2_5_vl":
        assert layer.self_attn.q_proj.weight.data_ptr() == layer.self_attn.qkv_weight.data_ptr()
    assert "gate/up in" in fused.info.fused


def test_logits_and_answers_match_the_stock_model(pair):
    """Prefill logits agree to float32 rounding; greedy answers, first and follow-up, are the same tokens."""
    _family, stock, fused = pair
    image = load_image(image_bytes((96, 64), (30, 160, 90)))
    turns = [Turn("user", "Describe this.", [image])]
    inputs, _ = stock.encode(turns, FORCED)
    with torch.inference_mode():
        a = stock.model(**inputs).logits[:, -1]
        b = fused.model(**inputs).logits[:, -1]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    texts = []
    for engine in (stock, fused):
        first = engine.stream(turns, FORCED).consume()
        follow = engine.stream(turns + [Turn("assistant", first), Turn("user", "And the colour?")], FORCED)
        texts.append((first, follow.consume()))
    assert texts[0] == texts[1]
