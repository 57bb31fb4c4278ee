"""Benchmark the engine: prints a table, writes JSON; the plain transformers baseline is scripts/baseline.py.

On a GPU it builds the real Qwen2.5-VL-7B architecture at random weights in bf16 (or loads --model when real
weights are present); --tiny runs the same measurements on the tiny checkpoint, e.g. on a CPU, to check the
script itself. The baseline runs in a process of its own (nothing of the engine loaded); pass its JSON with
--baseline to print the ratios. --ready-only measures the time to ready (process start to the first answer
possible) and one answer, so a second process with the same --cache-dir shows the warm start.

    python scripts/baseline.py --out baseline.json                              # GPU, plain generate()
    python scripts/bench.py --baseline baseline.json --cache-dir C --out bench.json  # GPU, 7B, 24 GB cap
    python scripts/bench.py --ready-only --cache-dir C --out ready.json          # warm start, same cache
    python scripts/bench.py --tiny --tokens 16 --out t.json                     # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from vlassist import offline  # noqa: F401,E402
from vlassist.config import load_settings  # noqa: E402
from vlassist.conversation import GenerationOptions, Turn  # noqa: E402
from vlassist.engine import Engine, generate, load_engine, warm_up  # noqa: E402
from vlassist.engine import decode as decode_module  # noqa: E402
from vlassist.engine.fastdecode import build_decoder  # noqa: E402
from vlassist.engine.fuse import fuse_projections  # noqa: E402
from vlassist.engine.loader import ModelInfo, load, process_age_s  # noqa: E402
from vlassist.engine.vision_attention import use_varlen  # noqa: E402
from vlassist.images import load_image  # noqa: E402

SIZES = {"448x448": (448, 448), "1024x1024": (1024, 1024), "1920x1080": (1920, 1080)}
SIZES_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064)


def _tiny_dir() -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "scripts" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(Path(tempfile.mkdtemp()) / "tiny", "qwen2_5_vl")


def _processor(settings):
    """The tiny checkpoint's processor (tokenizer, chat template, image processor), loaded as the app loads it."""
    _model, processor, _family, _info = load(settings)
    return processor


def random_7b(tiny: Path, device: str):
    """The real Qwen2.5-VL-7B architecture at random bf16 weights, with the tiny checkpoint's special-token ids."""
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    small = AutoConfig.from_pretrained(tiny)
    ids = {k: getattr(small, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                          "vision_end_token_id")}
    text = small.text_config
    config = Qwen2_5_VLConfig(
        text_config=dict(SIZES_7B, max_position_embeddings=128000, bos_token_id=text.bos_token_id,
                         eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31], patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2),
        **ids)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16,
                                                                attn_implementation="sdpa")
    with torch.no_grad():  # small weights keep bf16 activations finite through 28 layers
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0 if p.dim() == 1 and p.shape[0] > 1 else 0.0)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    model.generation_config.eos_token_id = [text.eos_token_id]
    model.generation_config.pad_token_id = text.pad_token_id
    return model.eval()


def _image(size, seed):
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return load_image(buf.getvalue())


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def answer(engine, turns, options):
    """One answer: (text, stats dict)."""
    _sync()
    reply = engine.stream(turns, options)
    text = reply.consume()
    _sync()
    return text, reply.stats


def measure(engine, image, tokens, use_cache, repeats, followup_tokens):
    """First-question TTFT, follow-up TTFT and decode tok/s for one image: medians, first call, every run."""
    options = GenerationOptions(max_new_tokens=tokens, min_new_tokens=tokens, max_image_tokens=16384,
                                use_cache=use_cache)
    short = GenerationOptions(max_new_tokens=followup_tokens, min_new_tokens=followup_tokens,
                              max_image_tokens=16384, use_cache=use_cache)
    runs = []
    for _ in range(repeats):
        engine.prefixes.clear()
        first = [Turn("user", "Describe this screenshot in detail.", [image])]
        text, s1 = answer(engine, first, options)
        follow = first + [Turn("assistant", text), Turn("user", "What is in the top left corner?")]
        _, s2 = answer(engine, follow, short)  # a follow-up's cost is its time to first token
        runs.append((s1, s2))
    med = lambda xs: statistics.median(xs)  # noqa: E731
    return {
        "prompt_tokens": runs[0][0].prompt_tokens, "visual_tokens": runs[0][0].visual_tokens, "repeats": repeats,
        "ttft_ms": 1000 * med([a.ttft_s for a, _ in runs]),
        "ttft_first_ms": 1000 * runs[0][0].ttft_s,
        "followup_ttft_ms": 1000 * med([b.ttft_s for _, b in runs]),
        "followup_ttft_first_ms": 1000 * runs[0][1].ttft_s,
        "followup_prompt_tokens": runs[0][1].prompt_tokens, "followup_reused_tokens": runs[0][1].reused_tokens,
        "decode_tok_s": med([a.tokens_per_s for a, _ in runs]),
        "new_tokens": runs[0][0].new_tokens,
        "ttft_all_ms": [round(1000 * a.ttft_s, 2) for a, _ in runs],
        "followup_ttft_all_ms": [round(1000 * b.ttft_s, 2) for _, b in runs],
        "decode_all_tok_s": [round(a.tokens_per_s, 2) for a, _ in runs],
    }


