"""Benchmark concurrent users of `vlassist serve`: 1, 2, 4, 8, 16 clients at once and 8 staggered arrivals.

The server is `vlassist serve`'s own code (vlassist.api.server.serve) in a process of its own: on a GPU the 7B
architecture at random bf16 weights under a 24 GiB cap (as scripts/bench.py builds it), or with --tiny the tiny
checkpoint on the CPU (a smoke run: it checks the script, its numbers say nothing about a GPU). Clients run in
another process through the `openai` SDK, streaming, each on a screenshot-like PNG of its own (no prefix reuse),
with the answer length forced. Per scenario: total time (first send to last end), per-user decode tokens/s and the
first token's p50/p95 (from each answer's `vlassist.stats`: time queued + time to first token; random weights stream
almost no visible text, so the client cannot time it), how many answers shared a decode step, and the server's
peak device memory. The baseline is the 1-client row: 8 clients together should take ≤ 1.6× its time.
Prints a table and writes JSON.

    python scripts/bench_concurrency.py --out concurrency.json               # GPU: 7B architecture, 24 GiB cap
    python scripts/bench_concurrency.py --tiny --tokens 16 --clients 1,2,4   # CPU smoke run
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def serve_main(port: int, tiny: bool, cap_gb: float, parallel: int) -> int:
    """The server process: the engine as scripts/bench.py builds it, served by `vlassist serve`'s code."""
    sys.path.insert(0, str(HERE))
    import bench
    import torch

    from vlassist.api import server
    from vlassist.engine import slots

    cuda = torch.cuda.is_available() and not tiny
    if cuda and cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 2**30 / total))
    env = {"VLASSIST_DEVICE": "cuda" if cuda else "cpu", "VLASSIST_COMPILE": "auto", "VLASSIST_DECODE_CONTEXT": "8192",
           "VLASSIST_MAX_IMAGE_TOKENS": "16384", "VLASSIST_MAX_PROMPT_TOKENS": "16384",
           "VLASSIST_GPU_MEMORY_GB": str(cap_gb), "VLASSIST_PARALLEL": str(parallel),
           "VLASSIST_CPU_THREADS": "1" if not cuda else "", "VLASSIST_CACHE_DIR": str(ROOT / ".bench" / "cache")}
    engine, _weights = bench.make_engine(argparse.Namespace(model=None, tiny=tiny, no_fuse=False), env, cuda)
    if engine.scheduler is None:  # bench.make_engine builds the random model by hand: give it its decode batch
        engine.scheduler = slots.make_scheduler(engine)
    if engine.upgrade is not None:
        engine.upgrade.wait()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    threading.Thread(target=_memory_file, args=(engine, port), daemon=True).start()
    return server.serve(engine.settings, "127.0.0.1", port, answerer=engine)


def _memory_file(engine, port: int) -> None:
    """Write the engine's memory (peak included) where the driver reads it, every half second."""
    path = Path(tempfile.gettempdir()) / f"vlassist-bench-{port}.json"
    while True:
        path.write_text(json.dumps(engine.memory() | {"slots": engine.slots, "steps": getattr(engine.scheduler,
                                                                                               "steps", 0)}))
        time.sleep(0.5)


