"""A faster decoder built in the background is swapped in between answers, never during one."""

from __future__ import annotations

import pytest
from conftest import image_bytes

from vlassist.conversation import GenerationOptions, Turn
from vlassist.images import load_image

OPTIONS = GenerationOptions(max_new_tokens=48, min_new_tokens=48)

@pytest.fixture
def eager_engine(tiny_qwen25):
    """A fresh tiny engine decoding eagerly (no fast decoder yet), as one is while its compile runs."""
    from vlassist.config import load_settings
    from vlassist.engine import load_engine

    engine = load_engine(load_settings({"VLASSIST_MODEL_DIR": str(tiny_qwen25), "VLASSIST_DEVICE": "cpu",
                                        "VLASSIST_COMPILE": "off", "VLASSIST_DECODE_CONTEXT": "256",
                                        "VLASSIST_KV_CACHE_GB": "0"}))
    assert engine.fast is None and engine.upgrade is None
    return engine

def _turns():
    return [Turn("user", "What is in this picture?", [load_image(image_bytes((80, 60)), "a.png")])]

def _static_upgrade(engine, prepare=None):
    from vlassist.engine.fastdecode import StaticDecoder
    from vlassist.engine.upgrade import DecoderUpgrade

    build = prepare or (lambda: StaticDecoder(engine.model, 256, "static"))
    return DecoderUpgrade(engine, "static", build, lambda decoder: None)

def test_upgrade_waits_for_the_running_answer_then_serves_the_next(eager_engine):
    """An answer under way finishes on the old path; the upgrade lands after it and the next answer uses it."""
    reply = eager_engine.stream(_turns(), OPTIONS)
    chunks = iter(reply)
    first = [next(chunks)]  # the answer holds the device now
    upgrade = _static_upgrade(eager_engine).start()
    assert "built in the background" in eager_engine.info.decode_reason
    assert not upgrade.wait(1.0), "the swap must wait for the answer that is running"
    assert eager_engine.fast is None
    text = "".join(first + list(chunks))
    assert upgrade.wait(60) and not upgrade.error
    assert eager_engine.fast is not None and eager_engine.info.decode == "static"
    assert eager_engine.info.upgraded_s > 0
    again = eager_engine.stream(_turns(), OPTIONS)
    assert "".join(again) == text  # greedy: the new decoder answers token for token as the old path did
    assert again.stats.new_tokens == reply.stats.new_tokens == 48

def test_failed_upgrade_keeps_the_serving_decoder_and_says_why(eager_engine):
    """A build that fails leaves the working decoder serving and puts the reason in the model's info."""

    def broken():
        raise RuntimeError("inductor could not compile the step")

    upgrade = _static_upgrade(eager_engine, broken).start()
    assert upgrade.wait(30)
    assert eager_engine.fast is None and eager_engine.info.decode == "eager"
    assert "inductor could not compile the step" in upgrade.error
    assert "eager serves" in eager_engine.info.decode_reason
    assert "".join(eager_engine.stream(_turns(), GenerationOptions(max_new_tokens=4)))  # still answers

def test_auto_on_cpu_starts_no_background_build(engine25):
    """Off CUDA there is nothing to compile: `auto` decodes eagerly and no background build runs."""
    assert engine25.upgrade is None and engine25.info.decode == "eager"
