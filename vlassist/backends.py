"""Which answerer this process uses: a remote server when VLASSIST_BACKEND_URL is set, else the local model."""

from __future__ import annotations

from vlassist.config import Settings
from vlassist.conversation import Answerer


def load_answerer(settings: Settings) -> Answerer:
    """A RemoteAnswerer on `settings.backend_url`, or the local engine loaded from `settings.model_dir`."""
    if settings.backend_url:
        from vlassist.remote import RemoteAnswerer

        return RemoteAnswerer(settings)
    from vlassist.engine import load_engine  # torch is imported only when a local model is wanted

    return load_engine(settings)
