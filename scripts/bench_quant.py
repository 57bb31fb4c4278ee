"""Benchmark the weight formats: 7B bf16 vs int8 vs AWQ-int4 vs FP8, 32B AWQ, and their kernels; table + JSON.

On a GPU, one run writes random-weight checkpoints of the real Qwen2.5-VL-7B (and -32B) architecture in each
format — quantized here by the same code that writes the tiny test checkpoints, nothing downloaded — loads each
through the engine's own loader under a 24 GiB cap and measures decode tok/s at 1024², TTFT at 1024² and
1920×1080, follow-up TTFT, peak VRAM with a 1920×1080 screenshot and a long answer, and each decode rate as a
share of its bandwidth floor (bytes read per token / measured copy bandwidth). A kernel microbenchmark times one
product per layer shape at batch 1 for every format and gives its achieved bandwidth. Optionally
(--transformers) it tries plain transformers from_pretrained + generate() on the same checkpoints and records
the numbers or why it could not load them.

    python scripts/bench_quant.py --work /scratch/q --out docs/bench/quant.json          # GPU (H200: ~1 h)
    python scripts/bench_quant.py --tiny --tokens 8 --repeats 1 --out /tmp/q.json       # CPU smoke run

Checkpoints are written under --work (about 52 GB at most at once for the 32B AWQ; each is deleted after use
unless --keep).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from bench import SIZES, _image, measure, peak_memory  # noqa: E402

from vlassist import offline  # noqa: F401,E402
from vlassist.config import load_settings  # noqa: E402
from vlassist.engine import load_engine  # noqa: E402
from vlassist.engine.quant.linear import Fp8BlockLinear, Int4Linear, Int8Linear  # noqa: E402
from vlassist.engine.quant.onload import int4_quantize, int8_quantize  # noqa: E402

ARCHS = {  # the text and vision sizes of the real checkpoints (config.json of Qwen/Qwen2.5-VL-{7B,32B}-Instruct)
    "7B": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, vocab_size=152064),
    "32B": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                intermediate_size=27648, vocab_size=152064),
}
# (architecture, weights, how): checkpoint formats are written as such; int8/int4 are made at load from bf16.
VARIANTS = [("7B", "bf16", "checkpoint"), ("7B", "int8", "on load"), ("7B", "awq", "checkpoint"),
            ("7B", "fp8", "checkpoint"), ("32B", "awq", "checkpoint")]
TINY_VARIANTS = [("tiny", "bf16", "checkpoint"), ("tiny", "int8", "on load"), ("tiny", "int4", "on load"),
                 ("tiny", "awq", "checkpoint"), ("tiny", "fp8", "checkpoint"), ("tiny", "w4a16", "checkpoint")]
SHARD_BYTES = 4 * 2**30


def _tiny_module():
    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "scripts" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Measured device-memory bandwidth in GB/s: a large copy reads and writes every byte once."""
    size = 2**30 if device == "cuda" else 2**27
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        _sync()
        best = min(best, time.perf_counter() - started)
    return 2 * size / best / 1e9


