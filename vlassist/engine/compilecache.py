"""Compiled decode kernels kept on disk across restarts, in a folder keyed by everything that shapes them.

A cold torch.compile of the decode step takes minutes; with Inductor's and Triton's caches left from an earlier
process it takes seconds. Their default home is the system temp folder, which a restart may empty (systemd's
PrivateTmp gives every start a fresh one), so the engine points them at a folder under `Settings.cache_root`.
Torch keys its own entries, but only within one folder; naming the folder by a hash of the versions, the device
and the model's configuration means an upgrade or another checkpoint starts from an empty folder instead of
trusting entries written by other code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

log = logging.getLogger(__name__)

KEEP = 3  # key folders kept side by side (e.g. during an upgrade); older ones are removed
MARKER = "key.json"  # written into each key folder: what it was made for, and when it was last used


@dataclass
class CompileCache:
    """The folder this process compiles into, and whether an earlier process left kernels there."""

    folder: Path
    warm: bool

    def describe(self) -> str:
        """One line for `vlassist info`: where, and whether compiling will start from kept kernels."""
        return f"{self.folder} ({'kept kernels found' if self.warm else 'empty: the first start compiles'})"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:  # CPU builds of torch come without Triton
        return "none"
    return triton.__version__


def key_parts(model) -> dict[str, str]:
    """What compiled kernels depend on: library versions, the device, and the model's configuration."""
    device = model.device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        gpu = f"{torch.cuda.get_device_name(index)} sm_{major}{minor} cuda {torch.version.cuda}"
    else:
        gpu = device.type
    config = model.config.to_dict()
    config.pop("_name_or_path", None)  # the same checkpoint in another folder compiles the same
    config_text = json.dumps(config, sort_keys=True, default=str)
    return {
        "torch": torch.__version__, "transformers": transformers.__version__, "triton": _triton_version(),
        "python": platform.python_version(), "device": gpu, "dtype": str(model.dtype),
        "config": hashlib.sha256(config_text.encode()).hexdigest()[:16],
        "layers": ",".join(sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})),
    }


def folder_for(root: Path, parts: Mapping[str, str]) -> Path:
    """The key folder for `parts` under `root`: any change in any part gives another folder."""
    text = json.dumps(dict(parts), sort_keys=True)
    return Path(root) / f"compile-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def _prune(root: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used key folders (only folders this module made)."""
    ours = [p for p in root.glob("compile-*") if (p / MARKER).is_file()]
    ours.sort(key=lambda p: (p / MARKER).stat().st_mtime, reverse=True)
    for old in ours[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def prepare(root: Path, model, keep: int = KEEP) -> CompileCache | None:
    """Create the key folder for `model` under `root` and point Inductor and Triton at it; None if unusable.

    Must run before the first torch.compile in the process: torch reads TORCHINDUCTOR_CACHE_DIR when it
    first compiles. A folder that cannot be written is logged and compiling falls back to torch's default.
    """
    parts = key_parts(model)
    folder = folder_for(root, parts)
    inductor, triton = folder / "inductor", folder / "triton"
    try:
        warm = inductor.is_dir() and any(inductor.iterdir())
        inductor.mkdir(parents=True, exist_ok=True)
        triton.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text(json.dumps(dict(parts, used=time.time()), indent=2, sort_keys=True))
        _prune(Path(root), keep)
    except OSError as exc:
        log.warning("compile cache %s is not usable (%s); compiled kernels will not outlive this process",
                    folder, exc)
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
    os.environ["TRITON_CACHE_DIR"] = str(triton)
    return CompileCache(folder, warm)
