"""Force Hugging Face libraries offline; import this before transformers or huggingface_hub."""

import os

# These are read when huggingface_hub/transformers are first imported, so they must be set before that.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DO_NOT_TRACK": "1",
    # Never let transformers fetch attention kernels from the Hub.
    "USE_HUB_KERNELS": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def enforce() -> None:
    """Set every offline/telemetry switch in this process's environment."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


enforce()
