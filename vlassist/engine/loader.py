"""Load a local checkpoint onto the chosen device with the best attention implementation available."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer  # noqa: E402

from vlassist import offline  # noqa: F401  (sets the offline switches before transformers is imported)
from vlassist.checkpoint import inspect_checkpoint
from vlassist.config import Settings
from vlassist.engine import attention, quant
from vlassist.engine.adapters import apply_adapter, read_config
from vlassist.engine.fuse import fuse_projections
from vlassist.engine.quant.load import load_quantized, tensor_files
from vlassist.engine.vision_attention import use_varlen
from vlassist.errors import ConfigError
from vlassist.families import Family
from vlassist.families import family as family_of

log = logging.getLogger(__name__)
transformers.utils.logging.disable_progress_bar()  # a CLI answer should be the only thing on the terminal

# progress(stage, fraction of the whole load from 0 to 1, what is happening in words); stages in load order:
# "read" (configuration, tokenizer), "weights", "device", then load_engine's "warmup" and "ready".
Progress = Callable[[str, float, str], None]
WEIGHTS_FROM, WEIGHTS_TO = 0.05, 0.80  # the share of the progress bar reading the weights takes
_hook_lock = threading.Lock()  # transformers' tqdm hook is process-wide: one load at a time reports through it


def _report(progress: Progress | None, stage: str, fraction: float, detail: str) -> None:
    if progress is not None:
        progress(stage, fraction, detail)


def weight_files(folder: Path) -> list[tuple[str, int]]:
    """The checkpoint's weight files in load order with their sizes in bytes (shards from the index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        names = ["model.safetensors"]
    return [(name, (folder / name).stat().st_size) for name in names if (folder / name).is_file()]


