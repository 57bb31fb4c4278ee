"""Build a tiny random-weight Qwen2.5-VL or Qwen3-VL checkpoint offline, for tests and demos.

The checkpoint uses the real transformers model classes and the real image processor, a byte-level BPE
tokenizer trained locally (with Qwen's special tokens at their usual roles) and the real chat template of
its family's Instruct models.
Its answers are gibberish; the code paths it exercises are the real ones.

`--weights awq|fp8|w4a16` writes the same random weights with the text model's decoder-layer linears stored as
the official quantized checkpoints store them (the vision tower and lm_head stay unquantized):
- awq: AutoAWQ gemm packing (int32 `qweight`/`qzeros` in its interleaved nibble order, fp16 `scales`, 4 bits with
  zero points), tensor names as transformers 4 saved them (`model.layers…`, `visual.…`) like Qwen's AWQ uploads;
- fp8: e4m3 `weight` with float32 `weight_scale_inv` per block, `weight_block_size` in the config;
- w4a16: compressed-tensors pack-quantized (int32 `weight_packed`, `weight_scale`, `weight_shape`), symmetric.
The tiny layers are 64 wide, so groups and blocks are 32 (the real checkpoints use 128).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The real chat templates of the Instruct checkpoints (Qwen/Qwen2.5-VL-*-Instruct and Qwen/Qwen3-VL-*-Instruct), so
# the tiny models render prompts exactly as the real ones do: Qwen2.5-VL adds a default system prompt, Qwen3-VL none.
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

QWEN3_VL_CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with \
function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\
\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CHAT_TEMPLATES = {"qwen2_5_vl": QWEN25_VL_CHAT_TEMPLATE, "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE}

CORPUS = (
    "The invoice total is 1,234.56 EUR due on 2025-03-01. Read all text in the image. "
    "Extract the fields as JSON: {\"name\": \"value\", \"amount\": 42}. "
    "A table with columns Name | Value | Unit. A chart shows sales by month from January to December. "
    "Find the buttons and return bbox_2d coordinates [10, 20, 300, 400] with labels. "
    "<html><body><div class=\"header\">Login</div><button>OK</button></body></html> "
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?()[]{}<>'\"-_=+*/\\|@#$%^&~` "
    "温度 压力 电压 发票 金额 日期 名称 "
)


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE on a small built-in corpus and wrap it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 20, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    return fast


TINY_GROUP = 32  # AWQ / W4A16 group and FP8 block edge for 64-wide layers
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's nibble order: bits 4k..4k+3 of a word hold column AWQ_ORDER[k]
WEIGHTS = ("plain", "awq", "fp8", "w4a16")


def _to_int32(words):
    import torch

    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _awq(weight, group: int) -> dict:
    """AutoAWQ gemm tensors for one (out, in) weight: asymmetric 4 bits per group of `group` inputs."""
    import torch

    out_f, in_f = weight.shape
    w = weight.t().reshape(in_f // group, group, out_f)  # AWQ stores (in, out)
    low, high = w.amin(1), w.amax(1)
    scales = ((high - low) / 15).clamp(min=1e-8).half()  # (in / group, out), fp16 as AutoAWQ writes
    zeros = torch.round(-low / scales.float()).clamp(0, 15)
    q = (torch.round(w / scales.float()[:, None]) + zeros[:, None]).clamp(0, 15).reshape(in_f, out_f)

    def pack(values):  # (rows, cols) → (rows, cols / 8)
        rows, cols = values.shape
        slots = values.to(torch.int64).reshape(rows, cols // 8, 8)[..., list(AWQ_ORDER)]
        return _to_int32((slots << torch.arange(0, 32, 4, device=values.device)).sum(-1))

    return {"qweight": pack(q), "qzeros": pack(zeros), "scales": scales}


def _fp8(weight, block: int) -> dict:
    """e4m3 weight and float32 weight_scale_inv, one per block × block tile."""
    import torch

    out_f, in_f = weight.shape
    tiles = weight.reshape(out_f // block, block, in_f // block, block)
    scale = (tiles.abs().amax(dim=(1, 3)) / 448).clamp(min=1e-12)  # e4m3's largest finite value is 448
    q = (tiles / scale[:, None, :, None]).reshape(out_f, in_f).to(torch.float8_e4m3fn)
    return {"weight": q, "weight_scale_inv": scale.float()}


def _w4a16(weight, group: int) -> dict:
    """compressed-tensors pack-quantized: symmetric 4 bits per group, stored +8, eight per int32 from bit 0."""
    import torch

    out_f, in_f = weight.shape
    w = weight.reshape(out_f, in_f // group, group)
    scale = (w.abs().amax(-1) / 7.5).clamp(min=1e-8).to(torch.bfloat16)
    q = torch.round(w / scale.float()[..., None]).clamp(-8, 7).reshape(out_f, in_f) + 8
    words = (q.to(torch.int64).reshape(out_f, in_f // 8, 8) << torch.arange(0, 32, 4, device=q.device)).sum(-1)
    return {"weight_packed": _to_int32(words), "weight_scale": scale,
            "weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64, device=q.device)}


QUANT_CONFIGS = {
    "awq": {"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": TINY_GROUP, "zero_point": True,
            "modules_to_not_convert": ["visual"]},
    "fp8": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [TINY_GROUP, TINY_GROUP], "modules_to_not_convert": ["lm_head", "visual"]},
    "w4a16": {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
              "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                            "output_activations": None,
                                            "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                        "strategy": "group", "group_size": TINY_GROUP,
                                                        "dynamic": False, "observer": "minmax"}}},
              "ignore": ["lm_head", "re:model.visual.*"]},
}


def quantized_tensors(name: str, tensor, weights: str, group: int) -> dict:
    """The checkpoint tensors of one state-dict entry in `weights` form: itself, or a linear's quantized parts."""
    if (weights != "plain" and ".layers." in name and name.endswith("_proj.weight") and tensor.dim() == 2
            and not name.startswith(("visual.", "model.visual."))):
        module = name[: -len(".weight")]
        quantize = {"awq": _awq, "fp8": _fp8, "w4a16": _w4a16}[weights]
        return {f"{module}.{part}": value.contiguous() for part, value in quantize(tensor.float(), group).items()}
    return {name: tensor}


