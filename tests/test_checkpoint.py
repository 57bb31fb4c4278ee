"""Recognising checkpoint folders, and what a missing or incomplete one says."""

import json
import shutil

import pytest

from vlassist.checkpoint import inspect_checkpoint, missing_files
from vlassist.errors import ModelNotFoundError


def test_missing_folder_names_it_and_the_fetch_command(tmp_path):
    """A folder that does not exist gives an error naming it and how to fetch a model."""
    with pytest.raises(ModelNotFoundError, match=r"no model folder at .*nope.*fetch_model\.py"):
        inspect_checkpoint(tmp_path / "nope")


def test_incomplete_folder_lists_missing_files(tmp_path, tiny_qwen25):
    """A copy without weights and tokenizer names exactly those files."""
    copy = tmp_path / "partial"
    shutil.copytree(tiny_qwen25, copy)
    (copy / "model.safetensors").unlink()
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match=r"partial is incomplete: missing model\.safetensors.*tokenizer\.json"):
        inspect_checkpoint(copy)


def test_missing_shard_from_index_is_reported(tmp_path, tiny_qwen25):
    """Every shard named in model.safetensors.index.json must be present."""
    copy = tmp_path / "sharded"
    shutil.copytree(tiny_qwen25, copy)
    (copy / "model.safetensors").rename(copy / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert missing_files(copy) == ["model-00002-of-00002.safetensors"]


def test_unsupported_model_type_is_refused(tmp_path, tiny_qwen25):
    """A checkpoint of another architecture is refused by name."""
    copy = tmp_path / "llama"
    shutil.copytree(tiny_qwen25, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "llama"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match="llama model"):
        inspect_checkpoint(copy)


@pytest.mark.parametrize("fixture,family,factor", [("tiny_qwen25", "qwen2_5_vl", 28), ("tiny_qwen3", "qwen3_vl", 32)])
def test_tiny_checkpoints_are_complete(request, fixture, family, factor):
    """The tiny builder writes a complete checkpoint of the requested family."""
    found = inspect_checkpoint(request.getfixturevalue(fixture))
    assert (found.model_type, found.factor) == (family, factor)
