"""Command line: `python -m vlassist ask IMAGE... --prompt TEXT`, `info`, `serve` and `batch`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from vlassist.batch.cli import FREE_BOXES_HELP
from vlassist.batch.cli import add_parser as add_batch_parser
from vlassist.cli_help import CliParser
from vlassist.config import QUANT, load_settings
from vlassist.conversation import GenerationOptions, Turn
from vlassist.errors import VlassistError
from vlassist.service.answering import AnswerService
from vlassist.service.jobs import Job, Request
from vlassist.service.limits import default_admission

QUANT_HELP = ("quantize a 16-bit checkpoint's text model at load: int8 or int4 (weight-only; kept in "
              "VLASSIST_CACHE_DIR so the next start reads it), none for the checkpoint's own weights "
              "(default: VLASSIST_QUANT)")


def _with_quant(settings, args):
    """Settings with --quant applied, if given."""
    return settings.with_(quant=args.quant) if getattr(args, "quant", None) else settings
ADAPTER_HELP = "peft LoRA adapter folder applied to the model at load (default: VLASSIST_ADAPTER)"


def _parser() -> argparse.ArgumentParser:
    defaults = GenerationOptions()
    ap = CliParser(prog="python -m vlassist", description="Offline visual analysis with Qwen-VL.")
    sub = ap.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="ask questions about images; the answer streams to stdout")
    ask.add_argument("images", nargs="*", type=Path, metavar="IMAGE")
    ask.add_argument("--model", type=Path, help="checkpoint folder (default: VLASSIST_MODEL_DIR)")
    ask.add_argument("--quant", choices=QUANT, help=QUANT_HELP)
    ask.add_argument("--adapter", type=Path, help=ADAPTER_HELP)
    ask.add_argument("--prompt", "-p", action="append",
                     help="a question; repeat for follow-up questions in the same conversation; "
                          "'-' reads one from standard input (for long texts)")
    ask.add_argument("--preset", help="task preset (describe, ocr, json, table, chart, html, grounding) as the "
                                      "first question when no --prompt is given")
    ask.add_argument("--target", default="object", help="what the grounding preset looks for")
    ask.add_argument("--free-boxes", action="store_true", help=FREE_BOXES_HELP)
    shape = ask.add_mutually_exclusive_group()
    shape.add_argument("--schema", type=Path, help="JSON Schema file: the answer is one JSON document valid "
                                                   "against it (printed alone on stdout)")
    shape.add_argument("--fields", help="comma-separated fields to extract as JSON, e.g. vendor,total:number")
    shape.add_argument("--template", help="extraction template: invoice, form, meter or table_rows")
    ask.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                     help="longest answer, in tokens")
    ask.add_argument("--creative", action="store_true", help="sample instead of greedy (precise) decoding")
    ask.add_argument("--temperature", type=float, default=defaults.temperature,
                     help="sampling temperature (--creative)")
    ask.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling probability (--creative)")
    ask.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty,
                     help="penalty on repeated tokens (--creative)")
    ask.add_argument("--max-image-tokens", type=int,
                     help="visual-token budget per image (default: VLASSIST_MAX_IMAGE_TOKENS)")
    ask.add_argument("--low-res", action="store_true", help="low-resolution mode (long side about 768 px)")
    ask.add_argument("--seed", type=int, help="random seed for sampling (default: none, a new one each run)")
    ask.add_argument("--no-cache", action="store_true", help="do not reuse KV caches between turns")
    ask.add_argument("--json-stats", action="store_true", help="print each answer's stats as a JSON line on stderr")
    info = sub.add_parser("info", help="load the model and print family, device, attention and memory")
    info.add_argument("--model", type=Path, help="checkpoint folder (default: VLASSIST_MODEL_DIR)")
    info.add_argument("--quant", choices=QUANT, help=QUANT_HELP)
    info.add_argument("--adapter", type=Path, help=ADAPTER_HELP)
    serve = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    serve.add_argument("--model", type=Path, help="checkpoint folder (default: VLASSIST_MODEL_DIR)")
    serve.add_argument("--quant", choices=QUANT, help=QUANT_HELP)
    serve.add_argument("--adapter", type=Path, help=ADAPTER_HELP)
    add_batch_parser(sub, defaults)
    return ap


def _options(args, settings) -> GenerationOptions:
    if args.max_new_tokens < 1:
        raise VlassistError("--max-new-tokens must be at least 1")
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens, precise=not args.creative, temperature=args.temperature,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        max_image_tokens=args.max_image_tokens or settings.max_image_tokens, low_res=args.low_res,
        seed=args.seed, use_cache=not args.no_cache,
    )


def _schema_text(args) -> str | None:
    """The JSON Schema text named by --schema, --fields or --template, checked; None when none was given."""
    from vlassist.answers.schemas import schema_text

    return schema_text(schema_path=args.schema, fields=args.fields, template=args.template)


def _prompts(args, family: str, schema_text: str | None) -> list[str]:
    from vlassist.answers.prompts import PRESETS, json_schema_prompt, task_prompt

    if args.prompt:
        return args.prompt
    if schema_text:
        return [json_schema_prompt(schema_text)]
    if not args.preset:
        raise VlassistError("give a question with --prompt (or a task with --preset)")
    if args.preset not in PRESETS:
        raise VlassistError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    return [task_prompt(args.preset, family, args.target)]


def _read_images(paths: list[Path]):
    from vlassist.images import load_image

    images = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VlassistError(f"{path}: cannot read ({exc.strerror or exc})") from None
        images.append(load_image(data, str(path)))
    return images


def cmd_ask(args) -> int:
    """Stream answers to each --prompt, as one conversation about the images."""
    settings = load_settings()
    if args.model:
        settings = settings.with_(model_dir=args.model)
    settings = _with_quant(settings, args)
    if getattr(args, "adapter", None):
        settings = settings.with_(adapter_dir=args.adapter)
    options = _options(args, settings)
    schema_text = _schema_text(args)
    from vlassist.service.limits import check_question

    if args.prompt:
        args.prompt = [sys.stdin.read() if prompt == "-" else prompt for prompt in args.prompt]
    for prompt in args.prompt or []:
        check_question(prompt, settings.max_question_chars)  # before anything is loaded
    images = _read_images(args.images)  # bad images fail before the model is loaded
    from vlassist.backends import load_answerer

    engine = load_answerer(settings)
    # The same answer service as the page and the API: admission checks, then one job per question.
    service = AnswerService(engine, admission=default_admission(engine, settings))
    try:
        if schema_text is not None:
            prompts = _prompts(args, engine.info.family, schema_text)
            return _ask_json(service, images, prompts, options, schema_text, args.json_stats)
        if args.preset == "grounding" and not args.prompt and not args.free_boxes:
            from dataclasses import replace

            from vlassist.answers.schemas import boxes_schema_text

            # As the page's "Find objects": the answer is held to the family's box list, so it always parses.
            options = replace(options, json_schema=boxes_schema_text(engine.info.family))
        return _ask_stream(service, images, _prompts(args, engine.info.family, None), options, args.json_stats)
    finally:
        service.close()


def _answer(service: AnswerService, turns: list[Turn], options, on_chunk=None) -> Job:
    """Run one question through the service; Ctrl+C stops it (the text so far is kept); failures raise."""
    job = service.submit(Request(list(turns), options))
    signal.signal(signal.SIGINT, lambda *_: service.cancel(job.id))
    for chunk in job.chunks():
        if on_chunk:
            on_chunk(chunk)
    if job.outcome == "failed":
        raise VlassistError(job.error or "the answer failed")
    return job


def _ask_stream(service: AnswerService, images, prompts: list[str], options, json_stats: bool) -> int:
    """Stream answers to each prompt, as one conversation about the images."""
    turns: list[Turn] = []
    for i, prompt in enumerate(prompts):
        turns.append(Turn("user", prompt, images if i == 0 else []))
        job = _answer(service, turns, options, lambda chunk: (sys.stdout.write(chunk), sys.stdout.flush()))
        sys.stdout.write("\n")
        sys.stdout.flush()
        if json_stats:
            print(json.dumps(job.stats.to_dict()), file=sys.stderr, flush=True)
        turns.append(Turn("assistant", job.text))
        if job.outcome == "stopped":
            break
    return 0


def _ask_json(service: AnswerService, images, prompts, options, schema_text: str, json_stats: bool) -> int:
    """Answer under the schema and print the one JSON document, or fail with a clear reason."""
    from dataclasses import replace

    from vlassist.answers.parsing import extract_json

    job = _answer(service, [Turn("user", prompts[0], images)], replace(options, json_schema=schema_text))
    if json_stats:
        print(json.dumps(job.stats.to_dict()), file=sys.stderr, flush=True)
    result = extract_json(job.text, schema_text)
    if job.stats.stop_reason == "length":
        raise VlassistError(f"the answer was cut by the length limit ({options.max_new_tokens} tokens) before "
                            "the JSON was complete; raise --max-new-tokens")
    if job.stats.stop_reason != "eos" or result is None or not result.valid:
        why = job.stats.error or job.stats.stop_reason
        raise VlassistError(f"no valid JSON document came back ({why})")
    for flag in result.flags:  # right type, wrong format (e.g. a date that is not a real date): say so, keep it
        print(f"check {flag.path}: {flag.value!r} {flag.reason}", file=sys.stderr)
    print(result.text)  # the model's own text: valid JSON, numbers exactly as written
    return 0


def cmd_info(args) -> int:
    """Load the model and describe it."""
    settings = load_settings()
    if args.model:
        settings = settings.with_(model_dir=args.model)
    settings = _with_quant(settings, args)
    if getattr(args, "adapter", None):
        settings = settings.with_(adapter_dir=args.adapter)
    from vlassist.backends import load_answerer

    engine = load_answerer(settings)
    info = engine.info
    upgrade = getattr(engine, "upgrade", None)
    if upgrade is not None:  # report the compiled step too (and leave its kernels in the cache for the next start)
        print(f"ready after {info.ready_s:.1f} s; waiting for the compiled decode step (built in the background) …",
              file=sys.stderr, flush=True)
        upgrade.wait()
    print(f"model:      {info.model_dir}")
    print(f"family:     {info.family}")
    print(f"device:     {info.device} ({info.dtype})")
    print(f"attention:  {info.attn} — {info.attn_reason}")
    print(f"decode:     {info.decode} — {info.decode_reason or 'default'} (warm-up {info.warmup_s:.1f} s)")
    print(f"parameters: {info.parameters:,}")
    print(f"load time:  {info.load_s:.1f} s")
    if getattr(info, "ready_s", 0.0):
        print(f"ready:      {info.ready_s:.1f} s after the process started (imports, load and warm-up)")
    if getattr(info, "upgraded_s", 0.0):
        print(f"compiled:   decode step serving {info.upgraded_s:.1f} s after the process started (answers were "
              "served by the captured graph until then)")
    if getattr(info, "compile_cache", ""):
        print(f"cache:      {info.compile_cache}")
    if getattr(info, "fused", ""):
        print(f"fused:      {info.fused}")
    if getattr(info, "weights_format", ""):
        print(f"weights:    {info.weights_format}" + (f" — {info.quant}" if getattr(info, "quant", "") else ""))
    if getattr(info, "adapter", ""):
        print(f"adapter:    {info.adapter_detail or info.adapter}")
    print("memory:     " + ", ".join(f"{k} {v:.2f} GiB" for k, v in engine.memory().items()))
    print("versions:   " + ", ".join(f"{k} {v}" for k, v in info.versions.items()))
    return 0


def cmd_serve(args) -> int:
    """Serve the model over HTTP until interrupted."""
    settings = load_settings()
    if args.model:
        settings = settings.with_(model_dir=args.model)
    settings = _with_quant(settings, args)
    if getattr(args, "adapter", None):
        settings = settings.with_(adapter_dir=args.adapter)
    from vlassist.api.server import serve

    return serve(settings, args.host, args.port)


def cmd_batch(args) -> int:
    """Answer one task for every image and PDF page of the inputs, into resumable JSONL or CSV."""
    from vlassist.batch.cli import run_batch

    settings = load_settings()
    if args.model:
        settings = settings.with_(model_dir=args.model)
    settings = _with_quant(settings, args)
    if getattr(args, "adapter", None):
        settings = settings.with_(adapter_dir=args.adapter)
    schema_text = _schema_text(args)
    return run_batch(args, settings, _options(args, settings), schema_text,
                     lambda family: _prompts(args, family, schema_text)[0])


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected errors print one line on stderr and exit 2."""
    args = _parser().parse_args(argv)
    try:
        return {"ask": cmd_ask, "info": cmd_info, "serve": cmd_serve, "batch": cmd_batch}[args.command](args)
    except VlassistError as exc:
        print(f"vlassist: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