def quant_config(weights: str, group: int) -> dict:
    """config.json's quantization_config for `weights` with groups (and FP8 blocks) of `group`."""
    config = json.loads(json.dumps(QUANT_CONFIGS[weights]))
    if weights == "fp8":
        config["weight_block_size"] = [group, group]
    elif weights == "w4a16":
        config["config_groups"]["group_0"]["weights"]["group_size"] = group
    else:
        config["group_size"] = group
    return config


def write_quantized(out: Path, model, weights: str) -> None:
    """Replace the checkpoint's weights and config in `out` by the `weights` form of `model`'s tensors."""
    import json

    from safetensors.torch import save_file

    quantize = {"awq": _awq, "fp8": _fp8, "w4a16": _w4a16}[weights]
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous()
        if weights == "awq":  # the names Qwen's AWQ uploads carry (saved by transformers 4)
            name = name.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        if (".layers." in name and name.endswith("_proj.weight") and tensor.dim() == 2
                and not name.startswith(("visual.", "model.visual."))):
            module = name[: -len(".weight")]
            tensors.update({f"{module}.{part}": value.contiguous()
                            for part, value in quantize(tensor.float(), TINY_GROUP).items()})
        else:
            tensors[name] = tensor
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = QUANT_CONFIGS[weights]
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0, weights: str = "plain") -> Path:
    """Write a tiny random-weight checkpoint of `family` into `out_dir` and return the folder.

    `weights` other than "plain" stores the same random weights in that quantized format (see the module doc).
    """
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocab_size=512)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,  # a 1920×1080 screenshot, a follow-up and a 2,048-token answer fit
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil

        config = Qwen2_5_VLConfig(
            text_config=dict(text_common, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                           "mrope_section": [4, 2, 2]}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               window_size=56, fullatt_block_indexes=[1]),
            **token_ids,
        )
        image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    elif family == "qwen3_vl":
        from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig

        config = Qwen3VLConfig(
            text_config=dict(text_common, head_dim=16, rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                "mrope_interleaved": True}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               num_position_embeddings=64, deepstack_visual_indexes=[0]),
            **token_ids,
        )
        image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    else:
        raise SystemExit(f"unknown family {family!r}: choose qwen2_5_vl or qwen3_vl")

    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    if weights != "plain":
        write_quantized(out, model, weights)
    # The files a real checkpoint ships: image processor, tokenizer, chat template.
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATES[family], encoding="utf-8")
    return out


# Adapter targets as fine-tuning recipes pick them: language projections, vision blocks and the merger (Qwen2.5-VL
# names its merger layers mlp.0/mlp.2; Qwen3-VL's linear_fc1/linear_fc2 also name the vision blocks' MLP layers).
ADAPTER_TARGETS = {"qwen2_5_vl": ["q_proj", "v_proj", "down_proj", "qkv", "mlp.0", "mlp.2"],
                   "qwen3_vl": ["q_proj", "v_proj", "down_proj", "qkv", "linear_fc1", "linear_fc2"]}


def build_adapter(base_dir: str | Path, out_dir: str | Path, seed: int = 1, legacy_names: bool = True) -> Path:
    """Write a peft LoRA adapter for the checkpoint in `base_dir` (language and vision targets) into `out_dir`.

    Files and tensor names are as peft saves them; `legacy_names` names modules as transformers 4.4x did at
    training time (`model.layers.…`, `visual.…`), else as today (`model.language_model.layers.…`, `model.visual.…`).
    One rank and one alpha are overridden by pattern, as peft's rank_pattern/alpha_pattern allow.
    """
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    targets = ADAPTER_TARGETS[config.model_type]
    rank, alpha, rank_pattern, alpha_pattern = 4, 8, {"down_proj": 2}, {"qkv": 4}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not any(name.endswith("." + t) for t in targets):
            continue
        r = rank_pattern["down_proj"] if name.endswith(".down_proj") else rank
        saved = name
        if legacy_names:
            saved = name.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        key = f"base_model.model.{saved}"
        tensors[f"{key}.lora_A.weight"] = torch.randn(r, module.in_features, generator=generator) * 0.1
        tensors[f"{key}.lora_B.weight"] = torch.randn(module.out_features, r, generator=generator) * 0.1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_dir), "r": rank,
        "lora_alpha": alpha, "lora_dropout": 0.05, "target_modules": targets, "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "inference_mode": True, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default="plain", choices=WEIGHTS,
                    help="store the text model's linears quantized as awq, fp8 or w4a16 checkpoints do")
    ap.add_argument("--adapter", metavar="DIR", help="also write a LoRA adapter for the checkpoint into DIR")
    args = ap.parse_args(argv)
    out = build(args.out_dir, args.family, args.seed, args.weights)
    print(f"tiny {args.family} checkpoint ({args.weights} weights) written to {out}")
    if args.adapter:
        print(f"LoRA adapter written to {build_adapter(out, args.adapter, args.seed + 1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
