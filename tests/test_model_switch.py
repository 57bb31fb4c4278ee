"""Switching the process's model (vlassist/service/models.py) between the two tiny families, and load progress."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import image_bytes

from vlassist.backends import load_answerer
from vlassist.config import load_settings
from vlassist.conversation import GenerationOptions, Turn
from vlassist.errors import VlassistError
from vlassist.images import load_image
from vlassist.service.jobs import Request
from vlassist.service.models import ModelSlot, choice_of, list_checkpoints, may_switch

SHORT = GenerationOptions(max_new_tokens=12)
LONG = GenerationOptions(max_new_tokens=400, min_new_tokens=400)


def turns(question: str = "What is shown?") -> list[Turn]:
    return [Turn("user", question, [load_image(image_bytes((64, 48)), "a.png")])]


@pytest.fixture(scope="module")
def models_dir(tiny_qwen25, tiny_qwen3, tmp_path_factory) -> Path:
    """Both tiny checkpoints as sibling folders of one models folder, beside things that are not checkpoints."""
    root = tmp_path_factory.mktemp("models")
    (root / "qwen25").symlink_to(tiny_qwen25, target_is_directory=True)
    (root / "qwen3").symlink_to(tiny_qwen3, target_is_directory=True)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a model")
    (root / "half").mkdir()
    shutil.copy(tiny_qwen3 / "config.json", root / "half" / "config.json")  # no weights, no tokenizer
    (root / "stray.safetensors").write_bytes(b"x")
    return root


def settings_for(folder: Path, **env):
    return load_settings({"VLASSIST_MODEL_DIR": str(folder), "VLASSIST_DEVICE": "cpu",
                          "VLASSIST_STREAM_TIMEOUT_S": "60", **env})


@pytest.fixture
def slot(models_dir):
    """A slot that has loaded the Qwen2.5-VL checkpoint; closed (model unloaded, service ended) afterwards."""
    made = ModelSlot(settings_for(models_dir / "qwen25"))
    assert made.start_load()
    assert made.wait(120) and made.current is not None, made.state.error
    yield made
    made.close()


def choice(models_dir: Path, name: str):
    [found] = [c for c in list_checkpoints(models_dir) if c.name == name]
    return found


def test_listing_finds_both_checkpoints_and_skips_the_rest(models_dir):
    """The models folder lists the two checkpoint folders with their families, and nothing else in it."""
    found = list_checkpoints(models_dir)
    assert [(c.name, c.family) for c in found] == [("qwen25", "qwen2_5_vl"), ("qwen3", "qwen3_vl")]
    assert all(not c.remote for c in found)


def test_models_folder_defaults_to_the_model_folders_parent(models_dir, tmp_path):
    """Without VLASSIST_MODELS_DIR the page lists the model folder's siblings; with it, that folder."""
    assert settings_for(models_dir / "qwen25").models_root == models_dir
    assert settings_for(models_dir / "qwen25", VLASSIST_MODELS_DIR=str(tmp_path)).models_root == tmp_path


def test_answers_after_a_switch_come_from_the_new_family(slot, models_dir, engine25, engine3):
    """After switching to Qwen3-VL the service answers with it: the same text a Qwen3-VL engine gives."""
    before = slot.service.submit(Request(turns(), SHORT))
    assert before.wait(60) and before.outcome == "complete"
    assert before.text == engine25.stream(turns(), SHORT).consume()
    slot.switch(choice(models_dir, "qwen3"))
    assert slot.wait(120) and slot.state.phase == "ready", slot.state.error
    assert choice_of(slot.current).family == "qwen3_vl"
    after = slot.service.submit(Request(turns(), SHORT))
    assert after.wait(60) and after.outcome == "complete"
    assert after.text == engine3.stream(turns(), SHORT).consume() != before.text


def test_the_old_model_is_unloaded_by_a_switch(slot, models_dir):
    """The replaced engine lets go of its model, and refuses to answer with a clear error."""
    old = slot.current
    slot.switch(choice(models_dir, "qwen3"))
    assert slot.wait(120) and slot.current is not old
    assert old.model is None and old.fast is None
    with pytest.raises(VlassistError, match="unloaded"):
        old.stream(turns(), SHORT)


def test_running_answer_finishes_on_the_old_model(slot, models_dir, engine25):
    """An answer running when the switch is asked for completes on the old model, whole and unchanged."""
    running = slot.service.submit(Request(turns("Keep writing"), LONG))
    running.chunks(0.05).__next__()  # it has started writing
    slot.switch(choice(models_dir, "qwen3"))
    assert running.wait(120) and running.outcome == "complete"
    assert running.text == engine25.stream(turns("Keep writing"), LONG).consume()
    assert slot.wait(120) and choice_of(slot.current).family == "qwen3_vl"


