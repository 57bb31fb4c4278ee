"""Vision-tower attention in one call per layer instead of one SDPA call per window.

The stock SDPA path of the Qwen-VL vision towers splits every layer's input at `cu_seqlens` on the host
(a device sync per layer) and runs one small SDPA per window: ~100 windows x 28 layers for a 1024² image.
The towers already have a variable-length path, taken when the vision config names a flash-attention
implementation; registering this function under such a name routes them there, so only the attention kernel
changes, never the rest of the layer. On CUDA it runs PyTorch's own varlen flash kernel (one launch per layer);
elsewhere it batches the windows of equal length into one SDPA call each, which is the same math as the stock
loop. Only the vision config is switched: the language model keeps its own attention implementation.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

log = logging.getLogger(__name__)

NAME = "vlassist_varlen_flash"  # "flash" in the name is what selects the towers' variable-length branch
_failed: list[str] = []  # why the CUDA varlen kernel was given up on, once per process


def varlen_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                     cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """Attention within each [cu[i], cu[i+1]) segment: q/k/v (1, H, T, D) -> ((1, T, H, D), None)."""
    cu = cu_seq_lens_q
    if cu is None:  # not called from a varlen branch: plain full attention, as stock SDPA would do
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
        return out.transpose(1, 2), None
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and not _failed:
        try:
            return _flash_varlen(query, key, value, cu, int(max_length_q), scaling), None
        except Exception as exc:  # an older torch or an unsupported shape: the batched path below is exact
            _failed.append(f"{type(exc).__name__}: {exc}")
            log.warning("varlen flash attention unavailable, batching windows instead: %s", _failed[0][:200])
    return _batched_sdpa(query, key, value, cu, scaling), None


def _flash_varlen(query, key, value, cu, max_len: int, scaling) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, H, D)
    cu = cu.to(torch.int32)
    default = query.shape[-1] ** -0.5
    if scaling is None or abs(scaling - default) < 1e-12:
        out = varlen_attn(q, k, v, cu, cu, max_len, max_len)  # (T, H, D)
    else:
        out = varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling)
    return out.unsqueeze(0)  # (1, T, H, D)


def _batched_sdpa(query, key, value, cu, scaling) -> torch.Tensor:
    """Windows of one length stacked as a batch: one SDPA call per distinct length (a handful per image)."""
    bounds = cu.tolist()
    by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            by_length.setdefault(end - start, []).append(start)
    q, k, v = query[0], key[0], value[0]  # (H, T, D)
    out = torch.empty_like(q)
    for length, starts in by_length.items():
        index = (torch.tensor(starts, device=q.device)[:, None]
                 + torch.arange(length, device=q.device)).reshape(-1)  # (W * length,)
        windows = [t[:, index].unflatten(1, (len(starts), length)).transpose(0, 1) for t in (q, k, v)]  # (W, H, n, D)
        part = F.scaled_dot_product_attention(*windows, scale=scaling)  # (W, H, n, D)
        out[:, index] = part.transpose(0, 1).flatten(1, 2)
    return out.transpose(0, 1).unsqueeze(0)  # (1, T, H, D)


AttentionInterface.register(NAME, varlen_attention)


def use_varlen(model, on: bool = True) -> str:
    """Switch the model's vision tower to one attention call per layer (or back to SDPA); returns the name in use."""
    config = model.model.visual.config
    if on and config._attn_implementation in ("sdpa", NAME):
        config._attn_implementation = NAME
    elif not on and config._attn_implementation == NAME:
        config._attn_implementation = "sdpa"
    return config._attn_implementation
