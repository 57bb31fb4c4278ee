"""Fidelity to the reference stack: thin-strip sizing, the chat template transformers picks, real templates."""

import json
import shutil

import pytest
from conftest import image_bytes

from vlassist.engine.sizing import plan_size
from vlassist.images import load_image

FAMILY_FIXTURES = [("engine25", "tiny_qwen25", 28), ("engine3", "tiny_qwen3", 32)]


def _vl_utils_resize(height, width, factor, min_pixels, max_pixels):
    """qwen-vl-utils' vision_process.smart_resize, without its aspect check (reference for strips it can size)."""
    import math

    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@pytest.mark.parametrize("factor", [28, 32])
def test_thin_strip_keeps_its_aspect_as_qwen_vl_utils(factor):
    """A 12×1200 one-line crop keeps its long side (28×1204, 43 tokens at factor 28) instead of 28×560."""
    for size in [(12, 1200), (1200, 12), (8, 60), (2000, 11), (13, 13), (1500, 20)]:
        width, height = size
        sizing = plan_size(size, factor, 1280)
        expected_h, expected_w = _vl_utils_resize(height, width, factor, 4 * factor * factor, 1280 * factor * factor)
        assert sizing.input_size == (expected_w, expected_h), size
    assert plan_size((12, 1200), 28, 1280).input_size == (28, 1204)
    assert plan_size((12, 1200), 28, 1280).visual_tokens == 43
    assert plan_size((1200, 12), 32, 1280).input_size == (1216, 32)
    assert plan_size((1200, 12), 32, 1280).visual_tokens == 38


@pytest.mark.parametrize("factor", [28, 32])
def test_thin_strip_in_low_res_mode_gets_a_valid_size(factor):
    """Where qwen-vl-utils floors the short side to 0 (low resolution), the strip stays one token row."""
    assert _vl_utils_resize(12, 1200, factor, 4 * factor**2, 5898)[0] == 0  # the reference would crash here
    for size in [(12, 1200), (1200, 12), (1599, 8), (8, 1600), (30, 3000)]:
        sizing = plan_size(size, factor, 1280, low_res=True)
        w, h = sizing.input_size
        assert min(w, h) == factor and w % factor == 0 and h % factor == 0
        assert 0.8 * 768 <= max(w, h) <= 768  # the low-resolution cap on the long side
        assert sizing.visual_tokens == (w // factor) * (h // factor)


@pytest.mark.parametrize("factor", [28, 32])
def test_thin_strip_respects_a_small_token_budget(factor):
    """The single token row of a strip is cut to the user's visual-token budget."""
    sizing = plan_size((2400, 12), factor, 30)
    assert sizing.visual_tokens <= 30 and sizing.input_size[1] == factor


def test_elongated_strip_is_still_refused():
    """Over 200:1 stays an ImageError."""
    from vlassist.errors import ImageError

    with pytest.raises(ImageError, match="too elongated"):
        plan_size((12, 2500), 28, 1280)


@pytest.mark.parametrize("engine_fixture,_,factor", FAMILY_FIXTURES)
@pytest.mark.parametrize("low_res", [False, True])
def test_processor_grid_equals_the_plan_for_thin_strips(request, engine_fixture, _, factor, low_res):
    """The engine's processor run gives exactly plan_size's grid on one-line crops."""
    from vlassist.conversation import GenerationOptions, Turn

    engine = request.getfixturevalue(engine_fixture)
    options = GenerationOptions(max_image_tokens=300, low_res=low_res)
    for size in [(1200, 12), (20, 900), (13, 13)]:
        loaded = load_image(image_bytes(size))
        plan = engine.plan(loaded, options)
        inputs, sizings = engine.encode([Turn("user", "read", [loaded])], options)
        _, gh, gw = inputs["image_grid_thw"][0].tolist()
        assert sizings[0] == plan
        assert (gw * factor // 2, gh * factor // 2) == plan.input_size, size
        assert gh * gw // 4 == plan.visual_tokens


def _template_pair(folder):
    """Give `folder` a chat_template.jinja and a chat_template.json with different markers."""
    jinja = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    (folder / "chat_template.jinja").write_text("JINJA-TEMPLATE " + jinja, encoding="utf-8")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "JSON-TEMPLATE " + jinja}),
                                               encoding="utf-8")


@pytest.mark.parametrize("_,checkpoint_fixture,factor", FAMILY_FIXTURES)
def test_template_choice_follows_transformers(request, tmp_path, _, checkpoint_fixture, factor):
    """With both template files present, vlassist renders with the one transformers' AutoProcessor loads."""
    from transformers import AutoTokenizer

    from vlassist.engine.loader import _chat_template

    family = {28: "qwen2_5_vl", 32: "qwen3_vl"}[factor]
    folder = tmp_path / "both"
    shutil.copytree(request.getfixturevalue(checkpoint_fixture), folder)
    _template_pair(folder)
    reference = _reference_processor_template(folder, family)
    # transformers 5.23's processor loading reads the legacy chat_template.json and ignores the .jinja beside it
    # (the tokenizer alone would take the .jinja); vlassist used to prefer the .jinja.
    assert reference.startswith("JSON-TEMPLATE")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert _chat_template(folder, tokenizer, family) == reference

    engine = _load(folder)
    text = engine.processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                                add_generation_prompt=True, tokenize=False)
    assert text.startswith(reference.split(" ", 1)[0])


def _reference_processor_template(folder, family):
    """The chat template transformers' own from_pretrained gives a stock processor of this family for `folder`."""
    import transformers

    from vlassist.families import family as family_of

    base = getattr(transformers, family_of(family).processor)
    try:  # AutoProcessor itself where its video processor can be built (needs torchvision)
        return transformers.AutoProcessor.from_pretrained(folder, local_files_only=True).chat_template
    except ImportError:
        pass
    # Otherwise the same class through transformers' whole from_pretrained, minus the video processor.
    images_only = type(base.__name__ + "Reference", (base,),
                       {"get_attributes": classmethod(lambda c: ["image_processor", "tokenizer"])})
    return images_only.from_pretrained(folder, local_files_only=True).chat_template


def _load(folder):
    from vlassist.config import load_settings
    from vlassist.engine import load_engine

    return load_engine(load_settings({"VLASSIST_MODEL_DIR": str(folder), "VLASSIST_DEVICE": "cpu"}))


def _render_user_image_turn(engine):
    from vlassist.conversation import GenerationOptions, Turn

    loaded = load_image(image_bytes((64, 64)))
    inputs, _ = engine.encode([Turn("user", "what is this?", [loaded])], GenerationOptions(max_image_tokens=16))
    return engine.processor.tokenizer.decode(inputs["input_ids"][0])


def test_tiny_qwen3_template_has_no_system_block(engine3):
    """Qwen3-VL's real template adds no default system prompt."""
    text = _render_user_image_turn(engine3)
    assert "<|im_start|>system" not in text and "You are a helpful assistant." not in text
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert text.endswith("what is this?<|im_end|>\n<|im_start|>assistant\n")


def test_tiny_qwen25_template_has_the_default_system_prompt(engine25):
    """Qwen2.5-VL's real template opens with its default system prompt."""
    text = _render_user_image_turn(engine25)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|>")
    assert text.endswith("what is this?<|im_end|>\n<|im_start|>assistant\n")
