"""One attention call per vision layer computes what the stock per-window SDPA loop computes."""

import pytest
import torch
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine.vision_attention import NAME, _batched_sdpa, use_varlen
from vlassist.images import load_image

PLAIN = GenerationOptions(max_new_tokens=12, min_new_tokens=12, max_image_tokens=256, use_cache=False)


def _vision(engine, size):
    inputs, _ = engine.encode([Turn("user", "x", [load_image(image_bytes(size, (10, 120, 240)))])],
                              GenerationOptions(max_image_tokens=256))
    with torch.inference_mode():
        out = engine.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    return out.pooler_output


def test_batched_windows_match_one_call_per_window():
    """Stacking equal-length windows into one SDPA call gives each window's own attention."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, 23, 8) for _ in range(3))
    cu = torch.tensor([0, 4, 8, 9, 13, 23, 23])
    out = _batched_sdpa(q, k, v, cu, 8 ** -0.5)  # (1, T, H, D)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b])
        torch.testing.assert_close(out[:, a:b], ref.transpose(1, 2))


@pytest.mark.parametrize("size", [(200, 130), (96, 64)])
def test_vision_tower_output_matches_the_stock_path(engine, size):
    """The vision tower's image features with one call per layer are allclose to the stock SDPA loop's."""
    assert use_varlen(engine.model) == NAME  # the engine loads with it on
    try:
        use_varlen(engine.model, False)
        stock = _vision(engine, size)
    finally:
        use_varlen(engine.model, True)
    torch.testing.assert_close(_vision(engine, size), stock, rtol=1e-5, atol=1e-5)


def test_greedy_answer_matches_the_stock_path(engine):
    """Greedy tokens are identical with the stock vision attention and with one call per layer."""
    turns = [Turn("user", "what is this", [load_image(image_bytes((200, 130), (90, 30, 200)))])]
    try:
        use_varlen(engine.model, False)
        stock = engine.stream(turns, PLAIN).consume()
    finally:
        use_varlen(engine.model, True)
    assert engine.stream(turns, PLAIN).consume() == stock


def test_language_model_keeps_its_attention(engine):
    """The vision switch leaves the text model alone: it uses SDPA without a dense mask, not the vision one."""
    from vlassist.engine import attention

    text, vision = engine.model.config.get_text_config(), engine.model.config.vision_config
    assert text._attn_implementation == attention.NAME
    assert vision._attn_implementation not in (attention.NAME, "sdpa")


@pytest.mark.parametrize("size", [(200, 130), (96, 64)])
def test_device_patchify_matches_the_processor(engine, size):
    """Normalising and patchifying on the device gives exactly the processor's pixel rows and grid."""
    from vlassist.engine.pixels import patchify, supports
    from vlassist.images import resize_for_model

    image = load_image(image_bytes(size, (10, 120, 240)))
    sizing = engine.plan(image, GenerationOptions(max_image_tokens=256))
    resized = resize_for_model(image.image, sizing)
    area = sizing.input_size[0] * sizing.input_size[1]
    ref = engine.processor.image_processor(images=[resized], return_tensors="pt",
                                           size={"shortest_edge": min(engine.info.min_pixels, area),
                                                 "longest_edge": area})
    assert supports(engine.processor.image_processor, resized.size)
    rows, grid = patchify(resized, engine.processor.image_processor, "cpu")
    assert torch.equal(rows, ref["pixel_values"]) and torch.equal(grid, ref["image_grid_thw"])
