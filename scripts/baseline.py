"""The plain transformers baseline for scripts/bench.py: the model-card recipe, nothing of vlassist imported.

Processor + `model.generate()` from image bytes, as the Qwen2.5-VL model card shows it, in a process of its
own, so no attention registration, compile, captured graph or streamer of the engine can touch it. Same
architecture (Qwen2.5-VL-7B at random bf16 weights, seed 0, the tiny checkpoint's tokenizer), same images
(random-noise PNGs, same seeds) and same forced answer lengths as the bench. Prints a table, writes JSON.

    python scripts/baseline.py --out baseline.json                  # GPU, 7B architecture, 24 GiB cap
    python scripts/baseline.py --tiny --tokens 8 --out t.json       # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"448x448": (448, 448), "1024x1024": (1024, 1024), "1920x1080": (1920, 1080)}
SIZES_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064)
MAX_IMAGE_TOKENS = 16384  # the bench's budget: every test image at full resolution
QUESTION, FOLLOW_UP = "Describe this screenshot in detail.", "What is in the top left corner?"


def _tiny_dir() -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny_model", ROOT / "scripts" / "make_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(Path(tempfile.mkdtemp()) / "tiny", "qwen2_5_vl")


def random_7b(tiny: Path, device: str):
    """The Qwen2.5-VL-7B architecture at random bf16 weights: the same construction and seed as the bench."""
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
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():  # the bench's initialisation, so both run the same weights
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0 if p.dim() == 1 and p.shape[0] > 1 else 0.0)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    model.generation_config.eos_token_id = [text.eos_token_id]
    model.generation_config.pad_token_id = text.pad_token_id
    return model.eval()


def tiny_model(tiny: Path, device: str):
    """The tiny checkpoint itself, loaded as the model card loads a checkpoint."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny, dtype=torch.float32).to(device).eval()


def processor_for(folder: Path):
    """AutoProcessor as the model card uses it; without torchvision (no video processor), the same classes
    with the image processor's PIL backend. Returns (processor, description)."""
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder)
        how = "AutoProcessor"
    except (ImportError, OSError, ValueError, TypeError) as exc:
        base = transformers.Qwen2_5_VLProcessor
        cls = type("ImagesOnly", (base,), {"get_attributes": classmethod(lambda c: ["image_processor", "tokenizer"])})
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        images = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
        processor = cls(image_processor=images, tokenizer=tokenizer, chat_template=tokenizer.chat_template)
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
        how = f"Qwen2_5_VLProcessor, PIL image processor (AutoProcessor: {why})"
    # The bench's budget (16384 visual tokens of 28x28 px), so both see every image at full resolution.
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": MAX_IMAGE_TOKENS * 28 * 28}
    return processor, f"{how}; image processor {type(processor.image_processor).__name__}"


def png(size, seed) -> bytes:
    """The bench's test image: random noise of `size`, seeded, as PNG bytes."""
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