def cudnn_ab(engine, image, repeats, followup_tokens):
    """Engine TTFTs (first question, follow-up) with cuDNN SDPA excluded from prefill (default) and allowed."""
    out = {}
    default = decode_module.PREFILL_BACKENDS
    try:
        for name, backends in (("without_cudnn", default), ("pytorch_default", None)):
            decode_module.PREFILL_BACKENDS = backends
            out[name] = measure(engine, image, followup_tokens, True, repeats, followup_tokens)
    finally:
        decode_module.PREFILL_BACKENDS = default
    return {k: {f: v[f] for f in ("ttft_ms", "ttft_first_ms", "followup_ttft_ms", "followup_ttft_first_ms",
                                   "ttft_all_ms", "followup_ttft_all_ms")} for k, v in out.items()}


def preprocessing_ms(engine, image):
    """Host-side processor (PIL backend) vs device-side patchify, ms for one image (median of 3)."""
    from vlassist.engine.pixels import patchify
    from vlassist.images import resize_for_model

    sizing = engine.plan(image, GenerationOptions(max_image_tokens=16384))
    resized = resize_for_model(image.image, sizing)
    area = sizing.input_size[0] * sizing.input_size[1]
    proc = engine.processor.image_processor
    times = {"processor_to_device": [], "device_patchify": []}
    for _ in range(4):
        _sync()
        t = time.perf_counter()
        out = proc(images=[resized], return_tensors="pt",
                   size={"shortest_edge": min(engine.info.min_pixels, area), "longest_edge": area})
        ref = out["pixel_values"].to(engine.model.device)
        _sync()
        times["processor_to_device"].append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        rows, _ = patchify(resized, proc, engine.model.device)
        _sync()
        times["device_patchify"].append(1000 * (time.perf_counter() - t))
    result = {k: statistics.median(v[1:]) for k, v in times.items()}
    result["identical"] = bool(torch.equal(rows, ref))
    return result


def decode_mode_compare(engine, image, tokens, repeats, mode):
    """Decode tok/s with another decoder mode (e.g. graph without compile), then the original decoder back."""
    original = engine.fast
    try:
        decoder, got, why, warm = build_decoder(engine.model, mode, engine.settings.decode_context)
        if got != mode:
            return {"mode": got, "reason": why}
        engine.fast = decoder
        row = measure(engine, image, tokens, True, repeats, 4)
        return {"mode": mode, "warmup_s": warm, "decode_tok_s": row["decode_tok_s"],
                "decode_all_tok_s": row["decode_all_tok_s"]}
    finally:
        engine.fast = original


def per_step_decode(engine, image, tokens, repeats):
    """Decode tok/s with every token chosen on the host (decode_block 0), for comparison with the block path."""
    block = engine.decode_block
    try:
        engine.decode_block = 0
        row = measure(engine, image, tokens, True, repeats, 4)
        return {"decode_tok_s": row["decode_tok_s"], "decode_all_tok_s": row["decode_all_tok_s"]}
    finally:
        engine.decode_block = block


