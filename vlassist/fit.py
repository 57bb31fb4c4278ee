"""Will a checkpoint fit? Weights + K/V for the configured context + vision activations, from config.json alone.

Torch-free, so a checkpoint that cannot run is refused before PyTorch is even imported, and the page can say
for every checkpoint in the models folder whether it fits. All figures are estimates of GPU memory:

- weights: the parameters counted from config.json (text, vision tower, merger, embeddings, lm_head), each at the
  bytes its format stores: 16-bit; AWQ and W4A16 4-bit + group-128 scales (+ AWQ's zero points); FP8 one byte +
  a float32 scale per 128×128 block; int8 / int4 quantized on load (per-channel scales; group-128 scale and zero).
  Quantized formats touch only the text layers' linear weights (vision, embeddings and lm_head stay 16-bit),
  as Qwen ships its AWQ/FP8 checkpoints; `modules_to_not_convert` is honoured where a config lists it.
- K/V: layers × K/V heads × head dim × 2 (K and V) × 2 bytes per token, for VLASSIST_DECODE_CONTEXT tokens.
- activations: the vision tower on the largest image (VLASSIST_MAX_IMAGE_TOKENS × merge² patches) plus one text
  layer's transients over those tokens: the peak while an image is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlassist.errors import VlassistError

GiB = 2**30
DEFAULT_BUDGET_GB = 24.0  # one RTX 4090, when VLASSIST_GPU_MEMORY_GB is not set
FORMATS = ("bf16", "fp16", "fp32", "awq", "fp8", "w4a16", "int8", "int4")
LABELS = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "awq": "AWQ 4-bit", "fp8": "FP8",
          "w4a16": "W4A16 4-bit", "int8": "int8 (quantized on load)", "int4": "int4 (quantized on load)"}
# Bytes per weight of a quantized linear layer, its scales and zero points included (group / block 128).
LINEAR_BYTES = {
    "awq": 0.5 + 2 / 128 + 0.5 / 128,  # packed nibbles, fp16 scale and a 4-bit zero per group
    "w4a16": 0.5 + 2 / 128,  # packed nibbles, a 16-bit scale per group (symmetric)
    "fp8": 1 + 4 / (128 * 128),  # e4m3 and a float32 scale per 128×128 block
    "int8": 1.0,  # per-channel scales are counted per output row (below)
    "int4": 0.5 + 4 / 128,  # a 16-bit scale and zero per group
}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
KV_BYTES = 2  # K/V are kept in 16 bits whatever the weights are stored in


class FitError(VlassistError):
    """A checkpoint whose memory needs cannot be estimated, or that does not fit the memory budget."""


@dataclass(frozen=True)
class Linear:
    """One weight matrix (or a group of equal ones): where it is, its shape, and how many of it."""

    part: str  # "text" (a text layer's linear: quantizable), "embed", "lm_head", "vision", "other"
    fan_in: int
    fan_out: int
    count: int = 1


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs from config.json: every parameter by part, and the text model's K/V shape."""

    name: str
    family: str
    weights: tuple[Linear, ...]
    loose: int  # parameters outside weight matrices: biases, norms, embeddings of positions, convolutions
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vision_hidden: int
    vision_intermediate: int
    merge: int
    checkpoint_format: str
    not_converted: tuple[str, ...] = ()

    @property
    def parameters(self) -> int:
        """Parameters of the whole model."""
        return self.loose + sum(w.fan_in * w.fan_out * w.count for w in self.weights)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token takes over all layers."""
        return self.layers * self.kv_heads * self.head_dim * 2 * KV_BYTES


@dataclass(frozen=True)
class Estimate:
    """GPU memory one checkpoint in one format needs, in bytes, by part."""

    name: str
    weights_format: str
    weights: int
    kv: int
    activations: int
    context: int

    @property
    def total(self) -> int:
        """Weights, K/V and activations together."""
        return self.weights + self.kv + self.activations

    def describe(self) -> str:
        """e.g. "~21.4 GiB (weights 19.0, K/V for 8192 tokens 2.0, activations 0.4)"."""
        return (f"~{self.total / GiB:.1f} GiB (weights {self.weights / GiB:.1f}, K/V for {self.context} tokens "
                f"{self.kv / GiB:.1f}, activations {self.activations / GiB:.1f})")


def _read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FitError(f"{path} cannot be read: {exc}") from None
    if not isinstance(config, dict):
        raise FitError(f"{path} is not a JSON object")
    return config


def checkpoint_format(config: dict) -> str:
    """The weight format config.json declares: one of FORMATS; FitError for a quantization vlassist cannot run."""
    quant = config.get("quantization_config")
    if not quant:
        dtype = config.get("torch_dtype") or config.get("dtype") or (config.get("text_config") or {}).get("dtype")
        return DTYPES.get(str(dtype), "bf16")
    method = str(quant.get("quant_method", "")).lower()
    if method == "awq" and quant.get("bits", 4) == 4:
        return "awq"
    if method == "fp8":
        return "fp8"
    if method == "compressed-tensors":
        groups = quant.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values() if isinstance(g, dict)]
        if weights and all(w.get("num_bits") == 4 and w.get("type", "int") == "int" for w in weights) and not any(
                g.get("input_activations") for g in groups.values() if isinstance(g, dict)):
            return "w4a16"
        raise FitError("compressed-tensors checkpoints other than W4A16 (4-bit weights, 16-bit activations) are not "
                       "supported")
    raise FitError(f"quantization {method or 'of unknown kind'!r} is not supported: vlassist runs bf16/fp16, AWQ, "
                   "FP8 and W4A16 checkpoints")


def checkpoint_format_of(folder: Path) -> str:
    """The weight format of the checkpoint in `folder`, from its config.json."""
    return checkpoint_format(_read_config(Path(folder)))


def architecture(folder: Path, name: str | None = None) -> Architecture:
    """Every parameter of the checkpoint in `folder` by part, from its config.json (Qwen2/2.5-VL and Qwen3-VL)."""
    folder = Path(folder)
    config = _read_config(folder)
    family = config.get("model_type", "")
    text = config.get("text_config") or config  # Qwen2.5-VL configs of transformers 4.4x keep it at the top
    vision = config.get("vision_config") or {}
    try:
        hidden, inter, layers = int(text["hidden_size"]), int(text["intermediate_size"]), int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or hidden // heads)
        vocab = int(text["vocab_size"])
        if "embed_dim" in vision:  # Qwen2-VL: the tower's width is embed_dim, its hidden_size is the output's
            vh, out = int(vision["embed_dim"]), int(vision.get("hidden_size") or hidden)
            vi = int(vision.get("mlp_ratio", 4) * vh)
        else:
            vh, out = int(vision["hidden_size"]), int(vision.get("out_hidden_size") or hidden)
            vi = int(vision.get("intermediate_size") or 4 * vh)
        depth = int(vision["depth"])
        merge = int(vision.get("spatial_merge_size", 2))
        patch = int(vision.get("patch_size", 14)) ** 2 * int(vision.get("temporal_patch_size", 2)) * int(
            vision.get("in_channels", vision.get("in_chans", 3)))
    except (KeyError, TypeError, ValueError) as exc:
        raise FitError(f"{folder / 'config.json'} lacks a model dimension the estimate needs ({exc})") from None
    qwen3 = family == "qwen3_vl"
    q, kv = heads * head_dim, kv_heads * head_dim
    weights = [
        Linear("embed", vocab, hidden),
        Linear("text", hidden, q, layers), Linear("text", hidden, kv, 2 * layers), Linear("text", q, hidden, layers),
        Linear("text", hidden, inter, 2 * layers), Linear("text", inter, hidden, layers),
        Linear("vision", vh, 3 * vh, depth), Linear("vision", vh, vh, depth),
        Linear("vision", vh * merge**2, vh * merge**2), Linear("vision", vh * merge**2, out),
    ]
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    if not tied:
        weights.append(Linear("lm_head", hidden, vocab))
    attention_bias = text.get("attention_bias", not qwen3)  # Qwen2/2.5 have q/k/v biases, Qwen3 has none
    loose = layers * 2 * hidden + hidden  # two norms a layer, the final norm
    loose += layers * (q + 2 * kv) if attention_bias else 0
    loose += layers * 2 * head_dim if qwen3 else 0  # q_norm, k_norm
    merged = vh * merge**2
    if family == "qwen2_vl":  # two-layer MLP, LayerNorms with biases, merger LayerNorm
        weights += [Linear("vision", vh, vi, depth), Linear("vision", vi, vh, depth)]
        loose += patch * vh  # patch conv, no bias
        loose += depth * (4 * vh + 3 * vh + vh + vi + vh)  # two LayerNorms, qkv/proj/fc1/fc2 biases
        loose += 2 * vh + merged + out  # merger LayerNorm and biases
    elif qwen3:
        weights += [Linear("vision", vh, vi, depth), Linear("vision", vi, vh, depth)]
        deepstack = len(vision.get("deepstack_visual_indexes") or [])
        weights += [Linear("vision", merged, merged, deepstack), Linear("vision", merged, out, deepstack)]
        loose += patch * vh + vh + int(vision.get("num_position_embeddings", 0)) * vh  # patch conv (+bias), positions
        loose += depth * (4 * vh + 3 * vh + vh + vi + vh)  # two LayerNorms, qkv/proj/fc1/fc2 biases
        loose += 2 * vh + merged + out  # merger norm and biases
        loose += deepstack * (2 * merged + merged + out)  # each deepstack merger: post-shuffle norm and biases
    else:
        weights += [Linear("vision", vh, vi, 2 * depth), Linear("vision", vi, vh, depth)]
        loose += patch * vh  # patch conv, no bias
        loose += depth * (2 * vh + 3 * vh + vh + 2 * vi + vh)  # two RMSNorms, qkv/proj/gate/up/down biases
        loose += vh + merged + out  # merger norm and biases
    quant = config.get("quantization_config") or {}
    skipped = tuple(str(m) for m in quant.get("modules_to_not_convert") or quant.get("ignore") or [])
    return Architecture(name or folder.name, family, tuple(weights), loose, layers, kv_heads, head_dim, hidden, inter,
                        vh, vi, merge, checkpoint_format(config), skipped)


def weight_bytes(arch: Architecture, weights_format: str) -> int:
    """Bytes of the weights in `weights_format`: quantized formats quantize the text layers' linears only."""
    if weights_format not in FORMATS:
        raise FitError(f"weight format {weights_format!r} is not known: use one of {', '.join(FORMATS)}")
    plain = 4 if weights_format == "fp32" else 2
    text_kept = any(m in ("model.language_model", "language_model", "model.layers") for m in arch.not_converted)
    total = arch.loose * plain
    for w in arch.weights:
        n = w.fan_in * w.fan_out * w.count
        if w.part == "text" and weights_format in LINEAR_BYTES and not text_kept:
            total += n * LINEAR_BYTES[weights_format]
            if weights_format == "int8":
                total += w.fan_out * w.count * 2  # one 16-bit scale per output channel
        else:
            total += n * plain
    return int(total)


