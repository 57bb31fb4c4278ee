"""Which answerer this process uses: a remote server when VLASSIST_BACKEND_URL is set, else the local model."""

from __future__ import annotations

from collections.abc import Callable

from vlassist.checkpoint import inspect_checkpoint
from vlassist.config import Settings
from vlassist.conversation import Answerer
from vlassist.errors import ConfigError


def load_answerer(settings: Settings, progress: Callable[[str, float, str], None] | None = None) -> Answerer:
    """A RemoteAnswerer on `settings.backend_url`, or the local engine loaded from `settings.model_dir`.

    `progress(stage, fraction, detail)`, if given, hears each stage of the load (vlassist/engine/loader.py).
    """
    if settings.backend_url:
        if settings.quant != "none":
            raise ConfigError(f"quantization {settings.quant} applies to a local model; the server at "
                              f"{settings.backend_url} answers with its own weights: unset VLASSIST_QUANT/--quant")
        from vlassist.remote import RemoteAnswerer

        if progress is not None:
            progress("read", 0.0, f"Connecting to the model server at {settings.backend_url}")
        answerer = RemoteAnswerer(settings)
        if progress is not None:
            progress("ready", 1.0, "Ready")
        return answerer
    # A missing or incomplete folder is reported at once: importing torch alone takes seconds.
    inspect_checkpoint(settings.model_dir)
    if progress is not None:
        progress("start", 0.0, "Starting PyTorch and transformers")
    from vlassist.engine import load_engine  # torch is imported only when a local model is wanted

    return load_engine(settings, progress)
