"""Prefix KV-cache reuse: keyed by image contents, bounded, and never changing an answer."""

import numpy as np
import torch
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine.kvcache import PrefixStore, fingerprint, image_key, usable_prefix
from vlassist.images import load_image

CACHED = GenerationOptions(max_new_tokens=8, min_new_tokens=8, max_image_tokens=256)
PLAIN = GenerationOptions(max_new_tokens=8, min_new_tokens=8, max_image_tokens=256, use_cache=False)
PAD = 9  # an image placeholder token id for the unit tests


def _img(size=(96, 64), color=(200, 30, 30)):
    return load_image(image_bytes(size, color))


def _layers(n, layers=2):
    return [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4)) for _ in range(layers)]


def _answer(engine, turns, options=CACHED):
    reply = engine.stream(turns, options)
    return reply.consume(), reply.stats


def test_same_text_with_another_image_differs_exactly_at_the_image():
    """Two prompts alike but for the picture get fingerprints that part where the image tokens start."""
    ids = [1, 2, PAD, PAD, 3]
    a = fingerprint(ids, PAD, [image_key("aa", (28, 28))], [2])
    b = fingerprint(ids, PAD, [image_key("bb", (28, 28))], [2])
    assert list(np.flatnonzero(a != b)) == [2, 3]


def test_same_image_at_another_size_is_another_key():
    """The model-input size is part of an image's key (a new resolution budget never hits)."""
    assert image_key("aa", (28, 28)) != image_key("aa", (56, 28))


def test_a_cut_inside_an_image_backs_off_to_its_start():
    """Reuse never ends in the middle of an image's tokens."""
    tokens = fingerprint([1, 2, PAD, PAD, PAD, 3], PAD, [image_key("aa", (1, 1))], [3])
    assert usable_prefix(tokens, 4) == 2


def test_reuse_always_leaves_one_token_to_run():
    """Even an identical prompt runs its last token, which gives the next token's logits."""
    assert usable_prefix(np.array([1, 2, 3]), 3) == 2


def test_store_finds_the_longest_common_prefix():
    """Lookup returns the entry sharing the most tokens with the prompt."""
    store = PrefixStore(10**9)
    store.put(np.array([1, 2, 3]), _layers(3))
    store.put(np.array([1, 5, 6, 7]), _layers(4))
    entry, n = store.lookup(np.array([1, 2, 3, 4, 5]))
    assert n == 3 and list(entry.tokens) == [1, 2, 3]


def test_store_drops_least_recently_used_past_its_budget():
    """Past the byte budget the entry used longest ago goes first."""
    one = sum(k.numel() * 4 + v.numel() * 4 for k, v in _layers(4))
    store = PrefixStore(2 * one)
    store.put(np.array([1, 1, 1, 1]), _layers(4))
    store.put(np.array([2, 2, 2, 2]), _layers(4))
    store.lookup(np.array([1, 1, 1, 1, 9]))  # touch the first
    store.put(np.array([3, 3, 3, 3]), _layers(4))
    assert store.lookup(np.array([2, 2, 2, 2, 9]))[1] == 0
    assert store.lookup(np.array([1, 1, 1, 1, 9]))[1] == 4 and store.nbytes <= 2 * one


def test_lowering_the_budget_keeps_the_most_recently_used_that_fit():
    """A smaller byte budget drops entries least recently used first, and later puts respect it."""
    one = sum(k.numel() * 4 + v.numel() * 4 for k, v in _layers(4))
    store = PrefixStore(3 * one)
    for fill in (1, 2, 3):
        store.put(np.full(4, fill), _layers(4))
    store.lookup(np.array([1, 1, 1, 1, 9]))  # touch the oldest
    store.budget_bytes = 2 * one
    assert sorted(int(e.tokens[0]) for e in store.entries()) == [1, 3] and store.nbytes == 2 * one
    store.put(np.full(4, 4), _layers(4))
    assert sorted(int(e.tokens[0]) for e in store.entries()) == [1, 4] and store.budget_bytes == 2 * one


def test_pixel_memo_keeps_the_last_images_used(engine25):
    """Processed images are kept up to the memo's size, the one used longest ago dropped first."""
    from vlassist.engine.encode import PixelMemo

    memo = PixelMemo(engine25.processor.image_processor, "cpu", engine25.info.min_pixels, images=2)
    images = [_img(color=(c, 0, 0)) for c in (10, 20, 30)]
    sizing = engine25.plan(images[0], CACHED)
    first, second = memo.get(images[0], sizing), memo.get(images[1], sizing)
    assert memo.get(images[0], sizing) is first  # kept, and now the most recently used
    memo.get(images[2], sizing)
    assert len(memo) == 2 and memo.get(images[0], sizing) is first and memo.get(images[1], sizing) is not second


def test_a_longer_conversation_replaces_its_own_prefix():
    """Storing a continuation drops the entry it extends, so follow-ups do not pile up copies."""
    store = PrefixStore(10**9)
    store.put(np.array([1, 2]), _layers(2))
    store.put(np.array([1, 2, 3, 4]), _layers(4))
    assert len(store) == 1


