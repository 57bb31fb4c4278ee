"""Settings read once from VLASSIST_* environment variables into one frozen dataclass."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlassist.conversation import GenerationOptions
from vlassist.errors import ConfigError
from vlassist.families import FAMILIES

DEVICES = ("auto", "cuda", "cpu")
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")
COMPILE = ("auto", "compile", "graph", "static", "off")
QUANT = ("none", "int8", "int4")  # weight-only quantization at load of a 16-bit checkpoint
ADAPTER_MODES = ("auto", "merge", "side")
DEFAULT_MODEL_DIR = "models/Qwen2.5-VL-7B-Instruct"
DEFAULT_IMAGE_TOKENS = GenerationOptions().max_image_tokens  # one default, kept in GenerationOptions


@dataclass(frozen=True)
class Settings:
    """Everything configurable about vlassist, with its defaults."""

    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    data_dir: Path = Path("data")
    cache_dir: Path | None = None  # compiled kernels kept across restarts; None: data_dir / "cache"
    device: str = "auto"
    attn: str = "auto"
    max_image_tokens: int = DEFAULT_IMAGE_TOKENS
    gpu_memory_gb: float | None = None
    cpu_threads: int | None = None
    user_header: str | None = None
    stream_timeout_s: float = 600.0
    kv_cache_gb: float = 2.0
    compile: str = "auto"
    decode_context: int = 8192
    max_prompt_tokens: int = 16384  # prompt cap on top of the model's context (README: what fits a 24 GB card)
    max_question_chars: int = 20000
    min_answer_tokens: int = 0  # every answer at least this long (benchmarks and tests that must interrupt one)
    api_key: str | None = field(default=None, repr=False)  # bearer key `vlassist serve` asks for; None: none
    backend_url: str | None = None  # an OpenAI-compatible server to answer with instead of a local model
    backend_key: str | None = field(default=None, repr=False)  # kept out of logs and tracebacks
    backend_model: str | None = None  # the server's model name; None: the first one it lists
    backend_family: str | None = None  # box coordinates of the server's model; None: guessed from its name
    models_dir: Path | None = None  # checkpoints the page offers to switch to; None: the model folder's parent
    admin_users: tuple[str, ...] = ()  # who may switch the model when users are named by VLASSIST_USER_HEADER
    parallel: int = 0  # answers decoded together by the local engine; 0: from the memory budget (1 on the CPU)
    prefill_chunk: int = 512  # prompt tokens prefilled between two decode steps of the answers already running
    metrics: bool = True  # `vlassist serve` answers GET /metrics (Prometheus text), behind the API key if one is set
    quant: str = "none"  # int8 | int4: quantize a 16-bit checkpoint's text model at load (kept in cache_root)
    max_request_megapixels: float = 200.0  # decoded pixels one request's images may take (refused from headers)
    max_decode_megapixels: float = 400.0  # decoded pixels held at once by all requests being decoded
    max_body_mb: float = 50.0  # the API refuses a larger request body with 413
    max_connections: int = 500  # the API's concurrent connections (fewer if the descriptor limit is lower)
    header_timeout_s: float = 10.0  # the API closes a connection that sends no complete request header in time
    keepalive_s: float = 5.0  # the API closes an idle keep-alive connection after this long
    max_header_kb: int = 64  # the API refuses a larger request header with 431
    adapter_dir: Path | None = None  # a peft LoRA adapter folder applied to the model at load; None: none
    adapter_mode: str = "auto"  # auto: merged into 16-bit weights, a side path on quantized ones; merge | side

    @property
    def models_root(self) -> Path:
        """The folder whose checkpoint subfolders the page lists: VLASSIST_MODELS_DIR, else the model's parent."""
        return self.models_dir if self.models_dir is not None else self.model_dir.parent

    @property
    def cache_root(self) -> Path:
        """The folder compiled artifacts are kept in: VLASSIST_CACHE_DIR, else `cache` in the data folder."""
        return self.cache_dir if self.cache_dir is not None else self.data_dir / "cache"

    def with_(self, **changes) -> Settings:
        """Return a copy with some fields changed (e.g. a --model option)."""
        return replace(self, **changes)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name}={env[name]!r} is not valid: use one of {', '.join(choices)}")
    return value