def activation_bytes(arch: Architecture, image_tokens: int) -> int:
    """Peak transient memory while the largest image is read: vision tower plus one text layer over its tokens."""
    patches = image_tokens * arch.merge**2
    vision = patches * (6 * arch.vision_hidden + 3 * arch.vision_intermediate) * 2  # hidden, qkv, out; MLP ×3
    text = image_tokens * (6 * arch.hidden + 3 * arch.intermediate) * 2
    return vision + text


def estimate(arch: Architecture, weights_format: str | None = None, context: int = 8192,
             image_tokens: int = 1280) -> Estimate:
    """What `arch` needs in `weights_format` (default: its checkpoint's) with `context` tokens of K/V."""
    fmt = weights_format or arch.checkpoint_format
    return Estimate(arch.name, fmt, weight_bytes(arch, fmt), arch.kv_bytes_per_token * context,
                    activation_bytes(arch, image_tokens), context)


def loaded_format(arch: Architecture, quant: str | None = None) -> str:
    """The format the weights will have once loaded: int8/int4 on load applies to 16-bit checkpoints only."""
    if quant in ("int8", "int4") and arch.checkpoint_format in ("bf16", "fp16", "fp32"):
        return quant
    return arch.checkpoint_format


def alternatives(arch: Architecture, budget_gb: float, context: int, image_tokens: int, current: str) -> list[str]:
    """What would fit instead: a quantized checkpoint or on-load quantization, or a shorter context."""
    budget = budget_gb * GiB
    found = []
    for fmt, how in (("awq", "its AWQ checkpoint"), ("fp8", "its FP8 checkpoint (GPUs with FP8: RTX 40xx, H100)"),
                     ("int4", "int4 on load (VLASSIST_QUANT=int4)"), ("int8", "int8 on load (VLASSIST_QUANT=int8)")):
        if fmt == current or (fmt in ("int4", "int8") and arch.checkpoint_format not in ("bf16", "fp16", "fp32")):
            continue
        option = estimate(arch, fmt, context, image_tokens)
        if option.total <= budget:
            found.append(f"{how} needs ~{option.total / GiB:.0f} GiB with {context} tokens of context")
    here = estimate(arch, current, 0, image_tokens)
    room = budget - here.weights - here.activations
    tokens = int(room // arch.kv_bytes_per_token) // 1024 * 1024 if room > 0 else 0
    if tokens >= 1024:
        found.append(f"in {current} it fits with {tokens} tokens of context (VLASSIST_DECODE_CONTEXT={tokens})")
    return found


def check_fit(folder: Path, budget_gb: float | None, context: int, image_tokens: int,
              quant: str | None = None) -> Estimate:
    """The estimate for `folder` as it will be loaded; FitError naming what would fit if it exceeds the budget."""
    arch = architecture(folder)
    fmt = loaded_format(arch, quant)
    need = estimate(arch, fmt, context, image_tokens)
    budget = budget_gb if budget_gb is not None else DEFAULT_BUDGET_GB
    if need.total > budget * GiB:
        instead = alternatives(arch, budget, context, image_tokens, fmt)
        hint = "; ".join(instead) if instead else "no format of this model fits; use a smaller model"
        raise FitError(f"{arch.name} in {LABELS[fmt]} needs {need.describe()}, over the {budget:g} GiB budget "
                       f"(VLASSIST_GPU_MEMORY_GB). What would fit: {hint}")
    return need


def size_on_disk(folder: Path) -> int:
    """Bytes of the checkpoint's weight files (safetensors shards)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors") if p.is_file())


@dataclass(frozen=True)
class Fit:
    """One checkpoint as the model list shows it: format, size on disk, estimate and whether it fits, and why not."""

    weights_format: str
    disk_bytes: int
    estimate: Estimate | None
    fits: bool
    reason: str = ""

    def summary(self) -> str:
        """e.g. "AWQ 4-bit · 20.3 GiB on disk · needs ~21.4 GiB"."""
        size = f"{self.disk_bytes / GiB:.1f} GiB on disk"
        need = f"needs ~{self.estimate.total / GiB:.1f} GiB" if self.estimate else "memory need unknown"
        return f"{LABELS.get(self.weights_format, self.weights_format)} · {size} · {need}"


def assess(folder: Path, budget_gb: float | None, context: int, image_tokens: int, quant: str | None = None) -> Fit:
    """Format, size on disk and estimate of the checkpoint in `folder`, with whether it fits the budget and why not."""
    disk = size_on_disk(folder)
    try:
        arch = architecture(folder)
    except FitError as exc:
        return Fit("?", disk, None, False, str(exc))
    fmt = loaded_format(arch, quant)
    try:
        check_fit(folder, budget_gb, context, image_tokens, quant)
    except FitError as exc:
        return Fit(fmt, disk, estimate(arch, fmt, context, image_tokens), False, str(exc))
    return Fit(fmt, disk, estimate(arch, fmt, context, image_tokens), True)