def followup_breakdown(engine, image, repeats=3):
    """Where a follow-up's time to first token goes, ms per phase (median).

    Runs the engine's own phases one by one (vlassist.engine.generate), timed by its `mark` hook: the short
    prefill into the static buffers when it applies (and `engine.short_prefill` is on), else the eager prefill
    into a growing cache and the copy into the buffers.
    """
    options = GenerationOptions(max_new_tokens=4, min_new_tokens=4, max_image_tokens=16384)
    first = [Turn("user", "Describe this screenshot in detail.", [image])]
    phases: dict[str, list[float]] = {}
    for _ in range(repeats + 1):
        engine.prefixes.clear()
        text, _ = answer(engine, first, options)
        turns = first + [Turn("assistant", text), Turn("user", "What is in the top left corner?")]
        marks = [("start", time.perf_counter())]

        def mark(name, marks=marks):
            _sync()
            marks.append((name, time.perf_counter()))

        with torch.inference_mode():
            gen = generate.prepare(engine, turns, options, mark=mark)  # encode
            generate.look_up_prefix(engine, gen)  # lookup
            scores = generate.prefill_prompt(engine, gen)  # [rope_positions, prefix_copy,] prefill[, static_copy]
            int(generate.choose_first(engine, gen, scores)[0])  # choose
        for (_, t0), (name, t1) in zip(marks, marks[1:]):
            phases.setdefault(name, []).append(1000 * (t1 - t0))
    result = {name: round(statistics.median(v[1:]), 2) for name, v in phases.items()}
    result["new_tokens"] = gen.length - gen.reused
    result["path"] = gen.path
    return result


def short_prefill_ab(engine, image, repeats, followup_tokens):
    """Engine follow-up TTFT with the short prefill on (default) and off, plus the breakdown of each path."""
    out = {}
    for name, on in (("short", True), ("eager", False)):
        engine.short_prefill = on
        try:
            row = measure(engine, image, followup_tokens, True, repeats, followup_tokens)
            out[name] = {f: row[f] for f in ("followup_ttft_ms", "followup_ttft_first_ms", "followup_ttft_all_ms",
                                             "followup_prompt_tokens", "followup_reused_tokens")}
            out[name]["breakdown_ms"] = followup_breakdown(engine, image)
        finally:
            engine.short_prefill = True
    return out


