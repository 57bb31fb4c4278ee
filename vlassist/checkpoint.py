"""Recognise a local Qwen-VL checkpoint folder and say exactly what is missing from it."""

from __future__ import annotations

import json
from pathlib import Path

from vlassist.errors import ModelNotFoundError
from vlassist.families import FAMILIES, Family, UnknownFamilyError, family

FETCH_HINT = (".venv/bin/python scripts/fetch_model.py Qwen/Qwen2.5-VL-7B-Instruct "
              "(on a machine with internet; see README)")


def inspect_checkpoint(folder: Path) -> Family:
    """Check that `folder` holds a complete, supported checkpoint and return its family."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"no model folder at {folder}. Get one with: {FETCH_HINT}")
    missing = missing_files(folder)
    if missing:
        raise ModelNotFoundError(
            f"the model folder {folder} is incomplete: missing {', '.join(missing)}. Get a model with: {FETCH_HINT}"
        )
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{folder / 'config.json'} cannot be read: {exc}") from None
    model_type = config.get("model_type", "")
    try:
        return family(model_type)
    except UnknownFamilyError:
        raise ModelNotFoundError(
            f"{folder} holds a {model_type or 'unknown'!s} model; vlassist runs {', '.join(FAMILIES)} checkpoints"
        ) from None


def model_id(model_dir: str | Path, adapter: str | Path | None = None) -> str:
    """The name a model goes by (API model id, batch rows): the checkpoint folder's, `<base>+<adapter>` with one."""
    base = Path(model_dir).name
    return f"{base}+{Path(adapter).name}" if adapter else base


def missing_files(folder: Path) -> list[str]:
    """Files a checkpoint needs that `folder` lacks (weight shards listed by the index included)."""
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            missing.append("a readable model.safetensors.index.json")
            shards = []
        missing += [shard for shard in shards if not (folder / shard).is_file()]
    elif not (folder / "model.safetensors").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json with its shards)")
    if not (folder / "tokenizer.json").is_file() and not (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    ):
        missing.append("tokenizer.json")
    if not _has_chat_template(folder):
        missing.append("chat_template.jinja (or chat_template.json)")
    return missing


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return "chat_template" in json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