class _WeightsBar:
    """Stands in for transformers' "Loading weights" bar: reports tensors done as bytes and shards read."""

    def __init__(self, bar, total: int, progress: Progress, files: list[tuple[str, int]]):
        self._bar, self._total, self._progress, self._files = bar, max(1, total), progress, files
        self._bytes = sum(size for _, size in files)

    def __iter__(self):
        shown = -1.0
        for done, item in enumerate(self._bar, 1):
            share = done / self._total
            if share - shown >= 0.01 or done == self._total:  # about a hundred updates, however many tensors
                shown = share
                self._progress("weights", WEIGHTS_FROM + share * (WEIGHTS_TO - WEIGHTS_FROM), self._detail(share))
            yield item

    def _detail(self, share: float) -> str:
        read = share * self._bytes
        shard, upto = len(self._files), 0
        for number, (_, size) in enumerate(self._files, 1):
            upto += size
            if read <= upto:
                shard = number
                break
        text = f"Reading weights: {read / 2**30:.2f} of {self._bytes / 2**30:.2f} GiB"
        return text + (f" (shard {shard} of {len(self._files)})" if len(self._files) > 1 else "")

    def __getattr__(self, name):
        return getattr(self._bar, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _weights_hook(progress: Progress, files: list[tuple[str, int]]):
    def hook(factory, args, kwargs):
        bar = factory(*args, **kwargs)
        if kwargs.get("desc") != "Loading weights" or not args or not hasattr(args[0], "__len__"):
            return bar
        return _WeightsBar(bar, len(args[0]), progress, files)

    return hook


@dataclass
class ModelInfo:
    """What was loaded, where, and why this attention implementation."""

    model_dir: str
    family: str
    device: str
    dtype: str
    attn: str
    attn_reason: str
    factor: int
    min_pixels: int
    load_s: float = 0.0
    parameters: int = 0
    decode: str = "eager"  # eager | static | graph | compile (see vlassist.engine.fastdecode)
    decode_reason: str = ""
    warmup_s: float = 0.0  # compile and capture time, spent at load so no question waits for it
    ready_s: float = 0.0  # process start to the first answer possible: imports, load and warm-up together
    upgraded_s: float = 0.0  # process start to the compiled decode step serving (built in the background)
    compile_cache: str = ""  # where compiled kernels are kept across restarts, and whether any were found
    fused: str = ""  # which projections were fused into one product each at load (CUDA only)
    weights_format: str = ""  # bf16 | fp16 | fp32 | awq | fp8 | w4a16 | int8 | int4 (vlassist.engine.quant)
    quant: str = ""  # the quantized format in words (kernel, groups, where on-load weights are kept)
    adapter: str = ""  # the LoRA adapter folder applied at load; "" when none
    adapter_detail: str = ""  # how it was applied: layers merged, layers kept as a low-rank side path
    versions: dict = field(default_factory=dict)


def process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere since vlassist's engine was imported)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def pick_device(requested: str) -> str:
    """Resolve auto|cuda|cpu to the device we will really use."""
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise ConfigError("VLASSIST_DEVICE=cuda but no CUDA GPU is visible to PyTorch")
    return "cpu"


def attention_candidates(requested: str, device: str) -> list[tuple[str, str]]:
    """Implementations to try in order, each with the reason it was chosen."""
    if requested in ("sdpa", "eager"):
        return [(requested, f"set by VLASSIST_ATTN={requested}")]
    if device != "cuda":
        why = "flash_attention_2 needs a CUDA GPU" if requested == "flash_attention_2" else "CPU"
        return [("sdpa", f"{why}; using PyTorch SDPA")]
    if importlib.util.find_spec("flash_attn") is None:
        return [("sdpa", "flash_attn is not installed; using PyTorch SDPA")]
    return [("flash_attention_2", "flash_attn is installed and loaded"), ("sdpa", "")]


def _image_only_processor(model_type: str, image_processor, tokenizer, chat_template: str | dict | None):
    # The stock processors insist on a video processor, which needs torchvision; vlassist takes images only.
    base = _processor_class(model_type)
    cls = type(base.__name__ + "ImagesOnly", (base,),
               {"get_attributes": classmethod(lambda c: ["image_processor", "tokenizer"])})
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def _processor_class(model_type: str):
    """The transformers processor class vlassist.families names for `model_type`."""
    return getattr(transformers, family_of(model_type).processor)


def _chat_template(folder: Path, tokenizer, model_type: str = "qwen2_5_vl") -> str | dict | None:
    """The chat template AutoProcessor would load from `folder`, else the tokenizer's own.

    transformers decides which file wins (processor_config.json's key, then the legacy chat_template.json over
    chat_template.jinja, plus chat_templates/*.jinja); asking it keeps vlassist rendering what a stock
    AutoProcessor renders instead of re-implementing that choice.
    """
    processor_dict, _ = _processor_class(model_type).get_processor_dict(str(folder), local_files_only=True)
    template = processor_dict.get("chat_template")
    return template if template else getattr(tokenizer, "chat_template", None)


def load_model(folder: Path, dtype, device: str, candidates: list[tuple[str, str]],
               progress: Progress | None = None, fmt: quant.WeightFormat | None = None):
    """Load the weights with the first attention implementation that works: (model, attn, reason).

    transformers does not fall back from flash_attention_2 by itself, so a failure there is caught here
    and the next candidate (SDPA) is used, with the failure given as the reason. `progress` hears the
    weights being read, through transformers' own per-tensor progress bar. A quantized `fmt` is loaded by
    vlassist.engine.quant.load, tensor by tensor, with the format's layers in place of the linears.
    """
    failure = ""
    for attn, reason in candidates:
        try:
            if fmt is not None:
                def read(share: float) -> None:
                    _report(progress, "weights", WEIGHTS_FROM + share * (WEIGHTS_TO - WEIGHTS_FROM),
                            f"Reading {fmt.name} weights: {share:.0%}")

                model = load_quantized(folder, fmt, dtype, device, attn, read)
                if attn == "sdpa":
                    attention.install(model)
                return model, attn, (f"{failure}; using PyTorch SDPA" if failure else reason)
            with _hook_lock:
                previous = None
                if progress is not None:
                    hook = _weights_hook(progress, weight_files(folder))
                    previous = transformers.utils.logging.set_tqdm_hook(hook)
                try:
                    model = AutoModelForImageTextToText.from_pretrained(
                        folder, dtype=dtype, attn_implementation=attn, local_files_only=True,
                        trust_remote_code=False, use_safetensors=True, device_map=device if device == "cuda" else None,
                    )
                finally:
                    if progress is not None:
                        transformers.utils.logging.set_tqdm_hook(previous)
        except (ImportError, ValueError, RuntimeError, OSError) as exc:
            if attn != "flash_attention_2":
                raise
            failure = f"flash_attention_2 failed to load ({str(exc).strip().splitlines()[0][:160]})"
            log.warning("falling back: %s", failure)
            continue
        if attn == "sdpa":
            attention.install(model)  # no dense (new × all tokens) mask after a reused prefix
        return model, attn, (f"{failure}; using PyTorch SDPA" if failure else reason)
    raise RuntimeError("no attention implementation could be loaded")


def load(settings: Settings, progress: Progress | None = None):
    """Load model + processor from settings.model_dir; return (model, processor, family, ModelInfo).

    `progress`, if given, is told each stage with the fraction of the whole load done (see Progress).
    """
    started = time.perf_counter()
    folder = Path(settings.model_dir)
    family: Family = inspect_checkpoint(folder)
    _report(progress, "read", 0.01, f"Reading the configuration and tokenizer of {folder.name}")
    device = pick_device(settings.device)
    if device == "cpu":
        torch.set_num_threads(settings.cpu_threads or max(1, os.cpu_count() or 1))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda" and settings.gpu_memory_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, settings.gpu_memory_gb * 2**30 / total))

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    template = _chat_template(folder, tokenizer, family.model_type)
    processor = _image_only_processor(family.model_type, image_processor, tokenizer, template)

    fmt = quant.choose(folder, settings.quant, device, settings.cache_root, tensor_files(folder))
    if settings.adapter_dir is not None:
        read_config(Path(settings.adapter_dir))  # a wrong folder is refused before gigabytes of weights are read
    _report(progress, "weights", WEIGHTS_FROM, "Reading weights")
    model, attn, reason = load_model(folder, dtype, device, attention_candidates(settings.attn, device), progress,
                                     fmt)
    where = "GPU" if device == "cuda" else "CPU"
    _report(progress, "device", WEIGHTS_TO, f"Moving the model to the {where} and preparing it")
    model.eval()
    applied = apply_adapter(model, Path(settings.adapter_dir), settings.adapter_mode) if settings.adapter_dir else None
    if attn == "sdpa":  # flash_attention_2 has its own varlen path; eager stays the plain reference
        use_varlen(model)
    # Fewer, larger products per decode step on the GPU; on the CPU answers stay the stock model's, bit for bit.
    fused = fuse_projections(model) if device == "cuda" else ""
    size = getattr(image_processor, "size", None) or {}
    min_pixels = int(size.get("shortest_edge") or size.get("min_pixels") or 4 * family.factor**2)
    info = ModelInfo(
        model_dir=str(folder), family=family.model_type, device=device, dtype=str(dtype).replace("torch.", ""),
        attn=attn, attn_reason=reason, factor=family.factor, min_pixels=min_pixels,
        load_s=time.perf_counter() - started, parameters=quant.count_parameters(model),
        versions={"torch": torch.__version__, "transformers": transformers.__version__}, fused=fused,
        weights_format=fmt.name if fmt else quant.DTYPE_FORMATS[dtype], quant=fmt.describe() if fmt else "",
        adapter=str(settings.adapter_dir) if applied else "", adapter_detail=applied.describe() if applied else "",
    )
    return model, processor, family, info
