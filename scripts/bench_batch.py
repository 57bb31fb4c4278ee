"""Batch-job throughput: images per minute answered one at a time vs in batches (random 7B weights, 24 GiB cap).

Usage on a CUDA machine: `python scripts/bench_batch.py [--images 64] [--tokens 200] [--out FILE.json]`.
Prints a table and writes JSON. 1024² screenshots, a forced answer length, the engine's own batch-1 path
(captured-graph decode) against `Engine.answer_batch` at the auto batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import bench  # noqa: E402  (the random-7B and processor helpers of the main benchmark)
import torch  # noqa: E402

from vlassist.config import load_settings  # noqa: E402
from vlassist.conversation import GenerationOptions, Turn  # noqa: E402
from vlassist.engine import Engine, warm_up  # noqa: E402
from vlassist.engine.fuse import fuse_projections  # noqa: E402
from vlassist.engine.loader import ModelInfo  # noqa: E402
from vlassist.engine.vision_attention import use_varlen  # noqa: E402


def main() -> None:
    """Run the comparison and print/write it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--alone", type=int, default=8, help="images answered one at a time for the batch-1 rate")
    ap.add_argument("--out", type=Path, default=Path("batch-bench.json"))
    ap.add_argument("--compile", default="graph", help="VLASSIST_COMPILE for the batch-1 path (graph: no compile)")
    args = ap.parse_args()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 24 * 2**30 / total))
    tiny = bench._tiny_dir()
    model = bench.random_7b(tiny, "cuda")
    use_varlen(model)
    fuse_projections(model)
    settings = load_settings({"VLASSIST_DEVICE": "cuda", "VLASSIST_DECODE_CONTEXT": "4096",
                              "VLASSIST_COMPILE": args.compile, "VLASSIST_MODEL_DIR": str(tiny)})
    info = ModelInfo(model_dir="random 7B", family="qwen2_5_vl", device="cuda", dtype="bfloat16", attn="sdpa",
                     attn_reason="benchmark", factor=28, min_pixels=56 * 56, load_s=0, parameters=0, versions={})
    engine = Engine(model, bench._processor(settings), info, settings)
    warm_up(engine)
    options = GenerationOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    convs = [[Turn("user", "Extract every field of this screenshot as JSON.", [bench._image((1024, 1024), i)])]
             for i in range(args.images)]
    size = engine.batch_size_for(options.max_image_tokens + 256 + options.max_new_tokens)
    engine.stream(convs[0], GenerationOptions(max_new_tokens=8)).consume()  # warm both paths
    engine.answer_batch(convs[:2], GenerationOptions(max_new_tokens=8))
    torch.cuda.synchronize()
    started = time.perf_counter()
    for conv in convs[:args.alone]:
        engine.prefixes.clear()  # every image is new in a batch job
        engine.stream(conv, options).consume()
    torch.cuda.synchronize()
    alone = args.alone / (time.perf_counter() - started) * 60
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for i in range(0, args.images, size):
        engine.answer_batch(convs[i:i + size], options)
    torch.cuda.synchronize()
    batched = args.images / (time.perf_counter() - started) * 60
    peak = torch.cuda.max_memory_allocated() / 2**30
    rows = [{"batch": 1, "images_per_min": alone}, {"batch": size, "images_per_min": batched, "peak_gib": peak}]
    print(f"{'batch':>6} {'images/min':>11} {'vs batch 1':>11}")
    for row in rows:
        print(f"{row['batch']:>6} {row['images_per_min']:>11.1f} {row['images_per_min'] / alone:>10.2f}x")
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                    "tokens": args.tokens, "images": args.images, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
