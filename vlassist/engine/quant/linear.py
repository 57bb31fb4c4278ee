"""Quantized linear layers: each forward(x) is a plain function of x, so other code may wrap the module.

Int4Linear serves every 4-bit format (AWQ, compressed-tensors W4A16, int4 on load) through PyTorch's built-in
tinygemm kernels (`_weight_int4pack_mm` on CUDA, `_weight_int4pack_mm_for_cpu` on the CPU). Their dequantised
weight is `(q - 8) * scale + zero` per group along the input dimension, with `zero` a float, so any 4-bit scheme
with a per-group scale and integer zero point maps onto it exactly: `zero = (8 - z) * scale`.
Int8Linear holds per-output-channel int8 weights; Fp8BlockLinear holds e4m3 weights with per-block scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _inner_k_tiles(in_features: int) -> int:
    """The largest tile count the CUDA int4 layout accepts for this width (it needs K % (tiles * 16) == 0)."""
    for tiles in (8, 4, 2):
        if in_features % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"in_features {in_features} is not a multiple of 32, which the int4 kernel needs")


class Int4Linear(nn.Module):
    """y = x Wᵀ + b with W in 4 bits, one scale and one zero per `group_size` inputs of each output row."""

    def __init__(self, in_features: int, out_features: int, group_size: int, packed: torch.Tensor,
                 scales_and_zeros: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", packed)  # device-specific tinygemm layout
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (in / group, out, 2)
        self.register_buffer("bias", bias)

    @classmethod
    def from_ints(cls, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                  bias: torch.Tensor | None, dtype: torch.dtype) -> Int4Linear:
        """Build from unsigned 4-bit values q (out, in) in 0..15 with W = (q - 8) * scale + zero per group.

        `scales` and `zeros` are (out, in / group_size); the packed weight lands on q's device.
        """
        out_features, in_features = q.shape
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of the group size {group_size}")
        q = q.to(torch.int32)
        if q.device.type == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        else:
            nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # (out, in / 2): two values a byte
            packed = torch.ops.aten._convert_weight_to_int4pack(nibbles.contiguous(), _inner_k_tiles(in_features))
        sz = torch.stack([scales.t(), zeros.t()], dim=-1).to(dtype).contiguous()  # (in / group, out, 2)
        return cls(in_features, out_features, group_size, packed, sz,
                   None if bias is None else bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) → (..., out)."""
        flat = x.reshape(-1, self.in_features)
        if flat.device.type == "cpu":
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size,
                                                             self.scales_and_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm(flat, self.packed, self.group_size, self.scales_and_zeros)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group={self.group_size}"


class Int8Linear(nn.Module):
    """y = (x Wᵀ) · scale + b with W in int8, one scale per output row."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", weight.to(torch.int8).contiguous())  # (out, in)
        self.register_buffer("scales", scales.to(dtype).contiguous())  # (out,)
        self.register_buffer("bias", None if bias is None else bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) → (..., out)."""
        flat = x.reshape(-1, self.in_features)
        if flat.device.type == "cpu":
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        else:  # the CUDA int8pack kernel is slow at batch 1; a compiled decode fuses this cast into the product
            out = F.linear(flat, self.weight_int8.to(flat.dtype)) * self.scales
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                          dtype: torch.dtype) -> torch.Tensor:
    """e4m3 weight (out, in) times its per-block scale (⌈out/b0⌉, ⌈in/b1⌉) → a `dtype` weight (out, in)."""
    rows, cols = weight.shape
    if rows % block[0] == 0 and cols % block[1] == 0:  # whole tiles: broadcast the scales, no expanded copy
        tiles = weight.to(dtype).view(rows // block[0], block[0], cols // block[1], block[1])
        return (tiles * scale_inv.to(dtype)[:, None, :, None]).view(rows, cols)
    scale = scale_inv.to(torch.float32).repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return (weight.to(torch.float32) * scale).to(dtype)


class Fp8BlockLinear(nn.Module):
    """y = x Wᵀ + b with W in float8 e4m3 and one scale per (block[0] × block[1]) tile, on FP8 GPUs."""

    def __init__(self, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                 bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.block = block
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale_inv", scale_inv.to(torch.float32))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) → (..., out); the weight is read in 8 bits and widened inside the (compiled) step."""
        weight = dequantize_fp8_blocks(self.weight_fp8, self.weight_scale_inv, self.block, x.dtype)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3, block={self.block}"