def write_checkpoint(tiny: Path, arch: str, weights: str, out: Path, device: str, group: int) -> Path:
    """A random-weight checkpoint of `arch` in `weights` form (shards + index), using the tiny one's tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    make = _tiny_module()
    shutil.copytree(tiny, out)
    (out / "model.safetensors").unlink()
    config = AutoConfig.from_pretrained(tiny)
    if arch != "tiny":
        text = config.text_config
        text_sizes = dict(ARCHS[arch], max_position_embeddings=128000, bos_token_id=text.bos_token_id,
                          eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                           "mrope_section": [16, 24, 24]})
        config = type(config)(
            text_config=text_sizes,
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                               out_hidden_size=ARCHS[arch]["hidden_size"], window_size=112,
                               fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, tokens_per_second=2),
            image_token_id=config.image_token_id, video_token_id=config.video_token_id,
            vision_start_token_id=config.vision_start_token_id, vision_end_token_id=config.vision_end_token_id)
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    gen = torch.Generator(device=device).manual_seed(0)
    shards, shard, size, index = [], {}, 0, {}
    for name, meta in skeleton.state_dict().items():
        if meta.dim() > 1:  # small weights keep bf16 activations finite through every layer
            tensor = torch.randn(meta.shape, generator=gen, device=device) * 0.02
        else:
            tensor = torch.full(meta.shape, 0.0 if name.endswith("bias") else 1.0, device=device)  # norms
        tensor = tensor.to(torch.bfloat16 if weights != "bf16" or arch != "tiny" else torch.float32)
        for key, value in make.quantized_tensors(name, tensor, "plain" if weights == "bf16" else weights,
                                                 group).items():
            shard[key] = value.cpu()
            size += value.numel() * value.element_size()
        if size >= SHARD_BYTES:
            shards.append(shard)
            shard, size = {}, 0
    shards.append(shard)
    for number, tensors in enumerate(shards, 1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / filename), metadata={"format": "pt"})
        index.update({key: filename for key in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    data = config.to_dict()
    if weights not in ("bf16", "int8", "int4"):
        data["quantization_config"] = make.quant_config(weights, group)
    (out / "config.json").write_text(json.dumps(data, indent=2))
    return out


def bytes_per_token(model) -> int:
    """Bytes of weights one batch-1 decode step reads: the text model's layers and norms, and lm_head."""
    text = model.model.language_model
    tensors = [t for name, t in list(text.named_parameters()) + list(text.named_buffers())
               if not name.startswith("embed_tokens") and "rotary" not in name] + list(model.lm_head.parameters())
    # Fused q/k/v and gate/up products keep the separate weights as views of the fused one: count storage once.
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def memory_parts(model) -> dict:
    """GiB of device memory the loaded model's tensors take, by part, beside all that is allocated now."""
    parts: dict[str, int] = {}
    seen = set()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type != "cuda" or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        part = ("vision" if ".visual." in f".{name}" else "lm_head" if name.startswith("lm_head") else
                "embed" if "embed_tokens" in name else "text layers")
        parts[part] = parts.get(part, 0) + tensor.numel() * tensor.element_size()
    out = {part: size / 2**30 for part, size in parts.items()}
    if torch.cuda.is_available():
        out["allocated"] = torch.cuda.memory_allocated() / 2**30
        out["other (caches, graphs, buffers)"] = out["allocated"] - sum(parts.values()) / 2**30
    return out


def run_variant(folder: Path, weights: str, env: dict, args, bandwidth: float, row: dict) -> dict:
    """Load `folder` through the engine (int8/int4 quantized at load) and measure it into `row`."""
    extra = {"VLASSIST_QUANT": weights} if weights in ("int8", "int4") else {}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    engine = load_engine(load_settings(dict(env, VLASSIST_MODEL_DIR=str(folder), **extra)))
    try:
        return _measure_variant(engine, args, bandwidth, row)
    finally:  # a variant that failed must not hold its weights while the next one loads
        engine.close()
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _measure_variant(engine, args, bandwidth: float, row: dict) -> dict:
    row["memory_after_load_gib"] = memory_parts(engine.model)  # kept even if what follows fails
    if engine.upgrade is not None:
        engine.upgrade.wait()
    row["memory_ready_gib"] = memory_parts(engine.model)
    info = engine.info
    row |= {"weights_format": info.weights_format, "quant": info.quant, "decode": info.decode,
            "load_s": info.load_s, "warmup_s": info.warmup_s, "bytes_per_token": bytes_per_token(engine.model)}
    sizes = [name for name in args.sizes.split(",") if name in SIZES]
    for name in sizes:
        image = _image(SIZES[name], 1)
        row[name] = measure(engine, image, args.tokens, True, args.repeats, args.followup_tokens)
    main = row[sizes[0]]
    row["decode_tok_s"] = main["decode_tok_s"]
    row["floor_tok_s"] = bandwidth * 1e9 / row["bytes_per_token"]
    row["share_of_floor"] = row["decode_tok_s"] / row["floor_tok_s"]
    row["ms_per_token"] = 1000 / row["decode_tok_s"]
    row["byte_ms_per_token"] = 1000 * row["bytes_per_token"] / (bandwidth * 1e9)
    row["fixed_ms_per_token"] = row["ms_per_token"] - row["byte_ms_per_token"]
    row["peak_gb"] = peak_memory(engine, _image(SIZES[sizes[-1]], 2), args.long_tokens, True)
    return row


def transformers_path(folder: Path, device: str, tokens: int) -> dict:
    """Plain transformers from_pretrained + generate() on the same checkpoint, or why it cannot load it."""
    from transformers import AutoModelForImageTextToText

    model = None
    try:
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16 if device == "cuda" else
                                                            torch.float32, device_map=device, local_files_only=True)
        ids = torch.ones(1, 64, dtype=torch.long, device=device)
        _sync()
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        _sync()
        return {"generate_tok_s": tokens / (time.perf_counter() - started)}
    except Exception as exc:  # noqa: BLE001 (recorded: which formats transformers cannot run here, and why)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    finally:
        del model
        gc.collect()


