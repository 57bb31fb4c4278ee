"""AWQ 4-bit "gemm" checkpoints as Qwen ships them (Qwen2.5-VL-*-Instruct-AWQ), served by the int4 kernel.

Per quantized linear (in → out) the checkpoint holds `qweight` int32 (in, out/8), `qzeros` int32 (in/g, out/8)
and `scales` fp16 (in/g, out); W[o, i] = (q[i, o] - z[i/g, o]) · s[i/g, o]. Each int32 carries eight 4-bit values
in AutoAWQ's interleaved column order: the nibble at bit offset 4·k holds column AWQ_ORDER[k] of its group of eight.
"""

from __future__ import annotations

import torch
from torch import nn

from vlassist.engine.quant.base import CheckpointMismatch, Target, WeightFormat, expect_shape, take_bias
from vlassist.engine.quant.linear import Int4Linear
from vlassist.errors import ConfigError

# The packing order AutoAWQ documents (casper-hansen/AutoAWQ, awq/utils/packing_utils.py: AWQ_ORDER, and its
# inverse AWQ_REVERSE_ORDER used to unpack); vLLM's and transformers' AWQ code use the same order.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_COLUMN_SOURCE = tuple(AWQ_ORDER.index(column) for column in range(8))  # nibble slot holding column k


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """int32 (rows, cols/8) in AWQ order → uint8 (rows, cols) of values 0..15 in natural column order."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    nibbles = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF  # (rows, cols/8, slot)
    return nibbles[..., list(_COLUMN_SOURCE)].reshape(packed.shape[0], -1).to(torch.uint8)


def pack(values: torch.Tensor) -> torch.Tensor:
    """uint8 (rows, cols) of 0..15 → int32 (rows, cols/8) in AWQ order (what AutoAWQ writes)."""
    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows, cols // 8, 8)[..., list(AWQ_ORDER)]  # slot k ← column ORDER[k]
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=values.device)
    words = (grouped << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


class Awq(WeightFormat):
    """AWQ gemm, 4 bits, per-group scales and zero points."""

    name = "awq"
    required = ("qweight", "qzeros", "scales")

    def __init__(self, group_size: int):
        self.group_size = group_size

    def build(self, target: Target, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
        """Unpack to 4-bit values and scales and hand them to the int4 kernel."""
        n_in, n_out, g = target.linear.in_features, target.linear.out_features, self.group_size
        if n_in % g:
            raise CheckpointMismatch(f"{target.where}: {target.name} has {n_in} inputs, not a multiple of "
                                     f"group_size {g} from quantization_config")
        why = f"{n_in} inputs × {n_out} outputs, group_size {g}"
        expect_shape(target, "qweight", tensors["qweight"], (n_in, n_out // 8), why)
        expect_shape(target, "qzeros", tensors["qzeros"], (n_in // g, n_out // 8), why)
        expect_shape(target, "scales", tensors["scales"], (n_in // g, n_out), why)
        for part in ("qweight", "qzeros"):
            if tensors[part].dtype != torch.int32:
                raise CheckpointMismatch(f"{target.where}: {target.name}.{part} is {tensors[part].dtype}, not int32")
        q = unpack(tensors["qweight"]).t()  # (out, in)
        zeros = unpack(tensors["qzeros"]).t().float()  # (out, in / g)
        scales = tensors["scales"].t().float()  # (out, in / g)
        return Int4Linear.from_ints(q, scales, (8 - zeros) * scales, g, take_bias(target, tensors), dtype)

    def describe(self) -> str:
        """One line for `vlassist info`."""
        return f"awq: 4-bit gemm, group {self.group_size}, zero points (int4 kernel)"


def detect(quant: dict, where: str) -> Awq | None:
    """The AWQ format a config's quantization_config describes, None if not AWQ; unsupported variants refused."""
    if str(quant.get("quant_method", "")).lower() != "awq":
        return None
    bits, version = quant.get("bits", quant.get("w_bit")), str(quant.get("version", "gemm")).lower()
    group = quant.get("group_size", quant.get("q_group_size"))
    zero_point = quant.get("zero_point", True)
    if bits != 4 or version != "gemm" or not zero_point:
        raise ConfigError(f"{where}: AWQ with bits={bits}, version={version}, zero_point={zero_point} is not "
                          "supported; vlassist loads 4-bit gemm AWQ with zero points")
    if not isinstance(group, int) or group < 32 or group % 32:
        raise ConfigError(f"{where}: AWQ group_size={group!r} is not supported (use a multiple of 32, e.g. 128)")
    return Awq(group)
