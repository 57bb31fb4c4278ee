"""Weight formats: which one a checkpoint (or VLASSIST_QUANT) asks for, one module per format behind one interface.

`choose()` is what the loader asks; `load.load_quantized()` builds the model with the chosen format's layers.
Formats: awq.py (AWQ gemm int4), fp8.py (block-wise e4m3), w4a16.py (compressed-tensors int4), onload.py (int8 /
int4 made at load from 16-bit weights and kept on disk); linear.py holds the layers and their kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vlassist.engine.quant import awq, fp8, w4a16
from vlassist.engine.quant.base import CheckpointMismatch, WeightFormat
from vlassist.engine.quant.linear import Fp8BlockLinear, Int4Linear, Int8Linear
from vlassist.engine.quant.onload import OnLoad, cache_file
from vlassist.errors import ConfigError

__all__ = ["CheckpointMismatch", "WeightFormat", "choose", "checkpoint_quantization", "count_parameters"]

DETECTORS = (awq.detect, fp8.detect, w4a16.detect)
ON_LOAD = ("int8", "int4")
DTYPE_FORMATS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
QUANTIZED_LAYERS = (Int4Linear, Int8Linear, Fp8BlockLinear)


def count_parameters(model: nn.Module) -> int:
    """The model's parameter count, a quantized layer counting its in × out (+ bias) weights as the 16-bit one."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, QUANTIZED_LAYERS):
            count += module.in_features * module.out_features + (0 if module.bias is None else module.out_features)
    return count


def checkpoint_quantization(folder: Path) -> dict | None:
    """config.json's quantization_config (top level or the text config's), None for a 16-bit checkpoint."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    return quant or None


def choose(folder: Path, requested: str, device: str, cache_root: Path | None,
           weight_files: list[Path]) -> WeightFormat | None:
    """The format to load `folder` with: the checkpoint's own, or `requested` (int8|int4) on a 16-bit one.

    None means plain 16-bit loading. Unknown or unsupported quantization methods, and on-load quantization asked
    of an already quantized checkpoint, are refused in one line.
    """
    where = str(Path(folder) / "config.json")
    quant = checkpoint_quantization(folder)
    fmt = None
    if quant is not None:
        for detect in DETECTORS:
            fmt = detect(quant, where)
            if fmt is not None:
                break
        else:
            raise ConfigError(f"{where}: quant_method {quant.get('quant_method')!r} is not supported; vlassist loads "
                              "awq (gemm), fp8 (block-wise) and compressed-tensors w4a16 checkpoints")
        if requested in ON_LOAD:
            raise ConfigError(f"VLASSIST_QUANT={requested} quantizes 16-bit checkpoints; {folder} is already "
                              f"quantized ({fmt.name}): unset it (or use none) for this model")
    elif requested in ON_LOAD:
        bits = int(requested[3:])
        fmt = OnLoad(bits, cache_file(cache_root, Path(folder), weight_files, bits) if cache_root else None)
    if fmt is not None:
        fmt.check_device(device)
    return fmt
