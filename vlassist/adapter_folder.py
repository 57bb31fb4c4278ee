"""A peft LoRA adapter folder checked without torch: its files and adapter_config.json (what can be applied)."""

from __future__ import annotations

import json
from pathlib import Path

from vlassist.errors import ConfigError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterError(ConfigError):
    """An adapter folder that cannot be applied to this model (one line naming the file and the problem)."""


def fail(path: Path, problem: str) -> AdapterError:
    """The error for `path`, one line: "LoRA adapter <file>: <problem>"."""
    return AdapterError(f"LoRA adapter {path}: {problem}")


def read_config(folder: Path) -> dict:
    """The adapter's adapter_config.json, checked for what vlassist can apply (plain LoRA on linear layers)."""
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise AdapterError(f"LoRA adapter {folder}: no such folder")
    if not path.is_file():
        raise fail(path, "missing (a peft adapter folder holds adapter_config.json and adapter_model.safetensors)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(path, f"cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise fail(path, "is not a JSON object")
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise fail(path, f"peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise fail(path, f"{flag} is set; only plain LoRA is supported")
    if config.get("bias", "none") != "none":
        raise fail(path, f"bias is {config['bias']!r}; only adapters trained with bias 'none' are supported")
    if config.get("modules_to_save"):
        raise fail(path, f"modules_to_save ({', '.join(map(str, config['modules_to_save']))}) is not supported")
    if not isinstance(config.get("lora_alpha", 8), (int, float)):
        raise fail(path, f"lora_alpha {config.get('lora_alpha')!r} is not a number")
    if not (folder / WEIGHTS_FILE).is_file():
        legacy = folder / "adapter_model.bin"
        why = " (adapter_model.bin, a pickle, is not loaded: save it as safetensors)" if legacy.is_file() else ""
        raise fail(folder / WEIGHTS_FILE, "missing" + why)
    return config
