"""FP8 block-wise checkpoints as Qwen ships them (Qwen3-VL-*-FP8): e4m3 weights, one scale per 128×128 tile.

Per quantized linear: `weight` float8_e4m3fn (out, in) and `weight_scale_inv` float32 (⌈out/b0⌉, ⌈in/b1⌉);
W = weight · scale of its tile. On a CUDA GPU with FP8 (compute capability 8.9+: RTX 40xx, L4, H100/H200) the
weights stay in 8 bits; other GPUs are refused. On the CPU they are widened to the CPU's float32 at load, so
small FP8 checkpoints run (and are tested) there.
"""

from __future__ import annotations

import torch
from torch import nn

from vlassist.engine.quant.base import Target, WeightFormat, expect_shape, take_bias
from vlassist.engine.quant.linear import Fp8BlockLinear, dequantize_fp8_blocks
from vlassist.errors import ConfigError

FP8_CAPABILITY = (8, 9)


class Fp8Blocks(WeightFormat):
    """Block-wise e4m3 weights with `weight_scale_inv`."""

    name = "fp8"
    required = ("weight", "weight_scale_inv")

    def __init__(self, block: tuple[int, int]):
        self.block = block
        self.device = "cpu"

    def marks(self, suffix: str, dtype: str) -> bool:
        """The scales, and any 8-bit float weight, mark a quantized linear (a weight without scales is refused)."""
        return suffix == "weight_scale_inv" or (suffix == "weight" and dtype.startswith("F8"))

    def check_device(self, device: str) -> None:
        """Refuse CUDA GPUs without FP8 in one line naming the GPU."""
        self.device = device
        if device != "cuda":
            return
        major, minor = torch.cuda.get_device_capability(0)
        if (major, minor) < FP8_CAPABILITY:
            raise ConfigError(f"FP8 weights need a GPU with FP8 support (compute capability 8.9+, e.g. RTX 40xx, "
                              f"H100); {torch.cuda.get_device_name(0)} is {major}.{minor}: use the AWQ or bf16 "
                              "checkpoint on this GPU")

    def build(self, target: Target, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
        """An 8-bit layer on FP8 GPUs; on the CPU a plain Linear holding the widened weight."""
        n_in, n_out = target.linear.in_features, target.linear.out_features
        b0, b1 = self.block
        weight, scale = tensors["weight"], tensors["weight_scale_inv"]
        expect_shape(target, "weight", weight, (n_out, n_in), "the model config's layer size")
        if weight.dtype != torch.float8_e4m3fn:
            raise ConfigError(f"{target.where}: {target.name}.weight is {weight.dtype}, not float8_e4m3fn")
        expect_shape(target, "weight_scale_inv", scale, (-(-n_out // b0), -(-n_in // b1)),
                     f"one scale per {b0}×{b1} block of a {n_out}×{n_in} weight")
        bias = take_bias(target, tensors)
        if weight.device.type == "cuda":
            return Fp8BlockLinear(weight, scale, self.block, bias, dtype)
        linear = nn.Linear(n_in, n_out, bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(dequantize_fp8_blocks(weight, scale, self.block, dtype), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
        return linear

    def describe(self) -> str:
        """One line for `vlassist info`."""
        how = "8-bit on the GPU" if self.device == "cuda" else "widened to float32 at load on the CPU"
        return f"fp8: e4m3, {self.block[0]}×{self.block[1]} blocks ({how})"


def detect(quant: dict, where: str) -> Fp8Blocks | None:
    """The FP8 format a config's quantization_config describes; per-tensor or other FP8 variants refused."""
    if str(quant.get("quant_method", "")).lower() != "fp8":
        return None
    block = quant.get("weight_block_size")
    fmt = str(quant.get("fmt", "e4m3")).lower()
    scheme = str(quant.get("activation_scheme", "dynamic")).lower()
    if (fmt != "e4m3" or scheme != "dynamic" or not isinstance(block, list) or len(block) != 2
            or not all(isinstance(b, int) and b > 0 for b in block)):
        raise ConfigError(f"{where}: FP8 with fmt={fmt}, activation_scheme={scheme}, weight_block_size={block} is "
                          "not supported; vlassist loads block-wise e4m3 FP8 (weight_block_size [128, 128])")
    return Fp8Blocks((block[0], block[1]))