def _number(env: Mapping[str, str], name: str, kind: type, default, low: float, high: float):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is out of range: use a value from {low:g} to {high:g}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read VLASSIST_* variables (from `env`, default os.environ) and validate them."""
    env = os.environ if env is None else env
    header = env.get("VLASSIST_USER_HEADER", "").strip() or None
    if header is not None and not all(c.isalnum() or c in "-_" for c in header):
        raise ConfigError(f"VLASSIST_USER_HEADER={header!r} is not a valid HTTP header name")
    backend_url = env.get("VLASSIST_BACKEND_URL", "").strip().rstrip("/") or None
    if backend_url is not None and not backend_url.startswith(("http://", "https://")):
        raise ConfigError(f"VLASSIST_BACKEND_URL={backend_url!r} must start with http:// or https://")
    backend_family = env.get("VLASSIST_BACKEND_FAMILY", "").strip() or None
    if backend_family is not None and backend_family not in FAMILIES:
        raise ConfigError(f"VLASSIST_BACKEND_FAMILY={backend_family!r} is not valid: use one of {', '.join(FAMILIES)}")
    return Settings(
        model_dir=Path(env.get("VLASSIST_MODEL_DIR", "").strip() or DEFAULT_MODEL_DIR).expanduser(),
        data_dir=Path(env.get("VLASSIST_DATA_DIR", "").strip() or "data").expanduser(),
        cache_dir=Path(raw).expanduser() if (raw := env.get("VLASSIST_CACHE_DIR", "").strip()) else None,
        device=_choice(env, "VLASSIST_DEVICE", DEVICES, "auto"),
        attn=_choice(env, "VLASSIST_ATTN", ATTENTION, "auto"),
        max_image_tokens=_number(env, "VLASSIST_MAX_IMAGE_TOKENS", int, DEFAULT_IMAGE_TOKENS, 4, 16384),
        gpu_memory_gb=_number(env, "VLASSIST_GPU_MEMORY_GB", float, None, 1, 4096),
        cpu_threads=_number(env, "VLASSIST_CPU_THREADS", int, None, 1, 1024),
        user_header=header,
        stream_timeout_s=_number(env, "VLASSIST_STREAM_TIMEOUT_S", float, 600.0, 1, 86400),
        kv_cache_gb=_number(env, "VLASSIST_KV_CACHE_GB", float, 2.0, 0, 1024),
        compile=_choice(env, "VLASSIST_COMPILE", COMPILE, "auto"),
        decode_context=_number(env, "VLASSIST_DECODE_CONTEXT", int, 8192, 256, 262144),
        max_prompt_tokens=_number(env, "VLASSIST_MAX_PROMPT_TOKENS", int, 16384, 256, 1_048_576),
        max_question_chars=_number(env, "VLASSIST_MAX_QUESTION_CHARS", int, 20000, 1, 10_000_000),
        min_answer_tokens=_number(env, "VLASSIST_MIN_ANSWER_TOKENS", int, 0, 0, 1_000_000),
        api_key=env.get("VLASSIST_API_KEY", "").strip() or None,
        backend_url=backend_url,
        backend_key=env.get("VLASSIST_BACKEND_KEY", "").strip() or None,
        backend_model=env.get("VLASSIST_BACKEND_MODEL", "").strip() or None,
        backend_family=backend_family,
        models_dir=Path(raw).expanduser() if (raw := env.get("VLASSIST_MODELS_DIR", "").strip()) else None,
        admin_users=tuple(name for part in env.get("VLASSIST_ADMIN_USERS", "").split(",") if (name := part.strip())),
        parallel=_number(env, "VLASSIST_PARALLEL", int, 0, 0, 256),
        prefill_chunk=_number(env, "VLASSIST_PREFILL_CHUNK", int, 512, 16, 1_048_576),
        metrics=_choice(env, "VLASSIST_METRICS", ("1", "0", "on", "off", "true", "false"), "1") in ("1", "on", "true"),
        quant=_choice(env, "VLASSIST_QUANT", QUANT, "none"),
        max_request_megapixels=_number(env, "VLASSIST_MAX_REQUEST_MEGAPIXELS", float, 200.0, 1, 100_000),
        max_decode_megapixels=_number(env, "VLASSIST_MAX_DECODE_MEGAPIXELS", float, 400.0, 1, 100_000),
        max_body_mb=_number(env, "VLASSIST_MAX_BODY_MB", float, 50.0, 0.01, 100_000),
        max_connections=_number(env, "VLASSIST_MAX_CONNECTIONS", int, 500, 8, 1_000_000),
        header_timeout_s=_number(env, "VLASSIST_HEADER_TIMEOUT_S", float, 10.0, 0.1, 3600),
        keepalive_s=_number(env, "VLASSIST_KEEPALIVE_S", float, 5.0, 0.1, 3600),
        max_header_kb=_number(env, "VLASSIST_MAX_HEADER_KB", int, 64, 1, 65536),
        adapter_dir=Path(raw).expanduser() if (raw := env.get("VLASSIST_ADAPTER", "").strip()) else None,
        adapter_mode=_choice(env, "VLASSIST_ADAPTER_MODE", ADAPTER_MODES, "auto"),
    )
