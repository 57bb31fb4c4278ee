"""The one interface every weight format implements: which tensors make a quantized linear, and how to build it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlassist.errors import ConfigError


class CheckpointMismatch(ConfigError):
    """A checkpoint's tensors do not match its config or each other (missing scales, wrong group size …)."""


@dataclass
class Target:
    """One linear layer to replace: its name in the model and the stock (unloaded) layer it stands in for."""

    name: str
    linear: nn.Linear
    where: str  # the weight file its tensors come from, for error messages


class WeightFormat:
    """A weight format: `name` (Engine info `weights_format`), the tensors of one quantized linear, its build.

    `marks(suffix, dtype)` says whether a checkpoint tensor named `<module>.<suffix>` with safetensors dtype `dtype`
    shows that `<module>` is stored quantized; `required` and `optional` are the suffixes such a module must and may
    have; `build` turns them into a module whose forward(x) is a plain function of x.
    """

    name = ""
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ("bias",)
    on_load = False  # True: quantized here from 16-bit weights rather than stored quantized in the checkpoint

    def marks(self, suffix: str, dtype: str) -> bool:
        """True when a tensor `<module>.<suffix>` of this dtype belongs to a quantized linear."""
        return suffix in self.required

    def check_device(self, device: str) -> None:
        """Raise ConfigError when this format cannot run on `device` (default: runs everywhere)."""

    def build(self, target: Target, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
        """The module that replaces `target.linear`, from its tensors (on the model's device)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for `vlassist info`."""
        return self.name


def expect_shape(target: Target, part: str, tensor: torch.Tensor, shape: tuple[int, ...], why: str) -> None:
    """Refuse a tensor whose shape is not `shape`, in one line naming the file, the tensor and what it implies."""
    if tuple(tensor.shape) != tuple(shape):
        raise CheckpointMismatch(
            f"{target.where}: {target.name}.{part} has shape {tuple(tensor.shape)}, expected {tuple(shape)} ({why})")


def take_bias(target: Target, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The layer's bias from the checkpoint, refused if the config says it has none or it is the wrong size."""
    bias = tensors.get("bias")
    if (bias is None) != (target.linear.bias is None):
        raise CheckpointMismatch(f"{target.where}: {target.name}.bias is "
                                 f"{'missing' if bias is None else 'present but the model config has none'}")
    if bias is not None:
        expect_shape(target, "bias", bias, (target.linear.out_features,), "one value per output")
    return bias