class TokenClock(LogitsProcessor):
    """Notes when each token's logits are ready; waits for the device only at the first (time to first token)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        if not self.times and scores.is_cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return scores


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ask(model, processor, data: bytes, history: list[dict], question: str, tokens: int):
    """One answer, model-card style, from image bytes: (answer text, stats). The clock starts at the bytes."""
    _sync()
    started = time.perf_counter()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    decoded = time.perf_counter()
    messages = history + [{"role": "user", "content": [{"type": "text", "text": question}]}] if history else [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], padding=True, return_tensors="pt").to(model.device)
    clock = TokenClock()
    out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                         logits_processor=LogitsProcessorList([clock]))
    _sync()
    ended = time.perf_counter()
    prompt = inputs["input_ids"].shape[1]
    new = out.shape[1] - prompt
    answer = processor.batch_decode(out[:, prompt:], skip_special_tokens=True)[0]
    grid = inputs["image_grid_thw"]
    return answer, {
        "prompt_tokens": prompt, "visual_tokens": int(grid.prod(-1).sum()) // 4, "new_tokens": new,
        "decode_image_ms": 1000 * (decoded - started),
        "ttft_ms": 1000 * (clock.times[0] - decoded),  # from a decoded image, as the engine's TTFT is
        "ttft_from_bytes_ms": 1000 * (clock.times[0] - started),
        "decode_tok_s": (new - 1) / max(ended - clock.times[0], 1e-9) if new > 1 else 0.0,
    }


def measure(model, processor, data: bytes, tokens: int, followup_tokens: int, repeats: int) -> dict:
    """Medians over `repeats` of a first question and a follow-up about one image, after one full-length run.

    The first run at a size is kept apart: generate()'s growing cache makes the allocator take new blocks
    at every length it has not seen, so the process's first answer decodes slower than the ones after it.
    """
    _, warm = ask(model, processor, data, [], QUESTION, tokens)
    runs = []
    for _ in range(repeats):
        answer, first = ask(model, processor, data, [], QUESTION, tokens)
        history = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                   {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        _, follow = ask(model, processor, data, history, FOLLOW_UP, followup_tokens)
        runs.append((first, follow))
    med = statistics.median
    row = {k: runs[0][0][k] for k in ("prompt_tokens", "visual_tokens", "new_tokens")}
    for key in ("ttft_ms", "ttft_from_bytes_ms", "decode_image_ms", "decode_tok_s"):
        row[key] = med([a[key] for a, _ in runs])
        row[key.replace("_ms", "_all_ms") if key.endswith("_ms") else "decode_all_tok_s"] = [
            round(a[key], 2) for a, _ in runs]
    row["followup_ttft_ms"] = med([b["ttft_ms"] for _, b in runs])
    row["followup_ttft_all_ms"] = [round(b["ttft_ms"], 2) for _, b in runs]
    row["followup_prompt_tokens"] = runs[0][1]["prompt_tokens"]
    row["first_run"] = {k: round(warm[k], 2) for k in ("ttft_ms", "decode_tok_s")}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint instead of the 7B architecture")
    parser.add_argument("--tokens", type=int, default=256, help="forced answer length")
    parser.add_argument("--followup-tokens", type=int, default=8, help="answer length of the follow-up question")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cap-gb", type=float, default=24.0, help="GPU memory cap (emulates an RTX 4090)")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--out", default="baseline.json")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    if cuda and args.cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * 2**30 / total))
    started = time.perf_counter()
    tiny = _tiny_dir()
    model = tiny_model(tiny, device) if args.tiny else random_7b(tiny, device)
    processor, how = processor_for(tiny)
    _sync()
    build_s = time.perf_counter() - started
    names = args.sizes.split(",")
    images = {name: png(SIZES[name], i) for i, name in enumerate(names)}  # the bench's seeds: order in --sizes
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "recipe": "model card: processor(text, images) + model.generate(), greedy, forced length",
        "processor": how, "attn": model.config._attn_implementation,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "cap_gb": args.cap_gb if cuda else None, "tokens": args.tokens, "followup_tokens": args.followup_tokens,
        "build_s": build_s, "rows": [],
    }
    out = Path(args.out)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for name, data in images.items():
        row = {"path": "baseline", "image": name,
               **measure(model, processor, data, args.tokens, args.followup_tokens, args.repeats)}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(result, indent=2))
    result["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    out.write_text(json.dumps(result, indent=2))

    print(f"\n{result['device']} | plain generate() | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | {how}")
    print(f"{'image':>10} {'tokens':>6} | {'TTFT ms':>8} {'+PNG ms':>8} | {'follow-up ms':>12} | {'decode tok/s':>12}")
    for row in result["rows"]:
        print(f"{row['image']:>10} {row['prompt_tokens']:>6} | {row['ttft_ms']:8.0f} {row['decode_image_ms']:8.1f} |"
              f" {row['followup_ttft_ms']:12.0f} | {row['decode_tok_s']:12.1f}")
    if result["peak_gb"] is not None:
        print(f"peak GiB over these runs: {result['peak_gb']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
