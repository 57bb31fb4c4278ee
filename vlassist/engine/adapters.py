"""LoRA adapters from a peft / ms-swift folder: merged into 16-bit weights, or a low-rank side path beside others.

A peft LoRA folder holds `adapter_config.json` and `adapter_model.safetensors`, whose tensors are named
`base_model.model.<module>.lora_A.weight` (rank × in) and `….lora_B.weight` (out × rank), with the module named
as the transformers of training time named it: `model.layers.…` / `visual.…` before transformers 4.52,
`model.language_model.layers.…` / `model.visual.…` since. Each target gets `scale · B·A` with scale = alpha / rank
(alpha / √rank under rsLoRA), alpha and rank taken per module from `alpha_pattern` / `rank_pattern` as peft does.

A float `nn.Linear` gets the product added to its weight once (computed in float32), so answers cost nothing extra.
Any other module (a quantized linear whose packed weight cannot take a float delta) is wrapped: its forward(x)
becomes base(x) + scale · B(A(x)), which needs nothing of the module but that its output is a function of x.
Everything is checked before any weight is changed, so a mismatched adapter leaves the model as it was.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from vlassist.adapter_folder import WEIGHTS_FILE, AdapterError, fail, read_config  # noqa: F401 (AdapterError: API)
from vlassist.errors import ConfigError

MODES = ("auto", "merge", "side")  # auto: merge into float linears, side path on anything else
PREFIX = "base_model.model."
# Training-time module names of older transformers → today's, tried in order when a name is not found as is.
LEGACY_PREFIXES = (("model.layers.", "model.language_model.layers."), ("visual.", "model.visual."),
                   ("model.embed_tokens", "model.language_model.embed_tokens"),
                   ("model.norm", "model.language_model.norm"))
_TENSOR = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class Target:
    """One module an adapter changes: its name in the model, the low-rank factors and their scale."""

    name: str
    a: torch.Tensor  # (rank, in_features)
    b: torch.Tensor  # (out_features, rank)
    scale: float


class LoraSidePath(nn.Module):
    """base(x) + scale · B(A(x)): a LoRA kept beside a module whose weight cannot take the merged product."""

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, scale: float, dtype: torch.dtype):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(a.shape[1], a.shape[0], bias=False, dtype=dtype, device=a.device)
        self.lora_B = nn.Linear(b.shape[1], b.shape[0], bias=False, dtype=dtype, device=b.device)
        with torch.no_grad():
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.copy_(b * scale)  # the scale folded in once: one product fewer per call
        self.lora_A.requires_grad_(False)
        self.lora_B.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped module's output plus the low-rank update, in the output's dtype."""
        out = self.base(x)
        return out + self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))).to(out.dtype)


@dataclass(frozen=True)
class AppliedAdapter:
    """What an adapter did to the model: its folder, modules merged and modules given a side path."""

    folder: str
    merged: int
    side: int

    def describe(self) -> str:
        """One line for engine info: where the adapter came from and how it runs."""
        parts = [f"{self.merged} merged"] if self.merged else []
        parts += [f"{self.side} as a low-rank side path"] if self.side else []
        return f"{self.folder} ({', '.join(parts)} layers)"


def _pattern_value(patterns: dict, module: str, default):
    # peft's get_pattern_key: a pattern matches a module name ending in it (at a dot), the longest key first.
    for key in sorted(patterns, key=len, reverse=True):
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _model_name(saved: str, modules: dict[str, nn.Module]) -> str | None:
    if saved in modules:
        return saved
    for old, new in LEGACY_PREFIXES:
        if saved.startswith(old) and (renamed := new + saved[len(old):]) in modules:
            return renamed
    return None


