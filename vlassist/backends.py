"""Which answerer this process uses: a remote server when VLASSIST_BACKEND_URL is set, else the local model."""

from __future__ import annotations

from collections.abc import Callable

from vlassist.adapter_folder import read_config
from vlassist.checkpoint import inspect_checkpoint
from vlassist.config import Settings
from vlassist.conversation import Answerer
from vlassist.errors import ConfigError
from vlassist.fit import FitError, check_fit


def check_local_fit(settings: Settings) -> None:
    """Refuse, before anything is loaded, a local checkpoint whose estimate exceeds the GPU memory budget (fit.py).

    On the CPU (VLASSIST_DEVICE=cpu) the GPU budget does not apply; under `auto` the estimate is checked, as a
    GPU is what `auto` looks for.
    """
    if settings.device == "cpu":
        return
    try:
        check_fit(settings.model_dir, settings.gpu_memory_gb, settings.decode_context, settings.max_image_tokens,
                  settings.quant)  # VLASSIST_QUANT: int8/int4 made on load are what must fit
    except FitError as exc:
        raise FitError(f"{exc}. (VLASSIST_DEVICE=cpu runs on the CPU without this limit.)") from None


def load_answerer(settings: Settings, progress: Callable[[str, float, str], None] | None = None) -> Answerer:
    """A RemoteAnswerer on `settings.backend_url`, or the local engine loaded from `settings.model_dir`.

    `progress(stage, fraction, detail)`, if given, hears each stage of the load (vlassist/engine/loader.py).
    """
    if settings.backend_url:
        if settings.quant != "none":
            raise ConfigError(f"quantization {settings.quant} applies to a local model; the server at "
                              f"{settings.backend_url} answers with its own weights: unset VLASSIST_QUANT/--quant")
        if settings.adapter_dir is not None:
            raise ConfigError("VLASSIST_ADAPTER (--adapter) applies to a local model; with VLASSIST_BACKEND_URL the "
                              "server applies its own adapters: name its model id in VLASSIST_BACKEND_MODEL")
        from vlassist.remote import RemoteAnswerer

        if progress is not None:
            progress("read", 0.0, f"Connecting to the model server at {settings.backend_url}")
        answerer = RemoteAnswerer(settings)
        if progress is not None:
            progress("ready", 1.0, "Ready")
        return answerer
    # A missing or incomplete folder is reported at once: importing torch alone takes seconds.
    inspect_checkpoint(settings.model_dir)
    check_local_fit(settings)
    if settings.adapter_dir is not None:
        read_config(settings.adapter_dir)  # a wrong adapter folder is refused before torch is imported
    if progress is not None:
        progress("start", 0.0, "Starting PyTorch and transformers")
    from vlassist.engine import load_engine  # torch is imported only when a local model is wanted

    return load_engine(settings, progress)
