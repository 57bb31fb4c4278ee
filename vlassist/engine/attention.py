"""Text attention without a dense mask: prefill after a reused prefix attends in query blocks.

transformers builds a (new tokens × all tokens) boolean mask for a prefill that continues a cache, and PyTorch's
SDPA turns it into a float one: 5·L² bytes (18 GB for a 68k-token prompt). Here the mask of such a call is never
built; attention runs over blocks of queries, each with a small bottom-right causal mask of its own, so memory
grows linearly with the prompt. Everything else (fresh prefill, decode steps, explicit 4D masks of the static
buffers) goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

NAME = "vlassist_sdpa"
# Mask elements one query block may use (bool + float copy: 5 bytes each). Small on the CPU, where activations are
# small too; larger on accelerators, where each SDPA call has a fixed launch cost.
MASK_ELEMENTS = {"cpu": 2**19}
DEFAULT_MASK_ELEMENTS = 2**24
MIN_BLOCK = 16  # queries per block at the least, however long the context


def _mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=causal_mask_function,
          attention_mask=None, local_size=None, allow_is_causal_skip=True, **kwargs):
    """No mask where the attention below applies causality itself; else transformers' SDPA mask."""
    # Only a growing cache (keys = cached + new, nothing padded) qualifies; static buffers need their mask.
    plain_causal = (attention_mask is None and local_size is None and allow_is_causal_skip
                    and mask_function is causal_mask_function and isinstance(q_offset, int)
                    and kv_offset == 0 and kv_length == q_offset + q_length)
    if plain_causal:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
                     local_size, allow_is_causal_skip, **kwargs)


def block_size(kv_length: int, device: torch.device) -> int:
    """Queries per block, so that one block's mask stays within the device's element budget."""
    return max(MIN_BLOCK, MASK_ELEMENTS.get(device.type, DEFAULT_MASK_ELEMENTS) // max(kv_length, 1))


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA; a multi-token query continuing a cache, with no mask given, runs in blocks (bottom-right causal)."""
    q_length, kv_length = query.shape[2], key.shape[2]
    if attention_mask is not None or q_length <= 1 or q_length >= kv_length or is_causal is False:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # (B, heads, K, D): linear in K
    past = kv_length - q_length
    block = block_size(kv_length, query.device)
    out = torch.empty_like(query)  # (B, heads, Q, D)
    columns = torch.arange(kv_length, device=query.device)
    for start in range(0, q_length, block):
        stop = min(start + block, q_length)
        seen = past + stop  # keys any query of this block may see
        rows = torch.arange(past + start, past + stop, device=query.device)
        allowed = columns[:seen].view(1, seen) <= rows.view(-1, 1)  # (block, seen)
        out[:, :, start:stop] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:stop], key[:, :, :seen], value[:, :, :seen], attn_mask=allowed, dropout_p=dropout,
            scale=scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, Q, heads, D), as transformers' SDPA returns it


AttentionInterface.register(NAME, _attention)
AttentionMaskInterface.register(NAME, _mask)


def install(model) -> None:
    """Make the text model of `model` (loaded with SDPA) use the blockwise attention above."""
    model.config.get_text_config()._attn_implementation = NAME
