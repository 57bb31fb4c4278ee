"""compressed-tensors W4A16 checkpoints ("pack-quantized", symmetric int4 groups), served by the int4 kernel.

Per quantized linear (in → out): `weight_packed` int32 (out, in/8) with eight 4-bit values per word in natural
order from the lowest bits, each stored with +8 offset; `weight_scale` (out, in/g); `weight_shape` (2,).
W[o, i] = (q - 8) · s, which is the int4 kernel's form with zero 0.
"""

from __future__ import annotations

import torch
from torch import nn

from vlassist.engine.quant.base import CheckpointMismatch, Target, WeightFormat, expect_shape, take_bias
from vlassist.engine.quant.linear import Int4Linear
from vlassist.errors import ConfigError


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """int32 (rows, cols/8) → uint8 (rows, cols) of stored values 0..15 (the signed value plus 8)."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    return ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF).reshape(packed.shape[0], -1).to(torch.uint8)


class W4A16(WeightFormat):
    """compressed-tensors pack-quantized, 4-bit symmetric weights, 16-bit activations."""

    name = "w4a16"
    required = ("weight_packed", "weight_scale")
    optional = ("bias", "weight_shape")

    def __init__(self, group_size: int | None):
        self.group_size = group_size  # None: one group per output row (strategy "channel")

    def build(self, target: Target, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
        """Unpack to 4-bit values and scales and hand them to the int4 kernel."""
        n_in, n_out = target.linear.in_features, target.linear.out_features
        g = self.group_size or n_in
        if n_in % g:
            raise CheckpointMismatch(f"{target.where}: {target.name} has {n_in} inputs, not a multiple of "
                                     f"group_size {g} from quantization_config")
        why = f"{n_in} inputs × {n_out} outputs, group_size {g}"
        if "weight_shape" in tensors and [int(v) for v in tensors["weight_shape"].tolist()] != [n_out, n_in]:
            raise CheckpointMismatch(f"{target.where}: {target.name}.weight_shape is "
                                     f"{tensors['weight_shape'].tolist()}, the model config wants {[n_out, n_in]}")
        expect_shape(target, "weight_packed", tensors["weight_packed"], (n_out, n_in // 8), why)
        expect_shape(target, "weight_scale", tensors["weight_scale"], (n_out, n_in // g), why)
        scales = tensors["weight_scale"].float()
        return Int4Linear.from_ints(unpack(tensors["weight_packed"]), scales, torch.zeros_like(scales), g,
                                    take_bias(target, tensors), dtype)

    def describe(self) -> str:
        """One line for `vlassist info`."""
        return f"w4a16: compressed-tensors 4-bit symmetric, group {self.group_size or 'per channel'} (int4 kernel)"


def detect(quant: dict, where: str) -> W4A16 | None:
    """The W4A16 format a compressed-tensors quantization_config describes; other schemes refused by name."""
    if str(quant.get("quant_method", "")).lower() != "compressed-tensors":
        return None
    groups = list((quant.get("config_groups") or {}).values())
    fmt = quant.get("format")
    if fmt != "pack-quantized" or len(groups) != 1:
        raise ConfigError(f"{where}: compressed-tensors format {fmt!r} with {len(groups)} config groups is not "
                          "supported; vlassist loads pack-quantized W4A16 (one group)")
    weights, acts = groups[0].get("weights") or {}, groups[0].get("input_activations")
    strategy = weights.get("strategy")
    if (weights.get("num_bits") != 4 or weights.get("type", "int") != "int" or not weights.get("symmetric", False)
            or acts is not None or strategy not in ("group", "channel")):
        raise ConfigError(f"{where}: compressed-tensors scheme {weights.get('num_bits')}-bit "
                          f"{'symmetric' if weights.get('symmetric') else 'asymmetric'} {strategy} with "
                          f"{'quantized' if acts else '16-bit'} activations is not supported; vlassist loads "
                          "W4A16 (4-bit symmetric group or channel weights, 16-bit activations)")
    if weights.get("actorder") not in (None, False, "static"):
        raise ConfigError(f"{where}: compressed-tensors actorder={weights.get('actorder')!r} (activation-order "
                          "groups) is not supported; vlassist loads W4A16 with groups in input order")
    group = weights.get("group_size") if strategy == "group" else None
    if strategy == "group" and (not isinstance(group, int) or group < 32 or group % 32):
        raise ConfigError(f"{where}: compressed-tensors group_size={group!r} is not supported (a multiple of 32)")
    return W4A16(group)