def compile_cache_record(info) -> dict:
    """Inductor's cache hits and misses in this process, and the size of the kept folder."""
    from torch._dynamo.utils import counters

    record = {k: v for k, v in counters["inductor"].items() if "cache" in k}
    folder = Path(info.compile_cache.split(" (")[0]) if info.compile_cache else None
    if folder and folder.is_dir():
        record["folder_mb"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    return record


def _answer_ids(engine, turns, options) -> list[int]:
    """The answer's token ids through the engine's phases (the same code `stream` runs on its worker)."""
    gen = generate.prepare(engine, turns, options)
    generate.run(engine, gen)
    return gen.output[0, gen.length:].tolist()


def _compare(fast: list[int], plain: list[int]) -> dict:
    first = next((i for i, (a, b) in enumerate(zip(fast, plain)) if a != b), None)
    if first is None and len(fast) != len(plain):
        first = min(len(fast), len(plain))
    return {"identical": first is None, "first_difference": first, "tokens": len(fast)}


def exactness(engine, image, tokens):
    """Greedy tokens of the fast path against the eager path from scratch (plain generate()), for one image.

    First question: the prompt prefilled eagerly, answer decoded in the compiled/captured step. Follow-up: the
    earlier turns' K/V reused, the new ones prefilled short, decoded as before. bf16 kernels differ in rounding
    order between the paths, so a difference is possible and recorded, with its first position.
    """
    fast = GenerationOptions(max_new_tokens=tokens, min_new_tokens=tokens, max_image_tokens=16384)
    plain = GenerationOptions(max_new_tokens=tokens, min_new_tokens=tokens, max_image_tokens=16384,
                              use_cache=False)
    engine.prefixes.clear()
    first = [Turn("user", "Describe this screenshot in detail.", [image])]
    ids = _answer_ids(engine, first, fast)
    result = {"first_question": _compare(ids, _answer_ids(engine, first, plain))}
    text = engine.processor.tokenizer.decode(ids, skip_special_tokens=True)
    follow = first + [Turn("assistant", text), Turn("user", "What is in the top left corner?")]
    result["follow_up"] = _compare(_answer_ids(engine, follow, fast), _answer_ids(engine, follow, plain))
    return result


def peak_memory(engine, image, tokens, use_cache):
    """Peak GiB allocated while answering `tokens` tokens about `image` (GPU only)."""
    if not torch.cuda.is_available():
        return None
    engine.prefixes.clear()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    options = GenerationOptions(max_new_tokens=tokens, min_new_tokens=tokens, max_image_tokens=16384,
                                use_cache=use_cache)
    answer(engine, [Turn("user", "Read all the text.", [image])], options)
    return torch.cuda.max_memory_allocated() / 2**30


def profile_prefill_and_step(engine, image, out_dir: Path | None):
    """Top CUDA kernels of one first-question prefill and of decode, as text tables."""
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for name, tokens in (("prefill_1024", 1), ("decode_32", 33)):
        engine.prefixes.clear()
        options = GenerationOptions(max_new_tokens=tokens, min_new_tokens=tokens, max_image_tokens=16384)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            answer(engine, [Turn("user", "Describe.", [image])], options)
        tables[name] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
    if out_dir:
        for name, table in tables.items():
            (out_dir / f"profile_{name}.txt").write_text(table)
    return tables


def vision_ms(engine, image):
    """Vision tower alone on one image, ms (median of 3), one attention call per layer vs the stock SDPA loop;
    and the relative difference of their outputs."""
    options = GenerationOptions(max_image_tokens=16384)
    inputs, _ = engine.encode([Turn("user", "x", [image])], options)
    result, outputs = {}, {}
    with torch.inference_mode():
        for name, on in (("stock", False), ("varlen", True)):
            use_varlen(engine.model, on)
            times = []
            for _ in range(4):
                _sync()
                t = time.perf_counter()
                out = engine.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
                _sync()
                times.append(1000 * (time.perf_counter() - t))
            result[name] = statistics.median(times[1:])
            outputs[name] = torch.cat(list(out.pooler_output if hasattr(out, "pooler_output") else out)).float()
    use_varlen(engine.model, True)
    ref = outputs["stock"]
    result["rel_diff"] = float((outputs["varlen"] - ref).norm() / ref.norm())
    return result


def make_engine(args, env: dict, cuda: bool):
    """(engine, weights label): a real or tiny checkpoint, else the 7B architecture at random weights, warmed up."""
    started = time.perf_counter()
    if args.model or args.tiny:
        folder = Path(args.model) if args.model else _tiny_dir()
        engine = load_engine(load_settings(dict(env, VLASSIST_MODEL_DIR=str(folder))))
        weights = "real" if args.model else "tiny random"
    else:
        tiny = _tiny_dir()
        model = random_7b(tiny, "cuda" if cuda else "cpu")
        _sync()
        settings = load_settings(dict(env, VLASSIST_MODEL_DIR=str(tiny)))
        info = ModelInfo(model_dir="random Qwen2.5-VL-7B architecture", family="qwen2_5_vl",
                         device="cuda" if cuda else "cpu", dtype="bfloat16", attn="sdpa", attn_reason="benchmark",
                         factor=28, min_pixels=56 * 56, load_s=time.perf_counter() - started,
                         parameters=sum(p.numel() for p in model.parameters()),
                         versions={"torch": torch.__version__, "transformers": transformers.__version__},
                         weights_format="bf16")
        use_varlen(model)  # what the loader does for an SDPA model on CUDA
        info.fused = fuse_projections(model) if cuda and not args.no_fuse else ""
        engine = Engine(model, _processor(settings), info, settings)
        warm_up(engine)  # what load_engine does after loading: compile (into the kept cache), capture
        weights = "random"
    return engine, weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint instead of the 7B architecture")
    parser.add_argument("--model", help="a real checkpoint folder (instead of random weights)")
    parser.add_argument("--tokens", type=int, default=256, help="forced answer length")
    parser.add_argument("--long-tokens", type=int, default=1024, help="answer length for the peak-memory run")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per image for the engine path")
    parser.add_argument("--baseline", help="scripts/baseline.py's JSON from the same machine, for the ratios")
    parser.add_argument("--cache-dir", help="VLASSIST_CACHE_DIR: where compiled kernels are kept")
    parser.add_argument("--ready-only", action="store_true", help="time to ready and one answer, then exit")
    parser.add_argument("--no-fuse", action="store_true", help="keep q/k/v and gate/up as separate products")
    parser.add_argument("--exact-tokens", type=int, default=32, help="answer length of the exactness record")
    parser.add_argument("--followup-tokens", type=int, default=8, help="answer length of the follow-up question")
    parser.add_argument("--cap-gb", type=float, default=24.0, help="GPU memory cap (emulates an RTX 4090)")
    parser.add_argument("--compile", default="auto", help="VLASSIST_COMPILE for the engine path")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.tiny
    if cuda and args.cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * 2**30 / total))
    env = {"VLASSIST_DEVICE": "cuda" if cuda else "cpu", "VLASSIST_COMPILE": args.compile,
           "VLASSIST_DECODE_CONTEXT": "8192", "VLASSIST_MAX_IMAGE_TOKENS": "16384",
           "VLASSIST_CACHE_DIR": args.cache_dir or str(ROOT / ".bench" / "cache")}
    engine, weights = make_engine(args, env, cuda)
    during = None
    if engine.upgrade is not None:  # auto: the graph step serves while the compiled one is built beside it
        _, stats = answer(engine, [Turn("user", "warm", [_image(SIZES["1024x1024"], 99)])],
                          GenerationOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                            max_image_tokens=16384))
        during = {"decode": engine.info.decode, "ttft_ms": 1000 * stats.ttft_s, "decode_tok_s": stats.tokens_per_s,
                  "tokens": stats.new_tokens}
        print(f"answer while compiling: {json.dumps(during)}", flush=True)
        engine.upgrade.wait()
    info = engine.info
    print(f"loaded in {info.load_s:.1f} s, warm-up {info.warmup_s:.1f} s, ready {info.ready_s:.1f} s after process"
          f" start, decode={info.decode} ({info.decode_reason}); compile cache: {info.compile_cache}", flush=True)

    images = {name: _image(SIZES[name], i) for i, name in enumerate(args.sizes.split(","))}
    rows = []
    first_size = next(iter(images))
    mid = images.get("1024x1024", images[first_size])
    peak_name = "1920x1080" if "1920x1080" in images else first_size
    device = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "device": device,
        "weights": weights, "versions": info.versions | {"python": platform.python_version()},
        "cap_gb": args.cap_gb if cuda else None, "tokens": args.tokens, "followup_tokens": args.followup_tokens,
        "decode": info.decode, "decode_reason": info.decode_reason, "decode_block": engine.decode_block,
        "decode_buckets": getattr(engine.fast, "sizes", None),
        "prefill_buckets": getattr(engine.fast, "prefill_sizes", None),
        "prefill_graphs": len(getattr(engine.fast, "pf_graphs", {})),
        "prefill_capture_s": getattr(engine.fast, "prefill_s", None), "load_s": info.load_s,
        "warmup_s": info.warmup_s, "ready_s": info.ready_s, "upgraded_s": info.upgraded_s,
        "upgrade_error": engine.upgrade.error if engine.upgrade else None, "answer_while_compiling": during,
        "compile_cache": info.compile_cache, "fused": info.fused, "weights_format": info.weights_format,
        "rows": rows,
        "peak_image": peak_name, "peak_answer_tokens": args.long_tokens,
    }
    out = Path(args.out)

    def extra(name, fn):  # one optional measurement: its failure is recorded, not fatal
        try:
            result[name] = fn()
        except Exception as exc:  # noqa: BLE001
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(name, json.dumps(result[name])[:400], flush=True)
        out.write_text(json.dumps(result, indent=2))

    # The first answer a user could ask for right after ready: its TTFT shows what warm-up left undone.
    _, stats = answer(engine, [Turn("user", "warm", [images[first_size]])],
                      GenerationOptions(max_new_tokens=4, min_new_tokens=4, max_image_tokens=16384))
    result["compile_cache_record"] = compile_cache_record(info)
    result["first_answer"] = {"image": first_size, "ttft_ms": 1000 * stats.ttft_s,
                              "done_after_start_s": process_age_s()}
    out.write_text(json.dumps(result, indent=2))
    if args.ready_only:
        print(f"ready {info.ready_s:.1f} s (load {info.load_s:.1f} + warm-up {info.warmup_s:.1f}); compiled step"
              f" serving {info.upgraded_s:.1f} s after start; first answer TTFT"
              f" {1000 * stats.ttft_s:.0f} ms; compile cache: {info.compile_cache}; {result['compile_cache_record']}")
        return 0
    for name, image in images.items():
        row = {"path": "engine", "image": name,
               **measure(engine, image, args.tokens, True, args.repeats, args.followup_tokens)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.write_text(json.dumps(result, indent=2))
    extra("vision_ms", lambda: {name: vision_ms(engine, image) for name, image in images.items()})
    extra("preprocessing_ms", lambda: {name: preprocessing_ms(engine, image) for name, image in images.items()})
    if cuda:
        extra("prefill_cudnn_ab", lambda: cudnn_ab(engine, mid, args.repeats, args.followup_tokens))
        extra("decode_graph_mode", lambda: decode_mode_compare(engine, mid, args.tokens, 3, "graph"))
    extra("followup_breakdown_ms", lambda: followup_breakdown(engine, mid))
    if engine.fast is not None:
        extra("short_prefill_ab", lambda: short_prefill_ab(engine, mid, args.repeats, args.followup_tokens))
    if engine.fast is not None:
        extra("decode_per_step", lambda: per_step_decode(engine, mid, args.tokens, 3))
    peaks = {"engine": None}
    extra("peak_gb", lambda: peaks | {"engine": peak_memory(engine, images[peak_name], args.long_tokens, True)})
    if args.exact_tokens:
        extra("exactness", lambda: {name: exactness(engine, image, args.exact_tokens)
                                    for name, image in images.items()})
    if args.profile:
        extra("profiles", lambda: profile_prefill_and_step(engine, mid, out.parent))

    out.write_text(json.dumps(result, indent=2))
    summary(result, images, args, out)
    return 0


def summary(result, images, args, out: Path) -> None:
    """The closing table: engine against the separate plain baseline (if its JSON was given)."""
    rows, base = result["rows"], {}
    if args.baseline and Path(args.baseline).is_file():
        loaded = json.loads(Path(args.baseline).read_text())
        base = {r["image"]: r for r in loaded["rows"]}
        result["baseline"] = {"file": Path(args.baseline).name, "device": loaded["device"],
                              "versions": loaded["versions"], "processor": loaded["processor"],
                              "peak_gb": loaded.get("peak_gb"), "rows": loaded["rows"]}
        out.write_text(json.dumps(result, indent=2))
    vision = {k: v.get("varlen", float("nan")) for k, v in result["vision_ms"].items()} if "error" not in result[
        "vision_ms"] else {k: float("nan") for k in images}
    peaks = result["peak_gb"] if "error" not in result["peak_gb"] else {"engine": None}
    print(f"\n{result['device']} | {result['weights']} weights | torch {torch.__version__} | transformers"
          f" {transformers.__version__} | decode {result['decode']} | load {result['load_s']:.1f} s + warm-up"
          f" {result['warmup_s']:.1f} s | ready {result['ready_s']:.1f} s | compiled step {result['upgraded_s']:.1f} s")
    print(f"{'image':>10} {'tokens':>6} | {'TTFT ms':>16} | {'follow-up TTFT ms':>18} | {'decode tok/s':>16} |"
          f" {'vision ms':>9}")
    print(f"{'':>10} {'':>6} | {'engine  baseline':>16} | {'engine  baseline':>18} | {'engine  baseline':>16} |")
    nan = {"ttft_ms": float("nan"), "followup_ttft_ms": float("nan"), "decode_tok_s": float("nan")}
    for name in images:
        e = next(r for r in rows if r["image"] == name)
        g = base.get(name, nan)
        print(f"{name:>10} {e['prompt_tokens']:>6} | {e['ttft_ms']:7.0f} {g['ttft_ms']:8.0f} |"
              f" {e['followup_ttft_ms']:8.0f} {g['followup_ttft_ms']:9.0f} |"
              f" {e['decode_tok_s']:7.1f} {g['decode_tok_s']:8.1f} | {vision[name]:9.0f}")
        if name in base:
            print(f"{'ratio':>17} | {g['ttft_ms'] / e['ttft_ms']:15.2f}x |"
                  f" {g['followup_ttft_ms'] / e['followup_ttft_ms']:17.2f}x |"
                  f" {e['decode_tok_s'] / max(g['decode_tok_s'], 1e-9):15.2f}x |")
    if peaks["engine"] is not None:
        print(f"peak GiB ({result['peak_image']}, {args.long_tokens}-token answer): engine {peaks['engine']:.2f}")

if __name__ == "__main__":
    raise SystemExit(main())