def _time(fn, device: str, repeats: int) -> float:
    """Seconds per call: on CUDA replayed from a captured graph (no launch overhead), else wall time."""
    for _ in range(3):
        fn()
    _sync()
    if device == "cuda":
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        _sync()
        return start.elapsed_time(end) / 1000 / repeats
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def layer_shapes(arch: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each text-layer product of `arch`, q/k/v and gate/up as separate layers."""
    if arch == "tiny":
        return {"qkv-like 128×64": (128, 64), "up-like 256×128": (256, 128)}
    a = ARCHS[arch]
    h, kv = a["hidden_size"], a["num_key_value_heads"] * a["hidden_size"] // a["num_attention_heads"]
    return {"q_proj": (h, h), "k_proj": (kv, h), "o_proj": (h, h), "gate_proj": (a["intermediate_size"], h),
            "down_proj": (h, a["intermediate_size"])}


def microbench(arch: str, device: str, repeats: int, bandwidth: float) -> list[dict]:
    """Each format's product on `arch`'s layer shapes at batch 1: µs and achieved GB/s of weight bytes.

    AWQ, W4A16 and int4 on load share one layer (Int4Linear) and kernel, so "int4" stands for all three.
    """
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for name, (n_out, n_in) in layer_shapes(arch).items():
        weight = torch.randn(n_out, n_in, device=device, dtype=dtype) * 0.02
        x = torch.randn(1, n_in, device=device, dtype=dtype)
        group = 128 if n_in % 128 == 0 else 32
        q8, s8 = int8_quantize(weight)
        q4, s4, z4 = int4_quantize(weight, group)
        layers = {"bf16" if device == "cuda" else "fp32": (lambda w=weight, x=x: F.linear(x, w),
                                                           weight.numel() * weight.element_size()),
                  "int8": (Int8Linear(q8, s8, None, dtype), weight.numel() + 4 * n_out),
                  "int4": (Int4Linear.from_ints(q4, s4, z4, group, None, dtype),
                           weight.numel() // 2 + 2 * 2 * n_out * n_in // group)}
        if device == "cuda" and torch.cuda.get_device_capability(0) >= (8, 9):
            block = 128
            scale = (weight.float().reshape(n_out // block, block, n_in // block, block).abs().amax((1, 3)) / 448)
            fp8 = (weight.float().reshape(n_out // block, block, n_in // block, block)
                   / scale[:, None, :, None]).reshape(n_out, n_in).to(torch.float8_e4m3fn)
            layers["fp8"] = (Fp8BlockLinear(fp8, scale, (block, block), None, dtype), weight.numel())
        for fmt, (layer, nbytes) in layers.items():
            call = layer if not isinstance(layer, torch.nn.Module) else (lambda m=layer, x=x: m(x))
            try:
                seconds = _time(call, device, repeats)
                rows.append({"arch": arch, "layer": name, "shape": [n_out, n_in], "format": fmt,
                             "us": seconds * 1e6, "gb_s": nbytes / seconds / 1e9,
                             "share_of_bandwidth": nbytes / seconds / 1e9 / bandwidth})
            except Exception as exc:  # noqa: BLE001 (recorded per product)
                rows.append({"arch": arch, "layer": name, "format": fmt, "error": str(exc).splitlines()[0][:200]})
    return rows


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny architecture on the CPU (checks the script)")
    parser.add_argument("--work", help="folder for the written checkpoints (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--tokens", type=int, default=256, help="forced answer length")
    parser.add_argument("--long-tokens", type=int, default=1024, help="answer length of the peak-memory run")
    parser.add_argument("--followup-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernel-repeats", type=int, default=200)
    parser.add_argument("--cap-gb", type=float, default=24.0, help="GPU memory cap (emulates an RTX 4090)")
    parser.add_argument("--decode-context", type=int, default=8192, help="VLASSIST_DECODE_CONTEXT (K/V held)")
    parser.add_argument("--sizes", default="1024x1024,1920x1080",
                        help="images: decode tok/s at the first, peak memory at the last")
    parser.add_argument("--only", help="comma-separated ARCH:FORMAT variants to run, e.g. 7B:bf16,7B:awq")
    parser.add_argument("--transformers", action="store_true", help="also try plain transformers on each")
    parser.add_argument("--out", default="bench_quant.json")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    if cuda and args.cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * 2**30 / total))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_quant"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"VLASSIST_DEVICE": device, "VLASSIST_COMPILE": "auto", "VLASSIST_MAX_IMAGE_TOKENS": "16384",
           "VLASSIST_DECODE_CONTEXT": str(args.decode_context), "VLASSIST_CACHE_DIR": str(work / "cache"),
           "VLASSIST_STREAM_TIMEOUT_S": "3600"}
    tiny = _tiny_module().build(work / "tiny-source", "qwen2_5_vl")
    bandwidth = copy_bandwidth(device)
    out = Path(args.out)
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "cap_gb": args.cap_gb if cuda else None, "copy_bandwidth_gb_s": bandwidth, "tokens": args.tokens,
              "decode_context": args.decode_context, "weights": "random", "variants": [], "kernels": []}
    print(f"{result['device']}: copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    variants = TINY_VARIANTS if args.tiny else VARIANTS
    if args.only:
        wanted = set(args.only.split(","))
        variants = [v for v in variants if f"{v[0]}:{v[1]}" in wanted]
    written: dict[tuple[str, str], Path] = {}
    for arch, weights, how in variants:
        stored = "bf16" if how == "on load" else weights
        group = 32 if arch == "tiny" else 128
        record = {"arch": arch, "weights": weights, "how": how}
        try:
            if (arch, stored) not in written:
                for key in [k for k in written if not args.keep]:  # one written checkpoint on disk at a time
                    shutil.rmtree(written.pop(key), ignore_errors=True)
                started = time.perf_counter()
                written[(arch, stored)] = write_checkpoint(tiny, arch, stored, work / f"{arch}-{stored}", device,
                                                           group)
                record["write_s"] = time.perf_counter() - started
            folder = written[(arch, stored)]
            run_variant(folder, weights, env, args, bandwidth, record)
            if args.transformers and how == "checkpoint":
                record["transformers"] = transformers_path(folder, device, args.tokens)
        except Exception as exc:  # noqa: BLE001 (a variant that cannot run is recorded, the others go on)
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        result["variants"].append(record)
        print(json.dumps({k: v for k, v in record.items() if not isinstance(v, dict)}), flush=True)
        out.write_text(json.dumps(result, indent=2))
    for arch in (["tiny"] if args.tiny else ["7B", "32B"]):
        result["kernels"] += microbench(arch, device, args.kernel_repeats, bandwidth)
    out.write_text(json.dumps(result, indent=2))
    if not args.keep:
        for folder in [*written.values(), work / "tiny-source", work / "cache"]:
            shutil.rmtree(folder, ignore_errors=True)
    summary(result)
    print(f"\nJSON: {out}")
    return 0


def summary(result: dict) -> None:
    """The closing tables: one row per variant, then the kernels."""
    print(f"\n{result['device']} | random weights | torch {result['versions']['torch']} | transformers "
          f"{result['versions']['transformers']} | copy bandwidth {result['copy_bandwidth_gb_s']:.0f} GB/s | cap "
          f"{result['cap_gb']} GiB")
    print(f"{'variant':>12} {'format':>6} | {'decode tok/s':>12} {'x bf16':>6} {'floor %':>7} | {'fixed ms':>8} "
          f"{'bytes ms':>8} | {'TTFT 1024²':>10} {'TTFT 1080p':>10} {'follow-up':>9} | {'peak GiB':>8}")
    base = next((v for v in result["variants"] if v["weights"] == "bf16" and "decode_tok_s" in v), None)
    for v in result["variants"]:
        label = f"{v['arch']} {v['weights']}"
        if "error" in v:
            print(f"{label:>12} {'':>6} | {v['error']}")
            continue
        big, wide = v.get("1024x1024", {}), v.get("1920x1080", {})
        ratio = v["decode_tok_s"] / base["decode_tok_s"] if base and v["arch"] == base["arch"] else float("nan")
        peak = f"{v['peak_gb']:8.2f}" if v.get("peak_gb") is not None else f"{'-':>8}"
        print(f"{label:>12} {v['weights_format']:>6} | {v['decode_tok_s']:12.1f} {ratio:6.2f} "
              f"{100 * v['share_of_floor']:6.0f}% | {v['fixed_ms_per_token']:8.2f} {v['byte_ms_per_token']:8.2f} | "
              f"{big.get('ttft_ms', float('nan')):10.0f} {wide.get('ttft_ms', float('nan')):10.0f} "
              f"{big.get('followup_ttft_ms', float('nan')):9.0f} | {peak}")
    print(f"\n{'kernel':>24} {'format':>6} | {'µs':>8} {'GB/s':>8} {'of bw':>6}")
    for k in result["kernels"]:
        if "error" in k:
            print(f"{k['arch'] + ' ' + k['layer']:>24} {k['format']:>6} | {k['error']}")
            continue
        print(f"{k['arch'] + ' ' + k['layer']:>24} {k['format']:>6} | {k['us']:8.1f} {k['gb_s']:8.1f} "
              f"{100 * k['share_of_bandwidth']:5.0f}%")


if __name__ == "__main__":
    raise SystemExit(main())
