"""Image normalisation and patchify on the model's device, the same arithmetic as the processor's PIL backend.

The PIL backend does this in NumPy on the host (35-150 ms for a 1024² to 1920x1080 image on a small CPU) and
then ships float32 rows (~50 MB) to the GPU; here only the uint8 pixels travel and the rest is a few kernels.
"""

from __future__ import annotations

import numpy as np
import torch


def supports(image_processor, size: tuple[int, int]) -> bool:
    """True if `patchify` reproduces this processor for an image of `size` (width, height)."""
    needed = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor")
    if not all(getattr(image_processor, name, None) is not None for name in needed):
        return False
    factor = image_processor.patch_size * image_processor.merge_size
    return (getattr(image_processor, "do_rescale", True) and getattr(image_processor, "do_normalize", True)
            and size[0] % factor == 0 and size[1] % factor == 0)


def patchify(image, image_processor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """An RGB PIL image already at its model-input size -> (pixel rows (N, C*T*P*P) float32, grid (1, 3))."""
    p, m, t = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).to(device)  # (H, W, C) uint8
    # Same rounding as the processor: rescale in float64, then float32 for the normalisation.
    x = (pixels.permute(2, 0, 1).double() * image_processor.rescale_factor).float()  # (C, H, W)
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32, device=device).view(-1, 1, 1)
    x = (x - mean) / std
    c, h, w = x.shape
    gh, gw = h // p, w // p
    x = x.reshape(c, gh // m, m, p, gw // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, P, P)
    x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)  # each frame repeated over the temporal patch
    rows = x.reshape(gh * gw, c * t * p * p)
    return rows, torch.tensor([[1, gh, gw]], device=device)
