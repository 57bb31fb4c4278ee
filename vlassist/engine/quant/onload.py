"""int8 and int4 weight-only quantization of a 16-bit checkpoint at load, kept on disk for the next start.

The text model's decoder-layer linears are quantized (as the official AWQ checkpoints do, the vision tower and
lm_head stay 16-bit): int8 with one symmetric scale per output row, int4 with a scale and zero per group of 128
inputs (asymmetric min/max, the int4 kernel's form). The integers and float32 scales are written to a
safetensors file under the cache folder, named by a hash of the checkpoint's weight files (name, size, mtime) and
the scheme, so a restart reads them instead of quantizing again and a changed checkpoint never reuses old ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from vlassist.engine.quant.base import Target, WeightFormat, expect_shape, take_bias
from vlassist.engine.quant.linear import Int4Linear, Int8Linear

log = logging.getLogger(__name__)

SCHEME_VERSION = 1  # bump when the quantization itself changes, so kept files from older code are not used
INT4_GROUPS = (128, 64, 32)  # the first one that divides a layer's inputs
TEXT_LINEAR = re.compile(r"(^|\.)language_model\.layers\.\d+\.")


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float → int8 values and one float32 scale per row: W ≈ q · s."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def int4_group(in_features: int) -> int:
    """The int4 group size used for a layer with this many inputs."""
    for group in INT4_GROUPS:
        if in_features % group == 0:
            return group
    raise ValueError(f"{in_features} inputs is not a multiple of 32")


def int4_quantize(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float → uint8 values 0..15, float32 scales and zeros (out, in/group): W ≈ (q - 8) · s + z."""
    out_features, in_features = weight.shape
    w = weight.float().reshape(out_features, in_features // group, group)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round((w - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(out_features, in_features), scales, low + 8 * scales


class OnLoad(WeightFormat):
    """int8 or int4 made at load from a 16-bit checkpoint's text-model linears, kept in a file for restarts."""

    required = ("weight",)
    on_load = True

    def __init__(self, bits: int, cache_file: Path | None):
        self.name = f"int{bits}"
        self.bits = bits
        self.cache_file = cache_file
        self.kept: dict[str, torch.Tensor] = {}  # tensors read from the cache file (a restart)
        self.made: dict[str, torch.Tensor] = {}  # tensors quantized now, to be written to it
        self.state = "not kept (no cache folder)"

    def targets(self, names: list[str]) -> set[str]:
        """Of the model's linear layers (names), those quantized: the text model's decoder layers."""
        return {name for name in names if TEXT_LINEAR.search(name)}

    def open_cache(self) -> None:
        """Read the kept tensors (into host memory) if an earlier start left them."""
        if self.cache_file is None or not self.cache_file.is_file():
            return
        from safetensors.torch import load_file

        try:
            self.kept = load_file(str(self.cache_file), device="cpu")  # moved to the device one layer at a time
            self.state = f"read from {self.cache_file}"
        except Exception as exc:  # noqa: BLE001 (safetensors has its own error types) damaged: quantize again
            log.warning("ignoring the damaged quantized-weights file %s: %s", self.cache_file, exc)
            self.kept = {}

    def build(self, target: Target, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
        """The quantized layer, from kept integers when the cache has them, else quantized now."""
        n_in, n_out = target.linear.in_features, target.linear.out_features
        bias = take_bias(target, tensors)
        name, device = target.name, tensors["weight"].device
        if self.bits == 8:
            if f"{name}.q" in self.kept:
                q, scales = self.kept.pop(f"{name}.q").to(device), self.kept.pop(f"{name}.scales").to(device)
            else:
                expect_shape(target, "weight", tensors["weight"], (n_out, n_in), "the model config's layer size")
                q, scales = int8_quantize(tensors["weight"])
                self.made.update({f"{name}.q": q.cpu(), f"{name}.scales": scales.cpu()})
            return Int8Linear(q, scales, bias, dtype)
        group = int4_group(n_in)
        if f"{name}.q" in self.kept:
            packed, scales, zeros = (self.kept.pop(f"{name}.{part}").to(device) for part in ("q", "scales", "zeros"))
            q = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(n_out, n_in)
        else:
            expect_shape(target, "weight", tensors["weight"], (n_out, n_in), "the model config's layer size")
            q, scales, zeros = int4_quantize(tensors["weight"], group)
            packed = (q[:, ::2] << 4) | q[:, 1::2]  # two values a byte on disk
            self.made.update({f"{name}.q": packed.cpu(), f"{name}.scales": scales.cpu(), f"{name}.zeros": zeros.cpu()})
        return Int4Linear.from_ints(q, scales, zeros, group, bias, dtype)

    def finish(self) -> None:
        """Write what was quantized now to the cache file (atomically); a read-only folder only costs time."""
        if not self.made or self.cache_file is None:
            return
        from safetensors.torch import save_file

        tmp = self.cache_file.with_suffix(f".tmp{os.getpid()}")
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous().cpu() for k, v in self.made.items()}, str(tmp))
            os.replace(tmp, self.cache_file)
            self.state = f"written to {self.cache_file}"
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            self.state = f"not kept ({self.cache_file.parent}: {exc.strerror or exc}); the next start quantizes again"
            log.warning("quantized weights not kept: %s", self.state)
        self.made = {}

    def describe(self) -> str:
        """One line for `vlassist info`."""
        how = "per-row scales" if self.bits == 8 else "groups of up to 128 with zero points"
        return f"{self.name}: quantized at load, {how}; {self.state}"


def cache_file(cache_root: Path, folder: Path, files: list[Path], bits: int) -> Path:
    """Where the int`bits` weights of the checkpoint in `folder` are kept: one file per checkpoint state."""
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = json.dumps({"folder": str(folder.resolve()), "files": stats, "bits": bits, "version": SCHEME_VERSION,
                      "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_root) / "quantized" / f"{folder.name}-int{bits}-{digest}.safetensors"
