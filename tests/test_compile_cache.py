"""Compiled kernels are kept in a folder chosen from the settings and keyed by versions, device and model."""

import json
import os

import pytest

from vlassist.config import load_settings


@pytest.fixture
def restore_env(monkeypatch):
    """prepare() points torch at the folder through the environment; put the variables back afterwards."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, "unset-by-test")


def test_cache_root_follows_the_settings(tmp_path):
    """Default: `cache` in the data folder; VLASSIST_CACHE_DIR replaces it."""
    assert load_settings({"VLASSIST_DATA_DIR": str(tmp_path)}).cache_root == tmp_path / "cache"
    chosen = load_settings({"VLASSIST_DATA_DIR": str(tmp_path), "VLASSIST_CACHE_DIR": str(tmp_path / "k")})
    assert chosen.cache_root == tmp_path / "k"


def test_prepare_creates_the_key_folder_and_points_torch_at_it(engine25, tmp_path, restore_env):
    """The folder is made under the settings' root, Inductor and Triton write there, and a rerun finds it warm."""
    from vlassist.engine import compilecache

    root = load_settings({"VLASSIST_DATA_DIR": str(tmp_path)}).cache_root
    cache = compilecache.prepare(root, engine25.model)
    assert cache.folder.parent == root and cache.folder.name.startswith("compile-") and not cache.warm
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache.folder / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(cache.folder / "triton")
    recorded = json.loads((cache.folder / compilecache.MARKER).read_text())
    assert recorded["torch"] and recorded["transformers"] and recorded["config"]
    (cache.folder / "inductor" / "kernel.py").write_text("# a kept artifact")
    again = compilecache.prepare(root, engine25.model)
    assert again.folder == cache.folder and again.warm


def test_a_version_device_or_model_change_gives_another_folder(engine25, engine3, tmp_path):
    """Any change in what compiled kernels depend on names a different folder, so nothing stale is loaded."""
    from vlassist.engine import compilecache

    parts = compilecache.key_parts(engine25.model)
    same = compilecache.folder_for(tmp_path, dict(parts))
    assert same == compilecache.folder_for(tmp_path, parts)
    for key, value in (("torch", "9.9.9"), ("transformers", "9.9.9"), ("device", "another GPU"), ("triton", "0")):
        assert compilecache.folder_for(tmp_path, dict(parts, **{key: value})) != same
    other_model = compilecache.key_parts(engine3.model)
    assert other_model["config"] != parts["config"]
    assert compilecache.folder_for(tmp_path, other_model) != same


def test_old_key_folders_are_pruned(engine25, tmp_path, restore_env):
    """Only the most recently used key folders stay; folders the cache did not make are left alone."""
    from vlassist.engine import compilecache

    (tmp_path / "compile-mine-not").mkdir()  # no marker: not ours
    for i in range(4):
        stale = tmp_path / f"compile-old{i}"
        stale.mkdir()
        (stale / compilecache.MARKER).write_text("{}")
        os.utime(stale / compilecache.MARKER, (1000 + i, 1000 + i))
    cache = compilecache.prepare(tmp_path, engine25.model, keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["compile-mine-not", "compile-old3", cache.folder.name])


def test_an_unwritable_root_is_reported_not_fatal(engine25, tmp_path, restore_env):
    """A root that cannot be created gives None (compiling then uses torch's default folder)."""
    from vlassist.engine import compilecache

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert compilecache.prepare(blocker / "cache", engine25.model) is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "unset-by-test"


def test_process_age_is_positive_and_grows():
    """ready_s is measured from the process start, which came before this test."""
    from vlassist.engine.loader import process_age_s

    first = process_age_s()
    assert first > 0 and process_age_s() >= first