def test_follow_up_reuses_the_conversation_and_answers_the_same(engine):
    """A follow-up about the same image reuses the earlier turn's cache and gives the uncached answer."""
    engine.prefixes.clear()
    first = [Turn("user", "what is this", [_img()])]
    text, stats = _answer(engine, first)
    turns = first + [Turn("assistant", text), Turn("user", "and the colour?")]
    cached, stats = _answer(engine, turns)
    assert stats.reused_tokens > stats.visual_tokens
    assert cached == _answer(engine, turns, PLAIN)[0]


def test_reuse_is_exact_after_another_image_size_ran_in_between(engine):
    """A question about a differently sized image in between does not disturb the first image's reuse."""
    engine.prefixes.clear()
    first = [Turn("user", "describe", [_img((96, 64))])]
    text, _ = _answer(engine, first)
    _answer(engine, [Turn("user", "describe", [_img((160, 224), (10, 200, 40))])])
    turns = first + [Turn("assistant", text), Turn("user", "what else?")]
    cached, stats = _answer(engine, turns)
    assert stats.reused_tokens > 0
    assert cached == _answer(engine, turns, PLAIN)[0]


def test_a_different_image_with_the_same_text_never_hits(engine):
    """The same question about another picture of the same size reuses nothing past the image's start."""
    engine.prefixes.clear()
    _answer(engine, [Turn("user", "read it", [_img(color=(200, 30, 30))])])
    turns = [Turn("user", "read it", [_img(color=(30, 30, 200))])]
    cached, stats = _answer(engine, turns)
    ids = engine.encode(turns, CACHED)[0]["input_ids"][0].tolist()
    assert stats.reused_tokens <= ids.index(engine.model.config.image_token_id)
    assert cached == _answer(engine, turns, PLAIN)[0]


def test_adding_a_second_image_later_works_and_is_exact(engine):
    """A follow-up that brings a new image reuses the first image and encodes only the new one."""
    engine.prefixes.clear()
    first = [Turn("user", "look", [_img()])]
    text, _ = _answer(engine, first)
    turns = first + [Turn("assistant", text), Turn("user", "compare", [_img((128, 96), (0, 90, 0))])]
    cached, stats = _answer(engine, turns)
    assert stats.reused_tokens > 0
    assert cached == _answer(engine, turns, PLAIN)[0]


def test_no_cache_option_reuses_and_keeps_nothing(engine25):
    """With use_cache off nothing is looked up or stored."""
    engine25.prefixes.clear()
    turns = [Turn("user", "look", [_img()])]
    _, first = _answer(engine25, turns, PLAIN)
    _, second = _answer(engine25, turns, PLAIN)
    assert first.reused_tokens == second.reused_tokens == 0 and len(engine25.prefixes) == 0


def test_store_budget_zero_keeps_nothing(engine25):
    """A zero byte budget turns reuse off without changing answers."""
    budget = engine25.prefixes.budget_bytes
    engine25.prefixes.clear()
    engine25.prefixes.budget_bytes = 0
    try:
        turns = [Turn("user", "look", [_img()])]
        _answer(engine25, turns)
        _, stats = _answer(engine25, turns)
        assert stats.reused_tokens == 0
    finally:
        engine25.prefixes.budget_bytes = budget


def test_sampled_answers_with_reuse_match_with_a_seed(engine25):
    """With a fixed seed, sampling gives the same answer from a reused cache as from a fresh prefill."""
    engine25.prefixes.clear()
    sample = GenerationOptions(max_new_tokens=8, min_new_tokens=8, max_image_tokens=256, precise=False, seed=3)
    turns = [Turn("user", "look", [_img()])]
    fresh = engine25.stream(turns, sample).consume()
    reused = engine25.stream(turns, sample)
    assert reused.consume() == fresh and reused.stats.reused_tokens > 0


def test_encoding_matches_the_processor(engine):
    """The engine's prompt encoding (with processed images kept per image) equals the stock processor's output."""
    turns = [Turn("user", "one", [_img()]), Turn("assistant", "ok"),
             Turn("user", "two", [_img((128, 96), (0, 0, 200)), _img()])]
    for _ in range(2):  # second time from the kept images
        inputs, sizings = engine.encode(turns, CACHED)
        messages = [{"role": t.role, "content": [{"type": "image"} for _ in t.images] + [{"type": "text",
                                                                                      "text": t.text}]}
                    for t in turns]
        text = engine.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pixels = [engine.processor.image_processor(
            images=[im.image.resize(s.input_size)], return_tensors="pt",
            size={"shortest_edge": min(engine.info.min_pixels, s.input_size[0] * s.input_size[1]),
                  "longest_edge": s.input_size[0] * s.input_size[1]}) for im, s in zip(_all_images(turns), sizings)]
        ref = engine.processor(text=[text], images=[im.image.resize(s.input_size)
                                                    for im, s in zip(_all_images(turns), sizings)],
                               size={"shortest_edge": engine.info.min_pixels, "longest_edge": 10**7},
                               return_tensors="pt")
        for key in ("input_ids", "mm_token_type_ids", "image_grid_thw"):
            assert torch.equal(inputs[key].cpu(), ref[key]), key
        assert torch.equal(inputs["pixel_values"].cpu(), torch.cat([p["pixel_values"] for p in pixels]))


def _all_images(turns):
    return [image for turn in turns for image in turn.images]