def _dims(module: nn.Module) -> tuple[int | None, int | None]:
    """(in, out) features of a linear-like module, None where it does not say."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return getattr(module, "in_features", None), getattr(module, "out_features", None)


def read_targets(folder: Path, model: nn.Module) -> list[Target]:
    """Every module the adapter changes, with its factors; AdapterError naming the file if any does not fit."""
    folder = Path(folder)
    config = read_config(folder)
    path = folder / WEIGHTS_FILE
    modules = dict(model.named_modules())
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise fail(path, f"cannot be read ({str(exc).splitlines()[0]})") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _TENSOR.match(key)
        if match is None or not key.startswith(PREFIX):
            raise fail(path, f"tensor {key} is not a LoRA factor (expected base_model.model.<module>.lora_A/B.weight)")
        pairs.setdefault(match["module"][len(PREFIX):], {})[match["part"]] = tensor
    if not pairs:
        raise fail(path, "holds no LoRA tensors")
    rank0, alpha0 = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    targets = []
    for saved, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise fail(path, f"{saved} has lora_{'AB'.replace(''.join(parts), '')} missing")
        name = _model_name(saved, modules)
        if name is None:
            raise fail(path, f"module {saved} does not exist in this model (an adapter for another base?)")
        a, b = parts["A"], parts["B"]
        if a.dim() != 2 or b.dim() != 2:
            raise fail(path, f"{saved} targets a {type(modules[name]).__name__}; only linear layers are supported")
        rank = int(_pattern_value(config.get("rank_pattern") or {}, saved, rank0))
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, saved, alpha0))
        if a.shape[0] != rank or b.shape[1] != rank:
            raise fail(path, f"{saved} has rank {a.shape[0]}×{b.shape[1]} but the config says {rank}")
        module = modules[name]
        fan_in, fan_out = _dims(module)
        if fan_in is None or fan_out is None:
            fan_in, fan_out = a.shape[1], _probe_out(module, a.shape[1])
            if fan_out is None:
                raise fail(path, f"{saved} is a {type(module).__name__} that does not take {a.shape[1]} inputs "
                                 "(an adapter for another base?)")
        if (a.shape[1], b.shape[0]) != (fan_in, fan_out):
            raise fail(path, f"{saved} is {b.shape[0]}×{a.shape[1]} in the adapter but {fan_out}×{fan_in} in the "
                              "model (an adapter for another base?)")
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        targets.append(Target(name, a.float(), b.float(), scale))
    return targets


def _probe_out(module: nn.Module, fan_in: int) -> int | None:
    """Output width of a module that does not state its features, from one row of zeros; None if it refuses it."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, fan_in, dtype=_dtype_of(module), device=_device_of(module)))
    except (RuntimeError, ValueError, TypeError):
        return None
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) else None


def _mergeable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and module.weight.is_floating_point() and module.weight.element_size() >= 2


def apply_adapter(model: nn.Module, folder: Path, mode: str = "auto") -> AppliedAdapter:
    """Apply the LoRA adapter in `folder` to `model` in place: merge into float linears, side path elsewhere.

    `mode` "merge" refuses modules that cannot be merged; "side" keeps every target as a side path.
    """
    if mode not in MODES:
        raise ConfigError(f"adapter mode {mode!r} is not valid: use one of {', '.join(MODES)}")
    targets = read_targets(Path(folder), model)
    modules = dict(model.named_modules())
    if mode == "merge":
        for target in targets:
            if not _mergeable(modules[target.name]):
                raise fail(Path(folder) / WEIGHTS_FILE, f"{target.name} is a {type(modules[target.name]).__name__}"
                                                         ", whose weights cannot take a merged LoRA")
    merged = side = 0
    with torch.no_grad():
        for target in targets:
            module = modules[target.name]
            if mode != "side" and _mergeable(module):
                weight = module.weight
                delta = (target.b.to(weight.device) @ target.a.to(weight.device)) * target.scale
                weight.copy_((weight.float() + delta).to(weight.dtype))  # rounded once, from float32
                merged += 1
                continue
            parent_name, _, attr = target.name.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            device = _device_of(module)
            dtype = _dtype_of(module)
            setattr(parent, attr, LoraSidePath(module, target.a.to(device), target.b.to(device), target.scale, dtype))
            side += 1
    return AppliedAdapter(str(folder), merged, side)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _dtype_of(module: nn.Module) -> torch.dtype:
    # The side path runs in the module's activation dtype: its first float parameter (scales of a quantized one).
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point() and tensor.element_size() >= 2:
            return tensor.dtype
    return torch.float32
