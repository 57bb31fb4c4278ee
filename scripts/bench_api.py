"""Benchmark what `vlassist serve` adds over the in-process engine: TTFT, decode speed, 8 concurrent clients.

One process loads the engine (the 7B architecture at random weights on a GPU, or the tiny checkpoint with --tiny)
and serves it with the same FastAPI app and answer service as `vlassist serve`, on loopback. Clients run in
processes of their own (so their work does not share the server's interpreter lock), streaming: the `openai` SDK,
as a user's script would, and a bare HTTP connection, which shows the server's share without the SDK's. Rounds
alternate in-process, SDK and bare-HTTP requests, every one on a different image (no answer reuses another's
prefix). Random weights stream almost no text (their tokens are mostly special or partial characters), so time to
first token is measured as the whole time of a 1-token answer (an upper bound: it includes ending the reply), and
decode speed from the difference to a long answer on another image of the same size. The server notes, on the
clients' clock, when each request reached the app, when its images were decoded, when it was queued and when its
reply ended, so each request's time splits into client and HTTP, server, engine. Prints a table and writes JSON.

    python scripts/bench_api.py --out api.json            # GPU: 7B architecture, 24 GiB cap
    python scripts/bench_api.py --tiny --tokens 16        # CPU smoke run
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def client_main(url: str, folder: Path, tokens: int, first: int, sequential: int, concurrent: int,
                lean: bool = False) -> dict:
    """The client process: a warm-up request, then pairs of streamed requests (1 token, then `tokens`) on the images
    from number `first` on, one after another; then `concurrent` `tokens`-long requests at once. The client is the
    `openai` SDK, or with `lean` a bare HTTP connection (the server's share of the time without the SDK's)."""
    import http.client

    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    files = sorted(folder.glob("*.png"))

    def request(data: str, length: int) -> dict:
        return dict(model="default", stream=True, stream_options={"include_usage": True}, max_tokens=length,
                    temperature=0, messages=[{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}", "detail": "high"}},
                        {"type": "text", "text": "Describe this image."}]}])

    def sdk_chunks(data: str, length: int):
        for chunk in client.chat.completions.create(**request(data, length), extra_body={"min_tokens": length}):
            yield chunk.model_dump()

    def lean_chunks(data: str, length: int):
        connection.request("POST", "/v1/chat/completions", json.dumps(request(data, length) | {"min_tokens": length}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        for line in response:
            if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                yield json.loads(line[6:])
        response.read()

    chunks = lean_chunks if lean else sdk_chunks

    def one(path: Path, length: int) -> dict:
        data = base64.b64encode(path.read_bytes()).decode()
        started = time.perf_counter()
        usage, first_text, job = None, None, None
        for chunk in chunks(data, length):
            usage = chunk.get("usage") or usage
            if first_text is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first_text = time.perf_counter() - started
            job = (chunk.get("vlassist") or {}).get("stats", {}).get("job") or job
        ended = time.perf_counter()
        phases = None
        if job:  # the server's clock is this machine's monotonic clock too (perf_counter on Linux)
            phases = {"job": job["id"], "to_queue_ms": 1000 * (job["submitted"] - started),
                      "queued_ms": 1000 * (job["started"] - job["submitted"]),
                      "engine_ms": 1000 * (job["finished"] - job["started"]),
                      "to_client_end_ms": 1000 * (ended - job["finished"]), "finished": job["finished"]}
        return {"total_s": ended - started, "first_text_s": first_text, "phases": phases,
                "tokens": usage["completion_tokens"] if usage else 0, "started": started, "ended": ended}

    one(files[0], tokens)  # warms the client, the HTTP path and the image decoder
    pairs = [(one(files[first + 2 * i], 1), one(files[first + 2 * i + 1], tokens)) for i in range(sequential)]
    together = []
    started = time.perf_counter()
    if concurrent:
        batch = files[first + 2 * sequential:first + 2 * sequential + concurrent]
        with ThreadPoolExecutor(concurrent) as pool:
            together = list(pool.map(lambda path: one(path, tokens), batch))
    return {"pairs": pairs, "concurrent": together, "concurrent_total_s": time.perf_counter() - started}


def _images(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[bytes]:
    """`count` distinct screenshot-like PNGs (panels and lines of text): realistic file sizes, same token count."""
    import random

    from PIL import Image, ImageDraw

    out = []
    for i in range(count):
        rng = random.Random(seed + i)
        image = Image.new("RGB", size, (rng.randrange(200, 256),) * 3)
        draw = ImageDraw.Draw(image)
        for _ in range(12):  # panels
            x, y = rng.randrange(size[0] - 200), rng.randrange(size[1] - 100)
            draw.rectangle([x, y, x + rng.randrange(80, 400), y + rng.randrange(40, 200)],
                           fill=tuple(rng.randrange(256) for _ in range(3)))
        for row in range(0, size[1] - 20, 22):  # lines of text
            words = " ".join(f"{rng.randrange(10**6)}" for _ in range(rng.randrange(3, 14)))
            draw.text((10 + rng.randrange(40), row), f"Item {row // 22}: {words}", fill=(0, 0, 0))
        path = folder / f"{i:03d}.png"
        image.save(path, "PNG")
        out.append(path.read_bytes())
    return out


def _in_process(engine, images: list[bytes], tokens: int) -> list[dict]:
    """The same requests straight on the engine (image bytes → load_image → stream), in the same pairs."""
    from vlassist.conversation import GenerationOptions, Turn
    from vlassist.images import load_image

    def one(data: bytes, length: int) -> dict:
        options = GenerationOptions(max_new_tokens=length, min_new_tokens=length, max_image_tokens=16384)
        started = time.perf_counter()
        image = load_image(data)
        decoded = time.perf_counter()
        reply = engine.stream([Turn("user", "Describe this image.", [image])], options)
        for _ in reply:
            pass
        ended = time.perf_counter()
        return {"total_s": ended - started, "tokens": reply.stats.new_tokens,
                "decode_image_ms": 1000 * (decoded - started), "engine_ms": 1000 * (ended - decoded)}

    return [(one(images[2 * i], 1), one(images[2 * i + 1], tokens)) for i in range(len(images) // 2)]


def _stamped(app, service):
    """The app wrapped to note, per request on the server's clock, when its headers arrived, when its images
    started and finished decoding, and when admission began and its job was queued: (app, {job id: marks})."""
    from vlassist.api import convert

    stamps: dict[str, dict] = {}
    now: dict[str, dict] = {"marks": {}}  # the request being read (they come one at a time where marks are read)
    to_turns, submit = convert.to_turns, service.submit

    def timed_to_turns(body):
        now["marks"]["turns"] = time.monotonic()
        try:
            return to_turns(body)
        finally:
            now["marks"]["turns_done"] = time.monotonic()

    def timed_submit(request, admitted=False):
        marks = now["marks"]
        marks["submit"] = time.monotonic()
        job = submit(request, admitted)
        stamps[job.id] = marks  # the reply's end is noted in the same dict later
        marks["submitted"] = job.submitted
        return job

    convert.to_turns, service.submit = timed_to_turns, timed_submit

    async def stamped(scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await app(scope, receive, send)
        mark = now["marks"] = {"arrived": time.monotonic()}

        async def noted_send(message):
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                mark["sent"] = time.monotonic()  # the reply's last byte handed to the socket

        await app(scope, receive, noted_send)

    return stamped, stamps


def _rates(pairs, tokens: int) -> tuple[list[float], list[float]]:
    """Per pair: time to a 1-token answer (ms: the first token as the client sees it, with the reply's end) and
    the decode rate from the difference to a `tokens`-long answer on another image of the same size."""
    first = [1000 * short["total_s"] for short, _ in pairs]
    rates = [(tokens - 1) / (long["total_s"] - short["total_s"]) for short, long in pairs]
    return first, rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint instead of the 7B architecture")
    parser.add_argument("--tokens", type=int, default=256, help="forced answer length")
    parser.add_argument("--repeats", type=int, default=4, help="sequential pairs per path in each round")
    parser.add_argument("--concurrent", type=int, default=8, help="clients at once")
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--cap-gb", type=float, default=24.0)
    parser.add_argument("--cache-dir")
    parser.add_argument("--out", default="api.json")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate in-process and API rounds of --repeats pairs each (drift hits both alike)")
    parser.add_argument("--client", nargs=3, metavar=("URL", "FOLDER", "FIRST"), help=argparse.SUPPRESS)
    parser.add_argument("--lean", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        result = client_main(args.client[0], Path(args.client[1]), args.tokens, int(args.client[2]), args.repeats,
                             args.concurrent, args.lean)
        print(json.dumps(result))
        return 0

    sys.path.insert(0, str(HERE))
    import bench  # the engine as scripts/bench.py builds it (7B architecture at random weights)
    import torch
    import uvicorn

    from vlassist.api.app import create_app
    from vlassist.service.answering import AnswerService
    from vlassist.service.limits import context_admission

    cuda = torch.cuda.is_available() and not args.tiny
    if cuda and args.cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * 2**30 / total))
    env = {"VLASSIST_DEVICE": "cuda" if cuda else "cpu", "VLASSIST_COMPILE": "auto", "VLASSIST_DECODE_CONTEXT": "8192",
           "VLASSIST_MAX_IMAGE_TOKENS": "16384", "VLASSIST_MAX_PROMPT_TOKENS": "16384",
           "VLASSIST_CACHE_DIR": args.cache_dir or str(HERE.parent / ".bench" / "cache")}
    bench_args = argparse.Namespace(model=None, tiny=args.tiny, no_fuse=False)
    engine, weights = bench.make_engine(bench_args, env, cuda)
    if engine.upgrade is not None:
        engine.upgrade.wait()
    info = engine.info
    print(f"engine ready: decode={info.decode}", flush=True)

    folder = Path(tempfile.mkdtemp())
    size = tuple(int(v) for v in args.size.split("x"))
    per_round = 2 * args.repeats
    sent = _images(folder, 1 + 2 * per_round * args.rounds + args.concurrent, size, seed=0)
    local_images = _images(Path(tempfile.mkdtemp()), 2 + per_round * args.rounds, size, seed=10_000)
    _in_process(engine, local_images[:2], args.tokens)  # warm-up pair

    service = AnswerService(engine, admission=[context_admission(engine, 16384, 20000)])
    app, stamps = _stamped(create_app(service, engine.settings, model_id="default", family=info.family), service)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    def client(first: int, repeats: int, concurrent: int, lean: bool = False) -> dict:
        out = subprocess.run([sys.executable, __file__, "--client", url, str(folder), str(first), "--tokens",
                              str(args.tokens), "--repeats", str(repeats), "--concurrent", str(concurrent)]
                             + (["--lean"] if lean else []), capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # Rounds alternate the paths on the same engine, each request on an image of its own (no prefix reuse).
    local_pairs, sdk_pairs, lean_pairs = [], [], []
    for r in range(args.rounds):
        base = r * per_round
        local_pairs += _in_process(engine, local_images[2 + base:2 + base + per_round], args.tokens)
        sdk_pairs += client(1 + base, args.repeats, 0)["pairs"]
        lean_pairs += client(1 + per_round * args.rounds + base, args.repeats, 0, lean=True)["pairs"]
    together = client(1 + 2 * per_round * args.rounds, 0, args.concurrent)
    server.should_exit = True
    thread.join(10)
    service.close()
    for pairs in (sdk_pairs, lean_pairs):
        _add_server_marks(pairs, stamps)

    decode_image = statistics.median(short["decode_image_ms"] for short, _ in local_pairs)
    in_process_8 = sum(long["total_s"] for _, long in local_pairs)
    in_process_8 *= args.concurrent / len(local_pairs)  # the same number of answers as the concurrent clients
    local_first, local_rate = _rates(local_pairs, args.tokens)
    summary = {
        "in_process_first_token_ms": statistics.median(local_first), "in_process_first_all_ms": local_first,
        "in_process_tok_s": statistics.median(local_rate),
        "in_process_first_token_phases_ms": {
            k: statistics.median(short[k] for short, _ in local_pairs) for k in ("decode_image_ms", "engine_ms")},
        "concurrent_clients": args.concurrent, "concurrent_total_s": together["concurrent_total_s"],
        "in_process_sequential_total_s": in_process_8,
        "png_kb_median": statistics.median(len(b) for b in sent) / 1024,
    }
    for name, pairs in (("api", sdk_pairs), ("api_lean", lean_pairs)):
        first, rate = _rates(pairs, args.tokens)
        shorts = [short for short, _ in pairs]
        summary |= {
            f"{name}_first_token_ms": statistics.median(first), f"{name}_first_all_ms": first,
            f"{name}_tok_s": statistics.median(rate),
            # Each request's time outside the engine, less the image decode the in-process path also does:
            # the engine's own run-to-run spread (tens of ms) cancels out of this one.
            f"{name}_added_ms": statistics.median(
                1000 * one["total_s"] - one["phases"]["engine_ms"] - decode_image for one in shorts),
            f"{name}_first_token_phases_ms": {
                k: statistics.median(one["phases"][k] for one in shorts) for k in PHASES},
        }
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu", "weights": weights,
        "versions": info.versions | {"python": platform.python_version()}, "decode": info.decode,
        "image": args.size, "tokens": args.tokens, "in_process": local_pairs,
        "api": {"pairs": sdk_pairs, "concurrent": together["concurrent"]}, "api_lean": {"pairs": lean_pairs},
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    _print(result, in_process_8)
    return 0


PHASES = ("to_queue_ms", "queued_ms", "engine_ms", "to_client_end_ms", "client_and_http_ms", "body_ms",
          "to_turns_ms", "admission_ms", "server_end_ms", "client_end_ms")


def _add_server_marks(pairs, stamps: dict[str, dict]) -> None:
    """Split each request's time with the server's marks (same clock): the client and HTTP until the request
    reached the app, reading and checking the body, decoding its images, admission, the reply's end."""
    for pair in pairs:
        for one in pair:
            mark = stamps[one["phases"]["job"]]
            one["phases"].update(
                client_and_http_ms=1000 * (mark["arrived"] - one["started"]),
                body_ms=1000 * (mark["turns"] - mark["arrived"]),
                to_turns_ms=1000 * (mark["turns_done"] - mark["turns"]),
                admission_ms=1000 * (mark["submitted"] - mark["submit"]),
                server_end_ms=1000 * (mark["sent"] - one["phases"]["finished"]),
                client_end_ms=1000 * (one["ended"] - mark["sent"]))


def _print(result: dict, in_process_8: float) -> None:
    s = result["summary"]
    print(f"\n{result['device']} | {result['weights']} weights | decode {result['decode']} | {result['image']} | "
          f"{result['tokens']} tokens")
    print(f"{'':>26} {'in-process':>11} {'openai SDK':>11} {'bare HTTP':>10}")
    print(f"{'1-token answer ms':>26} {s['in_process_first_token_ms']:11.1f} {s['api_first_token_ms']:11.1f}"
          f" {s['api_lean_first_token_ms']:10.1f}")
    print(f"{'  added, from medians':>26} {'':>11} {s['api_first_token_ms'] - s['in_process_first_token_ms']:+11.1f}"
          f" {s['api_lean_first_token_ms'] - s['in_process_first_token_ms']:+10.1f}")
    print(f"{'  added, outside engine':>26} {'':>11} {s['api_added_ms']:+11.1f} {s['api_lean_added_ms']:+10.1f}")
    print(f"{'decode tok/s (median)':>26} {s['in_process_tok_s']:11.1f} {s['api_tok_s']:11.1f}"
          f" {s['api_lean_tok_s']:10.1f}")
    print("in process, median ms: " + ", ".join(
        f"{k[:-3]} {v:.1f}" for k, v in s["in_process_first_token_phases_ms"].items()))
    for name, label in (("api", "openai SDK"), ("api_lean", "bare HTTP")):
        print(f"{label}, median ms: " + ", ".join(
            f"{k[:-3]} {v:.1f}" for k, v in s[f"{name}_first_token_phases_ms"].items()))
    print(f"{s['concurrent_clients']} clients at once: {s['concurrent_total_s']:.1f} s total over the API; the same "
          f"{s['concurrent_clients']} answers one after another in process: {in_process_8:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
