"""`python -m vlassist batch INPUT... --out results.jsonl|results.csv`: its options and the run from start to end."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vlassist.batch.inputs import DEFAULT_DPI, DPI_RANGE, Item, Loader, expand, parse_pages, plan_items
from vlassist.batch.rows import FAILED, OK, TRUNCATED, Results, row_key
from vlassist.config import Settings
from vlassist.conversation import GenerationOptions
from vlassist.errors import VlassistError

if TYPE_CHECKING:  # the task module pulls in the answer parsers; `ask` and `serve` need not import them
    from vlassist.batch.tasks import Task

BATCH_PRESETS = ("ocr", "json", "table", "chart", "describe", "grounding", "html")
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl+C
FREE_BOXES_HELP = ("grounding: let the model write its boxes freely instead of holding the answer to the family's "
                   "JSON box list (for a server that cannot follow a JSON Schema)")


def add_parser(sub, defaults: GenerationOptions) -> None:
    """Register the `batch` subcommand and its options."""
    p = sub.add_parser("batch", help="answer one task for every image and PDF page into JSONL or CSV (resumable)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or PDF files, folders (recursive) or globs")
    p.add_argument("--out", "-o", type=Path, required=True, help="results.jsonl, or results.csv (with a "
                                                                  "results.csv.jsonl log beside it)")
    p.add_argument("--model", type=Path, help="checkpoint folder (default: VLASSIST_MODEL_DIR)")
    p.add_argument("--quant", choices=("none", "int8", "int4"),
                   help="quantize a 16-bit checkpoint's text model at load: int8 or int4 (default: VLASSIST_QUANT)")
    p.add_argument("--adapter", type=Path, help="peft LoRA adapter folder applied to the model at load (default: "
                                                "VLASSIST_ADAPTER)")
    p.add_argument("--preset", choices=BATCH_PRESETS, help="the task for every image")
    p.add_argument("--prompt", "-p", action="append", help="the question for every image (instead of a preset's)")
    p.add_argument("--target", default="object", help="what the grounding preset looks for")
    p.add_argument("--free-boxes", action="store_true", help=FREE_BOXES_HELP)
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--schema", type=Path, help="JSON Schema file: every answer is JSON valid against it")
    shape.add_argument("--fields", help="comma-separated fields to extract as JSON, e.g. vendor,total:number")
    shape.add_argument("--template", help="extraction template: invoice, form, meter or table_rows")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help="PDF rendering resolution")
    p.add_argument("--pages", help="PDF pages to answer, e.g. 1-3,7,10- (default: all)")
    p.add_argument("--retry-failed", action="store_true",
                   help="answer again the rows that failed or were cut at the answer length (truncated) in earlier "
                   "runs; give the cut ones a larger --max-new-tokens")
    p.add_argument("--concurrency", type=int, default=1,
                   help="requests in flight on a remote backend (VLASSIST_BACKEND_URL); the local engine runs one")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="images answered together on the local engine (default: auto, from free GPU memory "
                        "within the 24 GB budget; 1 on the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="longest answer, in tokens")
    p.add_argument("--min-new-tokens", type=int, default=0, help="force answers at least this long (benchmarks)")
    p.add_argument("--creative", action="store_true", help="sample instead of greedy (precise) decoding")
    p.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature (--creative)")
    p.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling probability (--creative)")
    p.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty,
                   help="penalty on repeated tokens (--creative)")
    p.add_argument("--max-image-tokens", type=int,
                   help="visual-token budget per image or page (default: VLASSIST_MAX_IMAGE_TOKENS)")
    p.add_argument("--low-res", action="store_true", help="low-resolution mode (long side about 768 px)")
    p.add_argument("--seed", type=int, help="random seed for sampling (default: none, a new one each run)")
    p.add_argument("--no-cache", action="store_true", help="do not reuse KV caches")


def _check(args, max_question_chars: int) -> None:
    """Usage errors found before anything is read or loaded (exit status 2)."""
    from vlassist.service.limits import check_question

    if args.out.suffix.lower() not in (".jsonl", ".csv"):
        raise VlassistError(f"--out {args.out}: name a .jsonl or .csv file")
    if args.prompt and len(args.prompt) > 1:
        raise VlassistError("a batch asks one question of every image: give --prompt once")
    if not (args.prompt or args.preset or args.schema or args.fields or args.template):
        raise VlassistError("give the task with --preset, --prompt, or --fields/--template/--schema")
    if not DPI_RANGE[0] <= args.dpi <= DPI_RANGE[1]:
        raise VlassistError(f"--dpi must be from {DPI_RANGE[0]} to {DPI_RANGE[1]}")
    if args.concurrency < 1 or args.min_new_tokens < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise VlassistError("--concurrency and --batch-size must be at least 1 and --min-new-tokens at least 0")
    if args.prompt:
        check_question(args.prompt[0], max_question_chars)


@dataclass
class Plan:
    """What this run has to do: the task, the model, every row the inputs make and those not yet done."""

    task: Task
    family: str
    model: str
    answerer: object | None  # a remote answerer is connected while planning; a local engine loads only if needed
    items: list[Item]
    keys: dict[int, tuple]  # id(item) → its row key
    todo: list[Item] = field(default_factory=list)
    skipped: int = 0
    failed_earlier: int = 0


def run_batch(args, settings: Settings, options: GenerationOptions, schema_text: str | None,
              prompt_for: Callable[[str], str]) -> int:
    """Run the batch: 0 when every row is ok, 1 when any failed or was truncated, 130 when interrupted (2: usage)."""
    from vlassist.answers.schemas import boxes_schema_text
    from vlassist.batch.tasks import make_task

    _check(args, settings.max_question_chars)
    pages = parse_pages(args.pages)
    options = replace(options, min_new_tokens=min(args.min_new_tokens, options.max_new_tokens))
    refused: dict = {}  # links leading out of a walked folder: rows that say so
    items = plan_items(expand(args.inputs, refused), pages, refused)
    answerer, family, model = _model(settings)
    boxes = None if args.free_boxes or args.prompt else boxes_schema_text(family)
    task = make_task(args.preset, prompt_for(family), schema_text, options, boxes)
    results = Results(args.out, task.id, model)
    keys = {id(item): row_key(item.sha256, item.source, item.page, args.dpi, task.id, model) for item in items}
    plan = Plan(task, family, model, answerer, items, keys)
    for item in items:
        status = results.status(keys[id(item)])
        if status is None or (status in (FAILED, TRUNCATED) and args.retry_failed):
            plan.todo.append(item)
        else:
            plan.skipped += 1
            plan.failed_earlier += status != OK
    try:
        finished = _answer(args, settings, options, plan, results)
    except KeyboardInterrupt:  # while the model loaded, or a second Ctrl+C: no summary, the rows are safe
        print("\nvlassist batch: interrupted; every finished row is saved; run the same command again to continue",
              file=sys.stderr)
        return INTERRUPTED
    if not finished:
        return INTERRUPTED
    return 1 if any(results.status(keys[id(item)]) != OK for item in items) else 0


def _model(settings: Settings):
    """(answerer or None, family, model name): a local checkpoint is only inspected here, loaded when needed."""
    from vlassist.backends import load_answerer

    if settings.backend_url:
        answerer = load_answerer(settings)
        return answerer, answerer.info.family, Path(str(answerer.info.model_dir)).name
    from vlassist.checkpoint import inspect_checkpoint, model_id

    family = inspect_checkpoint(settings.model_dir)  # a wrong folder fails now, before any file is read
    return None, family.model_type, model_id(Path(settings.model_dir).resolve(), settings.adapter_dir)


def _answer(args, settings: Settings, options: GenerationOptions, plan: Plan, results: Results) -> bool:
    """Answer the rows still to do, with progress and a summary; False if Ctrl+C ended the run early."""
    from vlassist.backends import load_answerer
    from vlassist.batch.progress import Progress
    from vlassist.batch.run import BatchRunner, close_services
    from vlassist.service.answering import AnswerService
    from vlassist.service.limits import default_admission

    answerer = plan.answerer
    if plan.todo and answerer is None:
        answerer = load_answerer(settings)
    if args.concurrency > 1 and not settings.backend_url:
        print("vlassist batch: the local engine answers --batch-size images together; --concurrency applies to "
              "remote backends (VLASSIST_BACKEND_URL)", file=sys.stderr)
    slots = (args.concurrency if settings.backend_url else 1) if plan.todo else 0
    services = [AnswerService(answerer, admission=default_admission(answerer, settings)) for _ in range(slots)]
    progress = Progress(plan.todo, enabled=not args.no_progress)
    loader = Loader(args.dpi)

    def write(item: Item, row: dict) -> None:
        results.add(plan.keys[id(item)], row)
        progress.row(item, row)

    batch_size = _batch_size(args, settings, options, answerer) if plan.todo else 1
    runner = BatchRunner(services, plan.task, options, plan.family, plan.model, loader, write, batch_size)
    results.open()
    try:
        finished = runner.run(plan.todo)
    finally:
        close_services(services)
        loader.close()
        results.close()
        progress.close()
    print(progress.summary(plan.skipped, plan.failed_earlier, not finished, str(args.out)), file=sys.stderr)
    return finished


PROMPT_TEXT_TOKENS = 256  # the template and question around each image, for the auto batch size


def _batch_size(args, settings: Settings, options: GenerationOptions, answerer) -> int:
    """Rows per batched decode: --batch-size, else the engine's estimate for one image and answer; 1 if remote."""
    if settings.backend_url:
        if args.batch_size and args.batch_size > 1:
            print("vlassist batch: --batch-size applies to the local engine; a remote backend batches the "
                  "--concurrency requests in flight itself", file=sys.stderr)
        return 1
    if args.batch_size:
        return args.batch_size
    if not options.precise:  # sampled answers run one at a time anyway (engine/batched.py says why)
        return 1
    estimate = getattr(answerer, "batch_size_for", None)
    tokens = options.max_image_tokens + PROMPT_TEXT_TOKENS + options.max_new_tokens
    return estimate(tokens) if estimate else 1