def test_queued_questions_are_cancelled_with_a_message_to_send_again(slot, models_dir):
    """Questions waiting when the switch begins end failed, saying the model was switched and to send again."""
    running = slot.service.submit(Request(turns("First"), LONG))
    waiting = [slot.service.submit(Request(turns(f"Waiting {i}"), SHORT)) for i in range(2)]
    running.chunks(0.05).__next__()
    slot.switch(choice(models_dir, "qwen3"))
    for job in waiting:
        assert job.wait(30) and job.outcome == "failed"
        assert "switched from qwen25 to qwen3" in job.error and "Send it again" in job.error
    assert slot.wait(120) and slot.state.cancelled == 2 and "2 waiting question" in slot.state.notice
    assert running.outcome == "complete"


def test_questions_sent_during_a_switch_are_refused_naming_the_new_model(models_dir):
    """While the new model loads, a new question is refused at once with a message naming it."""
    gate = threading.Event()

    def slow_loader(settings, progress):  # the real load, held back until the test has asked its question
        if settings.model_dir.name == "qwen3":
            gate.wait(60)
        return load_answerer(settings, progress)

    slot = ModelSlot(settings_for(models_dir / "qwen25"), loader=slow_loader)
    slot.start_load()
    assert slot.wait(120)
    try:
        slot.switch(choice(models_dir, "qwen3"))
        with pytest.raises(VlassistError, match="being switched to qwen3"):
            slot.service.submit(Request(turns(), SHORT))
        deadline = time.monotonic() + 60
        while slot.current is not None:  # the old model is unloaded first, then the (held) load begins
            assert time.monotonic() < deadline, "the old model was never unloaded"
            time.sleep(0.05)
        assert slot.state.busy
        with pytest.raises(VlassistError, match="being switched to qwen3"):
            slot.service.submit(Request(turns(), SHORT))
        gate.set()
        assert slot.wait(120) and slot.service.submit(Request(turns(), SHORT)).wait(60)
    finally:
        gate.set()
        slot.close()


def test_a_switch_to_a_model_that_fails_to_load_brings_the_old_one_back(slot, models_dir, tmp_path, tiny_qwen3):
    """A checkpoint whose weights are damaged cannot be loaded: the old model is loaded again and the page is told."""
    broken = tmp_path / "models" / "broken"
    shutil.copytree(tiny_qwen3, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    slot.switch(choice(tmp_path / "models", "broken"))
    assert slot.wait(120) and slot.state.phase == "ready"
    assert choice_of(slot.current).name == "qwen25"
    assert "broken could not be loaded" in slot.state.notice and "qwen25 was loaded again" in slot.state.notice
    assert slot.service.submit(Request(turns(), SHORT)).wait(60)


def test_a_folder_that_is_not_a_checkpoint_is_refused_before_anything_is_unloaded(slot, models_dir):
    """Switching to an incomplete folder fails at once, and the model in use stays loaded."""
    from vlassist.service.models import ModelChoice

    current = slot.current
    with pytest.raises(VlassistError, match="incomplete"):
        slot.switch(ModelChoice("half", str(models_dir / "half"), None))
    assert slot.current is current and not slot.state.busy


def test_only_admins_may_switch_when_users_are_named():
    """Per-user mode: only VLASSIST_ADMIN_USERS may switch (nobody when unset); single-user mode: the local user."""
    named = load_settings({"VLASSIST_USER_HEADER": "X-User", "VLASSIST_ADMIN_USERS": " alice, bob ,,"})
    assert named.admin_users == ("alice", "bob")
    assert may_switch(named, "alice") and may_switch(named, "bob") and not may_switch(named, "carol")
    assert not may_switch(load_settings({"VLASSIST_USER_HEADER": "X-User"}), "alice")
    assert may_switch(load_settings({}), "local")


def test_loading_reports_each_stage_with_rising_progress(tiny_qwen3):
    """A load reports start, read, weights (bytes read, several steps), device, warm-up and ready, never going back."""
    heard: list[tuple[str, float, str]] = []
    engine = load_answerer(settings_for(tiny_qwen3), lambda *event: heard.append(event))
    stages = [stage for stage, _, _ in heard]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "start", "read", "weights", "device", "warmup", "ready"]
    fractions = [fraction for _, fraction, _ in heard]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    weights = [detail for stage, _, detail in heard if stage == "weights" and "GiB" in detail]
    assert len(weights) > 5 and weights[-1].startswith("Reading weights:")
    engine.close()
