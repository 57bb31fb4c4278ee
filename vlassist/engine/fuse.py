"""The text model's q/k/v and gate/up projections as one matrix product each, fused once at load.

A batch-1 decode step is a chain of matrix-vector products bound by reading the weights. Seven per layer (q, k,
v, o, gate, up, down) means seven kernels, and the k and v ones (3584 → 512 on the 7B) are too small to reach
full memory bandwidth. Concatenating q/k/v and gate/up makes it four per layer with the same bytes read. The
weights are concatenated once and the original Linear layers' parameters become views of the fused tensors,
so memory and the state dict stay as they were.
"""

from __future__ import annotations

import logging
import sys

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Attention classes whose forward `_attention_forward` reproduces (transformers 5.x), with one fused product.
ATTENTION_CLASSES = ("Qwen2VLAttention", "Qwen2_5_VLAttention")
_fused_classes: dict[tuple[type, object], type] = {}


def _concatenate(owner: nn.Module, linears: list[nn.Linear], name: str) -> list[int]:
    """Store the linears' weights (and biases) as one tensor on `owner`; theirs become views of it."""
    weight = torch.cat([linear.weight.detach() for linear in linears])  # (sum of outputs, in)
    biases = [linear.bias for linear in linears]
    bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
    if bias is None and any(b is not None for b in biases):
        raise ValueError(f"{name}: some projections have a bias and some do not")
    sizes, start = [], 0
    for linear in linears:
        n = linear.out_features
        linear.weight = nn.Parameter(weight[start:start + n], requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias[start:start + n], requires_grad=False)
        sizes.append(n)
        start += n
    owner.register_buffer(f"{name}_weight", weight, persistent=False)
    owner.register_buffer(f"{name}_bias", bias, persistent=False)
    return sizes


def _attention_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                       position_embeddings=None, **kwargs):
    """transformers' Qwen2(.5)-VL text attention, with q, k and v from one product."""
    bsz, q_len, _ = hidden_states.size()
    qkv = F.linear(hidden_states, self.qkv_weight, self.qkv_bias)  # (B, Q, (heads + 2 kv_heads) * D)
    query, key, value = (t.view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
                         for t in qkv.split(self.qkv_sizes, dim=-1))
    cos, sin = position_embeddings
    query, key = self._rotary(query, key, cos, sin)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    interface = self._interfaces.get_interface(self.config._attn_implementation, self._eager)
    out, weights = interface(self, query, key, value, attention_mask,
                             dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
                             sliding_window=self.sliding_window, position_ids=position_ids, **kwargs)
    return self.o_proj(out.reshape(bsz, q_len, -1).contiguous()), weights


def _mlp_forward(self, x):
    """down(act(gate(x)) * up(x)), with gate and up from one product."""
    gate, up = F.linear(x, self.gate_up_weight, self.gate_up_bias).split(self.gate_up_sizes, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def _swap_class(module: nn.Module, forward) -> None:
    """Give `module` a subclass of its class whose forward is `forward` (one subclass per class).

    The subclass also carries the stock module's rotary, eager attention and attention registry, so the
    forward calls exactly what the stock one calls.
    """
    base = type(module)
    fused = _fused_classes.get((base, forward))
    if fused is None:
        modeling = sys.modules[base.__module__]
        extra = {"forward": forward}
        if forward is _attention_forward:
            extra.update(_rotary=staticmethod(modeling.apply_rotary_pos_emb),
                         _eager=staticmethod(modeling.eager_attention_forward),
                         _interfaces=modeling.ALL_ATTENTION_FUNCTIONS)
        fused = type("Fused" + base.__name__, (base,), extra)
        _fused_classes[(base, forward)] = fused
    module.__class__ = fused


def _plain(*linears: nn.Module) -> bool:
    """Only stock 16-bit Linear layers are concatenated; quantized ones and LoRA side paths keep their own."""
    return all(type(linear) is nn.Linear for linear in linears)


def fuse_projections(model) -> str:
    """Fuse q/k/v and gate/up in every layer of `model`'s language model; returns what was fused, for info."""
    text = model.model.language_model
    attention = mlp = 0
    with torch.no_grad():
        for layer in text.layers:
            attn, ff = layer.self_attn, layer.mlp
            if type(attn).__name__ in ATTENTION_CLASSES and _plain(attn.q_proj, attn.k_proj, attn.v_proj):
                attn.qkv_sizes = _concatenate(attn, [attn.q_proj, attn.k_proj, attn.v_proj], "qkv")
                _swap_class(attn, _attention_forward)
                attention += 1
            if all(hasattr(ff, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")) and _plain(
                    ff.gate_proj, ff.up_proj):
                ff.gate_up_sizes = _concatenate(ff, [ff.gate_proj, ff.up_proj], "gate_up")
                _swap_class(ff, _mlp_forward)
                mlp += 1
    if attention < len(text.layers):
        log.info("q/k/v left unfused in %d layers (attention class not known)", len(text.layers) - attention)
    return f"q/k/v fused in {attention} of {len(text.layers)} layers, gate/up in {mlp}"
