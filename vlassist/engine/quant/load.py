"""Build a model whose linears are a weight format's layers, reading the checkpoint one tensor at a time.

The model is made with its parameters on the meta device (no memory), the format's layers take the place of the
linears its tensors name, and every tensor is then read from the safetensors files straight onto the device, so
a 32B AWQ checkpoint never exists in 16 bits. Checkpoint names are matched to the model's whether the checkpoint
was saved by transformers 4 (`model.layers…`, `visual.…`, as the official quantized checkpoints are) or 5.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

from vlassist.engine.quant.base import CheckpointMismatch, Target, WeightFormat
from vlassist.errors import ConfigError

log = logging.getLogger(__name__)

# (checkpoint prefix, model prefix): transformers 4 names of Qwen-VL checkpoints → the transformers 5 model's.
RENAMES = (("", ""), ("model.", "model.language_model."), ("visual.", "model.visual."))


def tensor_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files (shards listed by the index, else model.safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / name for name in names]
    return [folder / "model.safetensors"]


def _headers(files: list[Path]) -> dict[str, tuple[Path, str]]:
    """Every tensor name → (its file, its safetensors dtype), from the file headers alone."""
    entries = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    entries[key] = (path, f.get_slice(key).get_dtype())
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise ConfigError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None
    return entries


def _renamer(names: set[str]) -> Callable[[str], str | None]:
    def rename(key: str) -> str | None:
        for old, new in RENAMES:
            if key.startswith(old) and (candidate := new + key[len(old):]) in names:
                return candidate
        return None

    return rename


def _skeleton(folder: Path, dtype: torch.dtype, attn: str):
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    for part in (config, config.get_text_config()):
        if hasattr(part, "quantization_config"):
            delattr(part, "quantization_config")  # the layers are ours: transformers must not quantize again
    with init_empty_weights(include_buffers=False):  # parameters on meta; rotary tables computed as usual
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    return model


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def load_quantized(folder: Path, fmt: WeightFormat, dtype: torch.dtype, device: str, attn: str,
                   progress: Callable[[float], None] | None = None) -> nn.Module:
    """The model of the checkpoint in `folder`, with `fmt`'s layers, on `device` (eval mode, no gradients).

    A tensor missing, of the wrong shape, or left over from a quantized layer is refused in one line naming
    the file; `progress` hears the share of tensors read.
    """
    folder = Path(folder)
    files = tensor_files(folder)
    entries = _headers(files)
    model = _skeleton(folder, dtype, attn)
    model.eval()
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    rename = _renamer(set(state))
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}

    # Which linears become format layers, and which checkpoint tensors are theirs: {model layer: {part: key}}.
    parts: dict[str, dict[str, str]] = {}
    if fmt.on_load:
        chosen = fmt.targets(list(linears))
        for key in entries:
            name = rename(key)
            if name is not None and name.rpartition(".")[0] in chosen:
                layer, _, suffix = name.rpartition(".")
                parts.setdefault(layer, {})[suffix] = key
    else:
        for key, (_, kind) in entries.items():
            module, _, suffix = key.rpartition(".")
            if fmt.marks(suffix, kind):
                layer = rename(module + ".weight")
                if layer is None or layer[: -len(".weight")] not in linears:
                    raise CheckpointMismatch(f"{entries[key][0]}: {key} names no linear layer of this "
                                             f"{model.config.model_type} model")
                parts.setdefault(layer[: -len(".weight")], {})
        for key in entries:
            module, _, suffix = key.rpartition(".")
            name = rename(module + ".weight")
            layer = name[: -len(".weight")] if name else None
            if layer not in parts:
                continue
            if suffix not in fmt.required and suffix not in fmt.optional:  # e.g. act-order g_idx: not this scheme
                raise CheckpointMismatch(f"{entries[key][0]}: {key} is not part of a {fmt.name} layer as vlassist "
                                         f"loads it ({', '.join(fmt.required + fmt.optional)})")
            parts[layer][suffix] = key
    for layer, found in parts.items():
        missing = [suffix for suffix in fmt.required if suffix not in found]
        if missing:
            where = entries[next(iter(found.values()))][0] if found else files[0]
            raise CheckpointMismatch(f"{where}: {layer} has no {', '.join(missing)} "
                                     f"(a {fmt.name} layer needs {', '.join(fmt.required)}): damaged or incomplete")

    claimed = {key for found in parts.values() for key in found.values()}
    opened = {path: safe_open(str(path), framework="pt", device=device) for path in files}
    if fmt.on_load:
        fmt.open_cache()
    total, done, unused = len(entries), 0, []
    with torch.no_grad():
        for layer, found in parts.items():
            where = str(entries[next(iter(found.values()))][0])
            tensors = {suffix: opened[entries[key][0]].get_tensor(key) for suffix, key in found.items()}
            owner, _, child = layer.rpartition(".")
            replacement = fmt.build(Target(layer, linears[layer], where), tensors, dtype)
            setattr(model.get_submodule(owner), child, replacement)
            done += len(found)
            if progress is not None:
                progress(done / total)
        for key, (path, _) in entries.items():
            if key in claimed:
                continue
            name = rename(key)
            if name is None:
                unused.append(key)
                continue
            tensor = opened[path].get_tensor(key)
            expected = state[name]
            if tuple(tensor.shape) != tuple(expected.shape):
                raise CheckpointMismatch(f"{path}: {key} has shape {tuple(tensor.shape)}, the model config wants "
                                         f"{tuple(expected.shape)}")
            _assign(model, name, tensor.to(dtype) if tensor.is_floating_point() else tensor)
            done += 1
            if progress is not None and done % 16 == 0:
                progress(done / total)
    if fmt.on_load:
        fmt.finish()
    if unused:
        log.warning("%d checkpoint tensors match nothing in the model, e.g. %s", len(unused), unused[0])
    if getattr(model.config.get_text_config(), "tie_word_embeddings", False) or getattr(
            model.config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [name for name, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise CheckpointMismatch(f"{files[0] if len(files) == 1 else folder}: no tensor for {left[0]}"
                                 f"{f' and {len(left) - 1} more' if len(left) > 1 else ''}: damaged or incomplete")
    return model.to(device)