def client_main(url: str, folder: Path, tokens: int, first: int, count: int, gap_s: float, seed: int) -> dict:
    """The client process: `count` streamed requests, together (gap 0) or with Poisson gaps of mean `gap_s`."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=1200)
    files = sorted(folder.glob("*.png"))[first:first + count]
    rng = random.Random(seed)
    results: list[dict | None] = [None] * count

    def one(index: int, path: Path) -> None:
        sent = time.perf_counter()
        try:
            results[index] = ask(path, sent)
        except Exception as exc:  # noqa: BLE001 (a failed answer is counted and its error kept, never dropped)
            results[index] = {"sent": sent, "ended": time.perf_counter(), "error": f"{type(exc).__name__}: {exc}"[:400]}

    def ask(path: Path, sent: float) -> dict:
        data = base64.b64encode(path.read_bytes()).decode()
        stats, first_chunk = None, None
        stream = client.chat.completions.create(
            model="default", stream=True, max_tokens=tokens, temperature=0, extra_body={"min_tokens": tokens},
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}", "detail": "high"}},
                {"type": "text", "text": "Describe this screenshot."}]}])
        for chunk in stream:
            if first_chunk is None and chunk.choices and chunk.choices[0].delta.content:
                first_chunk = time.perf_counter() - sent
            extension = (chunk.model_extra or {}).get("vlassist")
            if extension:
                stats = extension["stats"]
        return {"sent": sent, "ended": time.perf_counter(), "first_text_s": first_chunk, "stats": stats}

    started = time.perf_counter()
    threads = []
    for index, path in enumerate(files):
        if index and gap_s:
            time.sleep(rng.expovariate(1 / gap_s))
        thread = threading.Thread(target=one, args=(index, path))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return {"started": started, "answers": results}


def _images(folder: Path, count: int, size: tuple[int, int]) -> None:
    """`count` distinct screenshot-like PNGs (panels and lines of text) of one size."""
    from PIL import Image, ImageDraw

    for i in range(count):
        rng = random.Random(i)
        image = Image.new("RGB", size, (rng.randrange(200, 256),) * 3)
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.randrange(max(1, size[0] - 200)), rng.randrange(max(1, size[1] - 100))
            draw.rectangle([x, y, x + rng.randrange(80, 400), y + rng.randrange(40, 200)],
                           fill=tuple(rng.randrange(256) for _ in range(3)))
        for row in range(0, size[1] - 20, 22):
            draw.text((10, row), f"Item {row // 22}: {rng.randrange(10**9)}", fill=(0, 0, 0))
        image.save(folder / f"{i:03d}.png", "PNG")


def _summary(name: str, run: dict, tokens: int) -> dict:
    """One scenario's row: totals, per-user decode rate, first-token percentiles, rows that shared a step."""
    answers = [a for a in run["answers"] if a and a.get("stats")]
    errors = [a.get("error") or "no stats in the stream" for a in run["answers"] if not (a and a.get("stats"))]
    firsts = sorted(a["stats"]["queued_s"] + a["stats"]["ttft_s"] for a in answers)
    rates = [a["stats"]["tokens_per_s"] for a in answers if a["stats"]["tokens_per_s"]]

    def pct(values: list[float], q: float) -> float | None:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else None

    return {
        "scenario": name, "clients": len(run["answers"]), "answered": len(answers),
        "total_s": max(a["ended"] for a in answers) - run["started"] if answers else None,
        "decode_tok_s_per_user": statistics.median(rates) if rates else None,
        "first_token_p50_s": pct(firsts, 0.5), "first_token_p95_s": pct(firsts, 0.95),
        "queued_s_max": max((a["stats"]["queued_s"] for a in answers), default=None),
        "rows_shared_max": max((a["stats"].get("batch_rows", 1) for a in answers), default=None),
        "tokens_each": [a["stats"]["new_tokens"] for a in answers], "forced_tokens": tokens,
        "errors": len(errors), "first_errors": sorted(set(errors))[:3],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint on the CPU (smoke run)")
    parser.add_argument("--tokens", type=int, default=256, help="forced answer length")
    parser.add_argument("--clients", default="1,2,4,8,16", help="clients arriving together, one scenario each")
    parser.add_argument("--staggered", type=int, default=8, help="clients arriving with Poisson gaps (0: none)")
    parser.add_argument("--gap-s", type=float, default=0.5, help="mean gap between staggered arrivals")
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--cap-gb", type=float, default=24.0)
    parser.add_argument("--parallel", type=int, default=0, help="VLASSIST_PARALLEL (0: from the memory budget)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", default="concurrency.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=5, metavar=("URL", "FOLDER", "FIRST", "COUNT", "GAP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve_main(args.port, args.tiny, args.cap_gb, args.parallel)
    if args.client:
        url, folder, first, count, gap = args.client
        print(json.dumps(client_main(url, Path(folder), args.tokens, int(first), int(count), float(gap), 0)))
        return 0

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", args.port))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(Path(tempfile.gettempdir()) / f"vlassist-bench-serve-{port}.log", "wb")
    parallel = args.parallel or (4 if args.tiny else 0)  # the CPU has no memory budget to size slots from
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), "--cap-gb", str(args.cap_gb),
                               "--parallel", str(parallel)] + (["--tiny"] if args.tiny else []),
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.time() + 1800
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(Path(log.name).read_text()[-3000:]) from None
                time.sleep(1)
        print(f"server ready: {health}", flush=True)
        counts = [int(c) for c in args.clients.split(",") if c]
        folder = Path(tempfile.mkdtemp())
        size = tuple(int(v) for v in args.size.split("x"))
        _images(folder, 1 + sum(counts) + args.staggered, size)
        scenarios = [(f"{c} together", c, 0.0) for c in counts]
        if args.staggered:
            scenarios.append((f"{args.staggered} staggered", args.staggered, args.gap_s))

        def client(first: int, count: int, gap: float) -> dict:
            out = subprocess.run([sys.executable, __file__, "--client", url, str(folder), str(first), str(count),
                                  str(gap), "--tokens", str(args.tokens)], capture_output=True, text=True, check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])

        client(0, 1, 0.0)  # warm-up: first prefill and decode shapes
        rows, first = [], 1
        for name, count, gap in scenarios:
            rows.append(_summary(name, client(first, count, gap), args.tokens))
            first += count
        memory = json.loads((Path(tempfile.gettempdir()) / f"vlassist-bench-{port}.json").read_text())
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    one = next((r for r in rows if r["scenario"] == "1 together"), None)
    for row in rows:
        if one and one["total_s"] and row["total_s"]:
            row["time_vs_one"] = row["total_s"] / one["total_s"]
        if one and one["decode_tok_s_per_user"] and row["decode_tok_s_per_user"]:
            row["decode_vs_one"] = row["decode_tok_s_per_user"] / one["decode_tok_s_per_user"]
    import torch
    import transformers

    result = {"date": datetime.date.today().isoformat(), "device": "cpu (tiny smoke run)" if args.tiny else (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
        "weights": "tiny random" if args.tiny else "random Qwen2.5-VL-7B architecture, bf16",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "args": vars(args), "server": health, "memory": memory, "scenarios": rows,
        "server_log_tail": Path(log.name).read_text(errors="replace")[-6000:]}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{'scenario':<14}{'total s':>9}{'× one':>7}{'tok/s/user':>12}{'× one':>7}{'TTFT p50':>10}"
          f"{'TTFT p95':>10}{'shared':>8}")
    for row in rows:
        def f(key, fmt, row=row):
            return format(row[key], fmt) if row.get(key) is not None else "-"
        print(f"{row['scenario']:<14}{f('total_s', '9.2f')}{f('time_vs_one', '7.2f')}"
              f"{f('decode_tok_s_per_user', '12.1f')}{f('decode_vs_one', '7.2f')}{f('first_token_p50_s', '10.3f')}"
              f"{f('first_token_p95_s', '10.3f')}{f('rows_shared_max', '8d')}")
    peak = memory.get("peak_gb")
    print(f"peak device memory: {peak:.2f} GiB" if peak is not None else "peak device memory: - (CPU)")
    for row in rows:
        for error in row["first_errors"]:
            print(f"{row['scenario']}: {row['errors']} failed, e.g. {error}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
